"""Tests of the command line and config helpers: experiment files, typed overrides and their
errors, the written config, trainer dispatch and subcommands, config.model -> ModelConfig."""
import importlib
import json
import logging
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import rlr.train
from experiments import base
from rlr import launch
from rlr.config import ConfigError, apply_override, config_changes, load_config, to_dataclass
from rlr.models import get_config, to_hf_config
from rlr.train.optim import OptimConfig

EXPERIMENT = """
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder
from experiments import base


def get_config(variant=None):
    config = base.common(trainer="fake_trainers.dummy")
    config.ppo = ConfigDict()
    config.ppo.kl_coef = 0.1  # KL penalty
    config.ppo.minibatches = 4  # minibatches an epoch
    config.ppo.normalize_advantages = True  # advantage normalisation
    config.ppo.stop = ("</s>",)  # stop strings
    config.ppo.reward_model = placeholder(str)  # reward model checkpoint
    config.variant = variant or "default"  # which variant get_config received
    return config
"""

TRAINER = """
import json, os

def train(config, workdir):
    with open(os.path.join(workdir, "trained.json"), "w") as f:
        json.dump({"kl": config.ppo.kl_coef, "workdir": workdir}, f)
    return "done"
"""


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """experiments/exp.py and an importable fake_trainers.dummy trainer under tmp_path."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "exp.py").write_text(EXPERIMENT)
    (tmp_path / "fake_trainers").mkdir()
    (tmp_path / "fake_trainers" / "__init__.py").write_text("")
    (tmp_path / "fake_trainers" / "dummy.py").write_text(TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(tmp_path / "experiments" / "exp.py")


def test_overrides_set_nested_fields_with_types(experiment):
    config, workdir = launch.parse_args([
        "--config", experiment + ":big", "--config.ppo.kl_coef=0.05", "--config.ppo.minibatches", "8",
        "--config.ppo.normalize_advantages=false", "--config.ppo.stop=('a', 'b')",
        "--config.ppo.reward_model=runs/rm", "--config.optim.learning_rate=3", "--config.seed=7",
        "--workdir", "runs/x"])
    assert workdir == "runs/x" and config.variant == "big"
    assert config.ppo.kl_coef == 0.05 and config.ppo.minibatches == 8
    assert config.ppo.normalize_advantages is False and config.ppo.stop == ("a", "b")
    assert config.ppo.reward_model == "runs/rm" and config.seed == 7
    assert config.optim.learning_rate == 3.0 and isinstance(config.optim.learning_rate, float)
    config, workdir = launch.parse_args(["--config", experiment])
    assert workdir == os.path.join("runs", "exp") and config.variant == "default"
    assert config.ppo.reward_model is None and config.model.name == "tiny"
    apply_override(config, "ppo.reward_model", "x")
    apply_override(config, "ppo.reward_model", "None")  # a placeholder can be unset
    assert config.ppo.reward_model is None


@pytest.mark.parametrize("override, message", [
    ("--config.ppo.kl_coeff=0.05", "--config.ppo.kl_coeff: unknown key; config.ppo has"),
    ("--config.pop.kl_coef=0.05", "--config.pop: unknown key; config has"),
    ("--config.ppo.minibatches=2.5", "--config.ppo.minibatches='2.5': expected int"),
    ("--config.ppo.kl_coef=high", "--config.ppo.kl_coef='high': expected float"),
    ("--config.ppo.normalize_advantages=maybe",
     "--config.ppo.normalize_advantages='maybe': expected bool"),
    ("--config.ppo.stop=3", "--config.ppo.stop='3': expected tuple"),
    ("--config.ppo=1", "--config.ppo: is a group"),
    ("--config.seed.x=1", "--config.seed.x: config.seed is not a group"),
])
def test_override_errors_name_key_and_type(experiment, override, message, capsys):
    with pytest.raises(ConfigError) as e:
        launch.parse_args(["--config", experiment, override])
    assert message in str(e.value)
    assert launch.main(["--config", experiment, override]) == 2  # one line on stderr, no trace
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.py: no such file"):
        load_config(str(tmp_path / "nowhere.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="empty.py: defines no get_config"):
        load_config(str(tmp_path / "empty.py"))


def test_main_writes_config_and_dispatches(experiment, tmp_path):
    workdir = str(tmp_path / "run")
    assert launch.main(["--config", experiment, "--config.ppo.kl_coef=0.05", "--workdir", workdir]) == 0
    written = json.load(open(os.path.join(workdir, "config.json")))
    assert written["ppo"]["kl_coef"] == 0.05 and written["trainer"] == "fake_trainers.dummy"
    assert written["optim"] == json.loads(base.optim().to_json())
    assert "kl_coef: 0.05" in open(os.path.join(workdir, "config.txt")).read()
    assert json.load(open(os.path.join(workdir, "trained.json"))) == {"kl": 0.05, "workdir": workdir}


def test_a_workdir_run_with_another_config_warns_of_each_change(experiment, tmp_path, caplog):
    args = ["--config", experiment, "--workdir", str(tmp_path / "run")]
    assert launch.main(args) == 0
    with caplog.at_level(logging.WARNING, logger="rlr.config"):
        assert launch.main(args) == 0  # the same config again: no warning
        assert not caplog.records
        assert launch.main(args + ["--config.ppo.kl_coef=0.05", "--config.ppo.reward_model=rm"]) == 0
    [record] = caplog.records
    assert record.getMessage() == (
        f"{tmp_path}/run/config.json: this workdir was run with another config; continuing from "
        "what it holds with 2 change(s): ppo.kl_coef: 0.1 -> 0.05; ppo.reward_model: None -> 'rm'")
    assert json.load(open(tmp_path / "run" / "config.json"))["ppo"]["kl_coef"] == 0.05


def test_config_changes_name_dotted_keys():
    assert config_changes({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"b": 2, "c": [1]}, "e": "x"}) == [
        "a.b: 1 -> 2", "d: 2 -> <missing>", "e: <missing> -> 'x'"]
    assert config_changes({"a": {"b": 1}}, {"a": 1}) == ["a: {'b': 1} -> 1"]


def test_unknown_trainer_lists_the_allowed_ones(experiment):
    with pytest.raises(ConfigError) as e:
        launch.get_trainer("nope")
    assert (f"config.trainer='nope': unknown trainer; expected one of "
            f"{launch.available_trainers()}") in str(e.value)
    with pytest.raises(ConfigError, match="no module 'fake_trainers.missing'"):
        launch.get_trainer("fake_trainers.missing")


def test_available_trainers_are_the_modules_defining_train(tmp_path, monkeypatch):
    (tmp_path / "alpha.py").write_text("def train(config, workdir):\n    pass\n")
    (tmp_path / "beta.py").write_text("def helper():\n    pass\n")
    (tmp_path / "gamma.py").write_text("import os\n\ndef train(config, workdir):\n    pass\n")
    monkeypatch.setattr(rlr.train, "__path__", [str(tmp_path)])
    assert launch.available_trainers() == ["alpha", "gamma"]


def test_subcommands_dispatch(monkeypatch):
    calls = []
    monkeypatch.setitem(launch.SUBCOMMANDS, "hello", lambda argv: calls.append(argv) or 3)
    assert launch.main(["hello", "--x", "1"]) == 3 and calls == [["--x", "1"]]
    monkeypatch.setitem(launch.SUBCOMMANDS, "path", "os.path:basename")
    assert launch._resolve(launch.SUBCOMMANDS["path"]) is os.path.basename


def test_python_dash_m_rlr_is_the_console_script():
    """`python -m rlr` runs rlr.launch.main: its help lists the subcommands, its errors exit 2."""
    def rlr(*args):
        return subprocess.run([sys.executable, "-m", "rlr", *args], capture_output=True, text=True)

    shown = rlr("--help")
    assert shown.returncode == 0 and "Subcommands: " in shown.stdout
    assert all(name in shown.stdout for name in launch.SUBCOMMANDS)
    missing = rlr("--config", "experiments/no_such_experiment.py")
    assert missing.returncode == 2 and "no_such_experiment.py" in missing.stderr


def test_model_config_from_config_group(tmp_path):
    config = base.model("tiny", param_dtype="bfloat16", dtype="float32", remat="full")
    model = base.model_config(config)
    assert model == get_config("tiny", param_dtype=jnp.bfloat16, dtype=jnp.float32, remat="full")
    with pytest.raises(ConfigError, match="config.model.dtype='fp8': expected one of"):
        base.model_config(base.model("tiny", dtype="fp8"))
    with pytest.raises(ConfigError, match="config.model.name='gpt5': expected one of"):
        base.model_config(base.model("gpt5"))
    with pytest.raises(ConfigError, match="config.model: remat="):
        base.model_config(base.model("tiny", remat="some"))
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(to_hf_config(get_config("tiny"))))
    assert base.model_config(base.model("tiny", hf_checkpoint=str(hf_dir))).hidden_size == 64
    assert base.model_config(base.model("", hf_checkpoint=str(hf_dir))).num_layers == 2
    flash = base.model("", hf_checkpoint=str(hf_dir), dtype="bfloat16", attention="cudnn")
    assert base.model_config(flash).attention == "cudnn"
    with pytest.raises(ConfigError, match="config.model: .*attention='cudnn' needs dtype bfloat16"):
        base.model_config(base.model("", hf_checkpoint=str(hf_dir), attention="cudnn"))
    saved_before_attention = base.model("tiny")  # a run's config.json from before the key
    del saved_before_attention["attention"]
    assert base.model_config(saved_before_attention).attention == "xla"
    with pytest.raises(ConfigError, match="name='smollm2-135m' has vocab_size=49152 but hf_checkpoint"):
        base.model_config(base.model("smollm2-135m", hf_checkpoint=str(hf_dir)))


def test_optim_group_round_trips_to_the_dataclass():
    group = base.optim(learning_rate=2e-5)
    assert to_dataclass(OptimConfig, group, "optim") == OptimConfig(learning_rate=2e-5)
    group.unknown = 1
    with pytest.raises(ConfigError, match="config.optim.unknown: unknown key; OptimConfig has"):
        to_dataclass(OptimConfig, group, "optim")


EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "experiments")
EXPERIMENT_FILES = sorted(f for f in os.listdir(EXPERIMENTS_DIR)
                          if f.endswith(".py") and f not in ("__init__.py", "base.py"))


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_experiment_variant_builds_and_an_unknown_one_is_named(name):
    """Each experiment file builds each of its VARIANTS (a config naming a trainer rlr has) and
    rejects an unknown variant with an error naming the file, the variant and the choices."""
    path = os.path.join("experiments", name)
    module = importlib.import_module(f"experiments.{name[:-3]}")
    trainers = launch.available_trainers()
    for variant in module.VARIANTS:
        config = module.get_config(variant)
        assert config.trainer in trainers, (name, variant, config.trainer)
    with pytest.raises(ConfigError) as error:
        module.get_config("no_such_variant")
    assert f"{path}:no_such_variant: unknown variant" in str(error.value)
    assert repr(module.VARIANTS[0]) in str(error.value)

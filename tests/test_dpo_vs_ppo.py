"""The DPO-vs-PPO study (rlr/studies/dpo_vs_ppo.py): its pure pieces on hand-made data, the
experiment file of the PPO factors, then `python -m rlr.studies.dpo_vs_ppo --quick` end to end
(tables, plots, every run trained with the settings it names) and the colab on that run. The
study's findings themselves are not asserted."""
import gzip
import json
import math
import os

import numpy as np
import pytest

import notebooks

from rlr.config import load_config
from rlr.studies import dpo_vs_ppo, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colabs", "dpo_vs_ppo.ipynb")
HH_COLAB = os.path.join(ROOT, "colabs", "hh_rlhf.ipynb")
FACTORS_FILE = os.path.join(ROOT, "experiments", "ppo_factors.py")


# ----------------------------------------------------------------------------- pure pieces


def test_in_data_mass_sums_probabilities_per_group():
    logps = np.log(np.array([0.5, 0.25, 0.1, 0.05]))
    mass = dpo_vs_ppo.in_data_mass(logps, np.array([0, 0, 2, 2]), 4)
    np.testing.assert_allclose(mass, [0.75, 0.0, 0.15, 0.0])


def test_preference_sets_keep_questions_with_both_kinds(tmp_path):
    records = [("q1", "a", True), ("q1", "b", False), ("q1", "a", True), ("q1", "c", False),
               ("q2", "d", True), ("q2", "e", True),  # no incorrect response: no pair
               ("q3", "f", False), ("q3", "g", True)]
    with open(tmp_path / "labelled.jsonl", "w") as f:
        for q, r, ok in records:
            f.write(json.dumps({"question": q, "response": r, "correct": ok}) + "\n")
    sets = dpo_vs_ppo.preference_sets(str(tmp_path), limit=10)
    assert sets == [dpo_vs_ppo.PreferenceSet("q1", ("a",), ("b", "c")),
                    dpo_vs_ppo.PreferenceSet("q3", ("g",), ("f",))]
    assert dpo_vs_ppo.preference_sets(str(tmp_path), limit=1) == sets[:1]


def test_mean_std_formats_one_or_several_values():
    assert dpo_vs_ppo.mean_std([0.25]) == "0.250"
    assert dpo_vs_ppo.mean_std([0.2, 0.4]) == f"0.300 ± {np.std([0.2, 0.4], ddof=1):.3f}"
    assert dpo_vs_ppo.mean_std([math.nan]) == "-"


def test_factors_are_cumulative_on_one_budget():
    """Each variant of experiments/ppo_factors.py adds its factor to the previous ones, and every
    one samples as many responses in all."""
    configs = [load_config(f"{FACTORS_FILE}:{f}") for f in dpo_vs_ppo.FACTORS]
    assert [c.ppo.normalize_advantages for c in configs] == [False, True, True, True]
    assert [c.ppo.reference for c in configs] == ["fixed", "fixed", "fixed", "ema"]
    prompts = [c.ppo.prompts_per_iteration for c in configs]
    assert prompts[0] == prompts[1] < prompts[2] == prompts[3]
    assert len({c.ppo.prompts_per_iteration * c.ppo.num_iterations for c in configs}) == 1
    hh = [load_config(f"{FACTORS_FILE}:hh_rlhf_{f}") for f in dpo_vs_ppo.FACTORS]
    assert [c.ppo.reference for c in hh] == ["fixed", "fixed", "fixed", "ema"]
    assert len({c.ppo.prompts_per_iteration * c.ppo.num_iterations for c in hh}) == 1


def test_ppo_stages_share_the_budget(tmp_path):
    budget = dpo_vs_ppo.FULL
    ppo = [s for s in dpo_vs_ppo.stages(str(tmp_path), budget) if s.name.startswith("ppo_")]
    assert len(ppo) == len(dpo_vs_ppo.FACTORS) * budget.seeds
    overrides = [dict(s.overrides) for s in ppo]
    totals = {o["ppo.prompts_per_iteration"] * o["ppo.num_iterations"] * o["sampling.num_samples"]
              for o in overrides}
    assert totals == {budget.ppo_prompts * budget.ppo_iterations * budget.num_samples}
    assert sorted({o["seed"] for o in overrides}) == list(range(budget.seeds))


# ----------------------------------------------------------------------------- the quick study


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The whole quick study (compiled as every test is, XLA's back-end optimisations off: see
    conftest.py)."""
    workdir = str(tmp_path_factory.mktemp("dpo_vs_ppo"))
    assert dpo_vs_ppo.main(["--workdir", workdir, "--quick"]) == 0
    return workdir


def _tables(workdir: str) -> list[list[str]]:
    """The markdown tables of results.md, each a list of its '|' lines."""
    with open(os.path.join(workdir, "results.md")) as f:
        text = f.read()
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _first_cells(table: list[str]) -> list[str]:
    return [row.split(" | ")[0].lstrip("| ") for row in table[2:]]


def test_results_have_both_tables(quick_run):
    preference, factors = _tables(quick_run)
    assert preference[0] == "| " + " | ".join(dpo_vs_ppo.PREFERENCE_HEADER) + " |"
    assert _first_cells(preference) == [dpo_vs_ppo.POLICY_LABELS[p] for p in dpo_vs_ppo.POLICIES]
    assert factors[0] == "| " + " | ".join(dpo_vs_ppo.FACTORS_HEADER) + " |"
    assert _first_cells(factors) == [dpo_vs_ppo.FACTOR_LABELS[f] for f in dpo_vs_ppo.FACTORS]
    for name in ("preference.png", "factors.png"):
        assert os.path.getsize(os.path.join(quick_run, name)) > 10_000


def test_masses_are_a_distribution(quick_run):
    """chosen + rejected + outside = 1 for every policy; the SFT policy, which sampled the data,
    gives its responses positive mass; DPO's policy differs from the SFT one."""
    with open(os.path.join(quick_run, "results.json")) as f:
        results = json.load(f)
    rows = {r["policy"]: r for r in results["preference"]}
    data = results["data"]
    assert data["num_responses"] == data["num_problems"] * dpo_vs_ppo.QUICK.label_samples
    assert 0 < data["pass_at_n"] <= 1 and 0 <= data["rm_accuracy"] <= 1
    assert list(rows) == list(dpo_vs_ppo.POLICIES)
    for row in rows.values():
        for c, r, o, a in zip(row["chosen"], row["rejected"], row["outside"], row["accuracy"]):
            assert 0 <= c <= 1 and 0 <= r <= 1 and -1e-6 <= o <= 1 and 0 <= a <= 1, row["policy"]
            assert c + r + o == pytest.approx(1.0, abs=1e-9)
    assert rows["sft"]["chosen"][0] > 0 and rows["sft"]["rejected"][0] > 0
    assert rows["dpo"]["chosen"][0] != rows["sft"]["chosen"][0]


def test_every_run_trained_with_its_settings(quick_run):
    for name in ("rm", "dpo", "idpo"):
        _, grad = report.curve(report.read_metrics(os.path.join(quick_run, name)), "grad_norm")
        assert len(grad) and np.all(grad > 0), name
    _, pairs = report.curve(report.read_metrics(os.path.join(quick_run, "idpo")), "round/pairs")
    assert np.all(pairs > 0)
    budget = dpo_vs_ppo.QUICK
    for factor in dpo_vs_ppo.FACTORS:
        run = os.path.join(quick_run, dpo_vs_ppo.ppo_name(factor, 0))
        lines = report.read_metrics(run)
        _, kl = report.curve(lines, "kl")
        _, grad = report.curve(lines, "policy/grad_norm")
        assert kl[-1] > 0 and np.all(grad > 0), factor
        with open(os.path.join(run, "config.json")) as f:
            config = json.load(f)
        level = dpo_vs_ppo.FACTORS.index(factor)
        assert config["ppo"]["normalize_advantages"] == (level >= 1)
        assert config["ppo"]["reference"] == ("ema" if level >= 3 else "fixed")
        assert config["rewards"]["orm_source"] == os.path.join(quick_run, "rm")
        assert len(kl) == config["ppo"]["num_iterations"]
        assert (config["ppo"]["prompts_per_iteration"] * config["ppo"]["num_iterations"]
                == budget.ppo_prompts * budget.ppo_iterations)


def test_rerun_skips_finished_runs(quick_run, capsys):
    assert dpo_vs_ppo.main(["--workdir", quick_run, "--quick"]) == 0
    assert "== " not in capsys.readouterr().out


def test_colab_runs_on_the_quick_run(quick_run):
    outputs = notebooks.execute(COLAB, quick_run)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3


# ----------------------------------------------------------------------------- HH-RLHF, end to end

HH_TURNS = [("Hi there.", " Hello! How can I help?", " Go away."), ("What is two plus two?", " Four.", " Five."),
            ("Tell me a joke.", " Why did the chicken cross the road?", " No."),
            ("Where is Paris?\n\nAssistant: Which Paris?\n\nHuman: The one in Europe.", " In France.", " In Spain.")]
# the last dialogue's prompt in ChatML, one message a turn (Qwen2.5's default system message first)
PARIS_CHATML = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nWhere is Paris?<|im_end|>\n<|im_start|>assistant\nWhich Paris?<|im_end|>\n"
                "<|im_start|>user\nThe one in Europe.<|im_end|>\n<|im_start|>assistant\n")


def _hh_files(manual) -> None:
    """The four upstream subsets, each a train and a test file of the HH_TURNS dialogues."""
    from rlr.data.builders.hh_rlhf import SUBSETS

    for subset in SUBSETS:
        os.makedirs(os.path.join(manual, subset))
        for split in ("train", "test"):
            with gzip.open(os.path.join(manual, subset, f"{split}.jsonl.gz"), "wt") as f:
                for question, chosen, rejected in HH_TURNS:
                    dialogue = f"\n\nHuman: {question}\n\nAssistant:"
                    f.write(json.dumps({"chosen": dialogue + chosen, "rejected": dialogue + rejected}) + "\n")


def _hh_checkpoint(path) -> None:
    """A random tiny Qwen2 with a byte-level BPE tokenizer.json trained on HH_TURNS (ChatML)."""
    from hf_fixtures import make_hf_model, save_bpe_tokenizer, save_hf_model

    vocab_size = save_bpe_tokenizer(path, [t for turn in HH_TURNS for t in turn])
    save_hf_model(make_hf_model("qwen2", seed=0, vocab_size=vocab_size), path)


def test_hh_prompts_are_turns_and_replies_assistant_messages(tmp_path):
    """The HH data group (experiments/orm.py:hh_rlhf_data) reads a dialogue's Human / Assistant
    turns as ChatML messages and its replies without the space after "Assistant:", alike in
    DPO's pairs, the Bradley-Terry RM's rows and PPO's prompts, so the RM scores replies as the
    policy writes them; the plain format keeps the transcript and the space."""
    from experiments import orm as orm_experiment
    from hf_fixtures import save_bpe_tokenizer
    from rlr.config import ConfigError
    from rlr.data.tokenizer import CharTokenizer, load_tokenizer
    from rlr.train import ppo, preferences, rm, sequences, tasks

    save_bpe_tokenizer(tmp_path / "tok", [t for turn in HH_TURNS for t in turn])
    _hh_files(tmp_path / "manual")
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    data = orm_experiment.hh_rlhf_data()
    data.data_dir, data.manual_dir = str(tmp_path / "tfds"), str(tmp_path / "manual")
    data.dataset_config = "helpful_base"
    pairs = preferences.dataset_pairs("hh_rlhf", "train", tokenizer, data, "")
    assert pairs[-1] == preferences.Pair(PARIS_CHATML, "In France.", "In Spain.")
    assert [p.chosen for p in pairs] == [c.lstrip() for _, c, _ in HH_TURNS]
    dpo_rows = preferences.encode_pairs(tokenizer, pairs, data)
    rm_group = orm_experiment.rm_group("orm", 10, dataset="hh_rlhf")
    rm_rows = rm.pair_rows(tokenizer, data, rm.read_dataset(rm_group, data)[0])
    for key in dpo_rows:
        np.testing.assert_array_equal(dpo_rows[key], rm_rows[key], err_msg=key)
    paris = dpo_rows["chosen_tokens"][-1][dpo_rows["chosen_mask"][-1]]
    assert list(paris) == tokenizer.encode("In France.") + [tokenizer.eos_id] != tokenizer.encode(" In France.") + [tokenizer.eos_id]
    ppo_prompts = ppo.Prompts(tokenizer, data, tasks.prompt_examples(data, "train"))
    np.testing.assert_array_equal(ppo_prompts.rows["tokens"], dpo_rows["prompt_tokens"])
    np.testing.assert_array_equal(ppo_prompts.rows["mask"], dpo_rows["prompt_mask"])

    plain = CharTokenizer()
    transcript = f"\n\nHuman: {HH_TURNS[-1][0]}\n\nAssistant:"
    assert sequences.prompt_text(plain, transcript, sequences.DIALOGUE_TEMPLATE) == transcript
    assert sequences.reply_text(plain, " In France.") == " In France."
    with pytest.raises(ValueError, match="expected an HH-RLHF dialogue"):
        sequences.prompt_text(plain, "What is 2+2?", sequences.DIALOGUE_TEMPLATE)
    with pytest.raises(ConfigError, match=r"prompt_template='Q:'.*or '\{dialogue\}'"):
        tasks.DataConfig(prompt_template="Q:")


def test_hh_rlhf_dpo_and_ppo_are_measured_alike(tmp_path):
    """experiments/orm.py:hh_rlhf, dpo.py:hh_rlhf and ppo_factors.py:hh_rlhf_* on a tiny HH set:
    the RM trains, and a DPO run whose policy does not move (learning rate 0) logs the same
    greedy replies and eval/rm_score as the PPO run's initial policy: the two arms share the
    policy, the held-out prompts, their format and the reward model that measures them."""
    from rlr.train import dpo, ppo, rm
    from rlr.train.metrics import read_jsonl

    checkpoint, manual = str(tmp_path / "checkpoint"), str(tmp_path / "manual")
    _hh_checkpoint(checkpoint)
    _hh_files(manual)

    def small(spec):
        config = load_config(os.path.join(ROOT, "experiments", spec))
        config.model.hf_checkpoint, config.model.dtype = checkpoint, "float32"
        config.data.data_dir, config.data.manual_dir = str(tmp_path / "tfds"), manual
        config.data.prompt_bucket = config.data.response_bucket = config.data.max_response_len = 16
        config.eval.num_problems, config.eval.batch_size, config.eval.every_steps = 8, 8, 0
        config.checkpoint.every_steps, config.logging.every_steps = 1000, 1
        return config

    rm_run = str(tmp_path / "rm")
    config = small("orm.py:hh_rlhf")
    config.eval.num_problems = 0
    config.rm.num_steps, config.rm.batch_size, config.rm.eval_fraction = 6, 8, 0.25
    config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
    rm.train(config, rm_run)
    losses = [line["loss"] for line in read_jsonl(os.path.join(rm_run, "metrics.jsonl")) if "loss" in line]
    assert len(losses) == 6 and losses[-1] < losses[0]

    dpo_run = str(tmp_path / "dpo")
    config = small("dpo.py:hh_rlhf")
    config.dpo.num_steps, config.dpo.batch_size, config.dpo.eval_pairs = 2, 8, 8
    config.optim.learning_rate, config.optim.warmup_steps = 0.0, 0
    config.eval.rm_source = rm_run
    dpo_final = dpo.train(config, dpo_run)
    assert dpo_final["eval/pair_loss"] == pytest.approx(math.log(2.0), abs=1e-5)  # policy = reference

    ppo_run = str(tmp_path / "ppo")
    config = small("ppo_factors.py:hh_rlhf_ema_ref")
    config.ppo.critic_source = config.rewards.orm_source = config.eval.rm_source = rm_run
    config.ppo.num_iterations, config.ppo.prompts_per_iteration = 1, 8
    ppo.train(config, ppo_run)

    def greedy(run, step):
        metrics = [line for line in read_jsonl(os.path.join(run, "metrics.jsonl"))
                   if line["step"] == step and "eval/rm_score" in line]
        replies = [(r["prompt"], r["response"], r["rm_score"])
                   for r in read_jsonl(os.path.join(run, "samples.jsonl")) if r["step"] == step and "rm_score" in r]
        return metrics[0]["eval/rm_score"], replies

    dpo_score, dpo_replies = greedy(dpo_run, 2)
    ppo_score, ppo_replies = greedy(ppo_run, 0)
    assert len(dpo_replies) == 8 and [r[:2] for r in dpo_replies] == [r[:2] for r in ppo_replies]
    np.testing.assert_allclose([r[2] for r in dpo_replies], [r[2] for r in ppo_replies], atol=1e-5)
    assert dpo_score == pytest.approx(ppo_score, abs=1e-5)

    # colabs/hh_rlhf.ipynb on the folder: the two runs that logged eval/rm_score (not the RM's),
    # the score table, the curves and the win rates of the last evaluations.
    outputs = notebooks.execute(HH_COLAB, str(tmp_path))
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "runs with eval/rm_score: ['dpo', 'ppo']" in text
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    scored = lambda r: "rm_score" in r  # noqa: E731
    win = report.rm_win_rate(report.last_samples(dpo_run, scored), report.last_samples(ppo_run, scored))
    assert f"| dpo | - | {win:.3f} |" in tables[-1] and f"| ppo | {1 - win:.3f} | - |" in tables[-1]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1

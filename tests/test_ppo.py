"""End-to-end tests of the PPO loop (rlr/train/ppo.py) on 8 simulated CPU devices: the tiny model,
briefly SFT-ed on the synthetic task (a module fixture), then PPO with a reward it can move (a
per-token length penalty): the mean reward rises; a PRM (Clip-Delta) run and a GRPO run
execute; 6 iterations straight equal 3, stop, resume, 3; config errors name the key.

Every run here shares one jitted scoring and one jitted update per setting (module-level jits),
so only the first run of a setting compiles."""
import json
import logging
import os

import jax
import numpy as np
import pytest

from rlr.config import ConfigError, load_config
from rlr.models import Transformer, get_config
from rlr.parallel import make_mesh
from rlr.parallel.memory import (activation_bytes, kv_cache_bytes, param_bytes,
                                 sampler_activation_bytes, scoring_activation_bytes)
from rlr.train import common, params_io, ppo, sft, tasks
from rlr.train.checkpoint import CheckpointError
from rlr.train.metrics import read_jsonl

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
TRAIN_KEYS = ("reward/total", "reward/length", "reward/kl", "accuracy", "kl", "policy/entropy",
              "policy/clip_fraction", "policy/approx_kl", "critic/explained_variance",
              "policy/grad_norm", "critic/grad_norm", "response_length", "num_steps",
              "repetition_rate", "time/rollout", "time/scoring", "time/update", "tokens_per_s")
EVAL_KEYS = ("eval/accuracy", "eval/num_steps", "eval/response_length", "eval/repetition_rate")


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A tiny policy SFT-ed for 100 steps on the synthetic task (it writes the format and eos)."""
    workdir = str(tmp_path_factory.mktemp("sft"))
    config = load_config(os.path.join(EXPERIMENTS, "sft.py"))
    config.sft.num_steps = 100
    config.optim.warmup_steps = 10
    config.data.num_train = 512
    config.eval.num_problems = 0
    config.checkpoint.every_steps = 1000
    config.logging.every_steps = 100
    sft.train(config, workdir)
    return workdir


COMPILES = []  # fun_name of every backend compilation in this process (from the listener below)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _, **kw: COMPILES.append(kw.get("fun_name"))
    if event == "/jax/core/compile/backend_compile_duration" else None)
LOOP_JITS = ("jit(score_rollout)", "jit(update)", "jit(run)")  # scoring, update, the samplers


def loop_compiles(since: int) -> dict:
    """How many times each of LOOP_JITS compiled since COMPILES had `since` entries."""
    return {name: COMPILES[since:].count(name) for name in LOOP_JITS}


def ppo_config(sft_dir: str, spec: str = "ppo.py:success", **changes):
    """A small PPO run of an experiment: 8 prompts x 4 samples (32 rows, 4 minibatches of 8,
    one a device), a length penalty as the reward, EMA reference and value normalisation on;
    `changes` are dotted keys -> values."""
    config = load_config(os.path.join(EXPERIMENTS, spec))
    config.ppo.policy_source = sft_dir
    config.ppo.num_iterations = 4
    config.ppo.prompts_per_iteration = 8
    config.ppo.epochs = 1
    config.ppo.reference = "ema"
    config.ppo.value_norm = config.ppo.advantage == "gae"
    config.sampling.num_samples = 4
    config.data.num_train = 64
    config.data.num_eval = 8
    config.data.max_response_len = 48
    config.rewards.success_weight = 0.0
    config.rewards.length_coef = 0.05
    config.optim.learning_rate = 1e-3
    config.eval.num_problems = 0
    config.checkpoint.every_steps = 3
    for key, value in changes.items():
        group, name = key.split(".")
        config[group][name] = value
    return config


def train_lines(workdir: str) -> list[dict]:
    return [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "reward/total" in line]


def test_ppo_raises_the_reward_and_logs_metrics_evals_and_samples(sft_dir, tmp_path):
    workdir = str(tmp_path)
    config = ppo_config(sft_dir, **{"eval.num_problems": 8, "eval.batch_size": 8})
    start = len(COMPILES)
    final = ppo.train(config, workdir)
    # ONE compiled scoring, ONE update, one rollout and one greedy eval sampler for the run.
    assert loop_compiles(start) == {"jit(score_rollout)": 1, "jit(update)": 1, "jit(run)": 2}
    lines = train_lines(workdir)
    rewards = [line["reward/total"] for line in lines]
    lengths = [line["response_length"] for line in lines]
    assert len(lines) == 4
    # The only reward is -0.05 a token (and a small KL term): PPO must shorten the responses.
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.2, rewards
    assert lengths[-1] < lengths[0] - 4, lengths
    assert lines[0]["kl"] == 0 and all(line["kl"] > 0 for line in lines[1:])  # k3: >= 0
    for key in TRAIN_KEYS:
        assert all(np.isfinite(line[key]) for line in lines), key
    evals = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/accuracy" in line]
    assert [line["step"] for line in evals] == [0, 4]  # the initial policy, then the last update
    assert all(0 <= line["eval/accuracy"] <= 1 for line in evals)
    assert set(EVAL_KEYS) <= set(final) and final["reward/total"] == rewards[-1]
    samples = read_jsonl(os.path.join(workdir, "samples.jsonl"))
    rollout = [s for s in samples if not s.get("eval")]
    assert len(rollout) == 4 * config.logging.num_samples
    assert len(samples) - len(rollout) == 2 * config.eval.num_problems  # every greedy reply, twice
    assert {"prompt", "response", "step_rewards", "step_prm_scores", "total_reward"} <= set(rollout[0])
    with open(os.path.join(workdir, params_io.PARAMS_INFO)) as f:  # the policy is exported,
        info = json.load(f)  # with its model's shape and its tokenizer's fingerprint
    s = common.setup(config)
    assert (info["model"], info["tokenizer"]) == (s.model_config.shape(), s.tokenizer.fingerprint())


def test_prm_clip_delta_run_scores_steps(sft_dir, tmp_path, caplog):
    mesh = make_mesh()
    score_model = Transformer(get_config("tiny"), head="score")  # a PRM: the SFT decoder, a fresh head
    prm_dir = str(tmp_path / "prm")
    params_io.export_params(prm_dir, params_io.load_params(score_model, sft_dir, mesh, jax.random.key(3)),
                            score_model.config)
    workdir = str(tmp_path / "ppo")
    config = ppo_config(sft_dir, "ppo.py:clip_delta", **{"rewards.prm_source": prm_dir,
                                                        "ppo.num_iterations": 2,
                                                        "ppo.scoring_slices": 4,
                                                        "sampling.prefill_chunk": 8})
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        ppo.train(config, workdir)
    # The start-up memory estimate counts every model of the run: policy and reference (LM
    # head), critic and PRM (score head); the update's 8-row minibatch; 32 rollout rows of 8
    # prompts prefilled 8 tokens at a time, scored in 4 slices.
    s = common.setup(config)
    width = ppo.Prompts(s.tokenizer, config.data, tasks.prompt_examples(config.data, "train")).width
    estimate = ppo.memory_estimate(s, ppo.make_run(config, s), width, 48)
    p_lm, p_score = param_bytes(s.model_config, mesh), param_bytes(s.model_config, mesh, "score")
    assert estimate.params == 2 * p_lm + 2 * p_score
    assert estimate.activations == activation_bytes(s.model_config, mesh, 8, width + 48, "none")
    assert estimate.kv_cache == kv_cache_bytes(s.model_config, 32, width + 48, mesh)
    assert estimate.sampler_activations == sampler_activation_bytes(
        s.model_config, mesh, 8, width, 32, prefill_chunk=8, new_tokens=48)
    assert estimate.scoring_activations == scoring_activation_bytes(s.model_config, mesh, 8,
                                                                    width + 48)  # 32 rows / 4
    assert f"ppo: estimated memory a device: {estimate.brief()}" in caplog.messages
    lines = train_lines(workdir)
    assert len(lines) == 2
    for line in lines:
        assert 0 < line["prm/score_mean"] < 1 and line["reward/prm"] <= 0  # Clip-Delta: <= 0
    samples = [s for s in read_jsonl(os.path.join(workdir, "samples.jsonl")) if s["num_steps"] > 1]
    assert samples and all(len(s["step_prm_scores"]) == len(s["step_rewards"]) >= 1 for s in samples)


def test_critic_and_prm_of_their_own_shapes(sft_dir, tmp_path, monkeypatch, caplog):
    """A critic and a PRM larger than the policy (the tiny 2-layer, hidden-64 decoder), each at
    the shape its source records: the critic an rlr export (3 layers, hidden 96), the PRM a
    Hugging Face Qwen2ForSequenceClassification (3 layers, hidden 48). The scoring reads the
    critic's exported params, and the PRM's step scores are transformers' per-token scores
    (sigmoid) at the step ends of the rollout's own tokens; the memory estimate counts both
    shapes. A reward model whose vocabulary cannot hold the tokenizer's ids is refused by key."""
    from hf_fixtures import hf_outputs, make_hf_model, save_hf_model
    from rlr.parallel import init_model_params

    mesh, policy = make_mesh(), get_config("tiny")
    critic_shape = policy.replace(num_layers=3, hidden_size=96, intermediate_size=192)
    critic_dir = str(tmp_path / "critic")
    exported = init_model_params(Transformer(critic_shape, head="score"), jax.random.key(5), mesh)
    params_io.export_params(critic_dir, exported, critic_shape)
    prm_dir = str(tmp_path / "prm")
    prm = make_hf_model("qwen2-score", seed=6, vocab_size=policy.vocab_size, hidden_size=48,
                        intermediate_size=80, num_hidden_layers=3, max_position_embeddings=512)
    save_hf_model(prm, prm_dir)
    calls = []

    def recording(params, rollout, host, *args, **kwargs):
        scored = ppo_score(params, rollout, host, *args, **kwargs)
        calls.append(jax.device_get((params["critic"], rollout, host, scored.prm_scores)))
        return scored

    ppo_score = ppo.score
    monkeypatch.setattr(ppo, "score", recording)
    config = ppo_config(sft_dir, "ppo.py:clip_delta", **{"rewards.prm_source": prm_dir,
                                                        "ppo.critic_source": critic_dir,
                                                        "ppo.num_iterations": 1})
    with caplog.at_level(logging.INFO, logger="rlr.train.ppo"):
        ppo.train(config, str(tmp_path / "ppo"))
    assert "config.ppo.critic_source=%r: a model of its own shape (3 layers, hidden 96)" % critic_dir \
        in caplog.messages
    [(critic, rollout, host, prm_scores)] = calls
    jax.tree.map(np.testing.assert_array_equal, critic, jax.device_get(exported))
    tokens = np.concatenate([rollout.prompt_tokens, rollout.response_tokens], axis=1)
    mask = np.concatenate([rollout.prompt_mask, rollout.response_mask], axis=1)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    per_token = hf_outputs(prm, tokens, mask, positions)[:, rollout.prompt_tokens.shape[1]:]
    expected = 1 / (1 + np.exp(-np.take_along_axis(per_token, host.step_positions, axis=1)))
    assert host.step_mask.sum() > 32  # steps of every row
    np.testing.assert_allclose(np.where(host.step_mask, prm_scores, 0),
                               np.where(host.step_mask, expected, 0), atol=1e-5)
    s = common.setup(config)
    run = ppo.make_run(config, s)
    assert (run.models.critic.config, run.models.prm.config.hidden_size) == (critic_shape, 48)
    estimate = ppo.memory_estimate(s, run, rollout.prompt_tokens.shape[1], 48)
    assert estimate.params == (2 * param_bytes(policy, mesh) + param_bytes(critic_shape, mesh, "score")
                               + param_bytes(run.models.prm.config, mesh, "score"))
    small = str(tmp_path / "small-vocab")  # fewer ids than the character tokenizer's 51
    save_hf_model(make_hf_model("qwen2-score", vocab_size=32), small)
    with pytest.raises(CheckpointError, match=r"^config\.rewards\.prm_source='.*small-vocab': a "
                                              r"model of vocab_size=32 cannot read the tokenizer's "
                                              r"51 ids"):
        ppo.train(ppo_config(sft_dir, "ppo.py:clip_delta", **{"rewards.prm_source": small}),
                  str(tmp_path / "refused"))


def test_eval_rm_score_reuses_the_runs_orm(sft_dir, tmp_path, monkeypatch, caplog):
    """config.eval.rm_source = config.rewards.orm_source: the greedy replies are scored with the
    run's ORM params (no second copy is loaded); eval/rm_score is the mean of their scores. The
    SFT export (a language model) as either source is refused, not scored with a random head."""
    orm_dir = str(tmp_path / "orm")  # an ORM: the SFT decoder, a fresh score head
    params_io.export_params(orm_dir, params_io.load_params(
        Transformer(get_config("tiny"), head="score"), sft_dir, make_mesh(), jax.random.key(4)),
        get_config("tiny"))
    sources = {"rewards.orm_source": orm_dir, "rewards.orm_weight": 1.0, "eval.rm_source": orm_dir,
               "eval.num_problems": 8, "eval.batch_size": 8}
    for key in ("rewards.orm_source", "eval.rm_source"):
        with pytest.raises(CheckpointError, match=rf"^config\.{key}='.*sft.*exported a language"):
            ppo.train(ppo_config(sft_dir, **{**sources, key: sft_dir}), str(tmp_path / key))
    keys, load = [], params_io.load_params
    monkeypatch.setattr(params_io, "load_params",
                        lambda *args, key=None, **kw: keys.append(key) or load(*args, key=key, **kw))
    workdir = str(tmp_path / "ppo")
    config = ppo_config(sft_dir, **{**sources, "ppo.num_iterations": 1})
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        ppo.train(config, workdir)
    assert keys.count("rewards.orm_source") == 1 and "eval.rm_source" not in keys
    # The memory estimate counts that ORM once (policy, reference; critic, ORM); a separate eval
    # RM would be one more.
    s = common.setup(config)
    width = ppo.Prompts(s.tokenizer, config.data, tasks.prompt_examples(config.data, "train")).width
    estimate = ppo.memory_estimate(s, ppo.make_run(config, s), width, config.data.max_response_len)
    p_lm, p_score = param_bytes(s.model_config, s.mesh), param_bytes(s.model_config, s.mesh, "score")
    assert estimate.params == 2 * p_lm + 2 * p_score
    assert f"ppo: estimated memory a device: {estimate.brief()}" in caplog.messages
    assert common.eval_reward_models(config, s.model_config, [orm_dir]) == []
    assert common.eval_reward_models(config, s.model_config) == [s.model_config]
    evals = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/rm_score" in line]
    assert [line["step"] for line in evals] == [0, 1]
    samples = read_jsonl(os.path.join(workdir, "samples.jsonl"))
    for line in evals:
        replies = [r for r in samples if r.get("eval") and r["step"] == line["step"]]
        assert len(replies) == 8
        assert line["eval/rm_score"] == pytest.approx(np.mean([r["rm_score"] for r in replies]), abs=1e-6)


def test_grpo_run_has_no_critic(sft_dir, tmp_path):
    workdir = str(tmp_path)
    # 8 minibatches of 4 rows: fewer rows than devices (XLA pads the split) also runs; so does
    # the scanned token loop (config.sampling.unstack_layers=False; the other runs unstack).
    ppo.train(ppo_config(sft_dir, "grpo.py:grpo", **{"ppo.num_iterations": 2,
                                                    "ppo.num_minibatches": 8,
                                                    "sampling.unstack_layers": False}), workdir)
    lines = train_lines(workdir)
    assert len(lines) == 2 and all(np.isfinite(line["policy/loss"]) for line in lines)
    assert not any(key.startswith("critic/") for key in lines[0])


def test_resume_equals_a_straight_run(sft_dir, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    ppo.train(ppo_config(sft_dir, **{"ppo.num_iterations": 6}), straight)
    start = len(COMPILES)
    ppo.train(ppo_config(sft_dir, **{"ppo.num_iterations": 3}), resumed)  # stops after 3
    ppo.train(ppo_config(sft_dir, **{"ppo.num_iterations": 6}), resumed)  # resumes at 3
    assert loop_compiles(start) == dict.fromkeys(LOOP_JITS, 0)  # runs of one setting share them
    mesh, model = make_mesh(), Transformer(get_config("tiny"))
    a, b = (params_io.load_params(model, d, mesh, jax.random.key(0)) for d in (straight, resumed))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6), a, b)
    later = [{k: v for k, v in line.items() if not k.startswith(("time/", "wall", "tokens_per_s",
                                                                  "rollout/tokens"))}
             for line in train_lines(straight)[3:]]
    again = [{k: v for k, v in line.items() if not k.startswith(("time/", "wall", "tokens_per_s",
                                                                  "rollout/tokens"))}
             for line in train_lines(resumed)[3:]]
    assert json.dumps(later) == json.dumps(again)  # same rollouts, rewards, critic losses


def test_config_errors_name_the_key(tmp_path):
    unused = str(tmp_path / "no-policy")  # every error comes before a model is loaded
    config = ppo_config(unused)
    config.ppo.bogus = 1
    with pytest.raises(ConfigError, match=r"config\.ppo\.bogus: unknown key"):
        ppo.train(config, str(tmp_path))
    config = ppo_config(unused)
    config.rewards.prm_wieght = 1.0
    with pytest.raises(ConfigError, match=r"config\.rewards\.prm_wieght: unknown key"):
        ppo.train(config, str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.rewards\.prm_weight=0\.5 needs config\.rewards\.prm_source"):
        ppo.train(ppo_config(unused, "ppo.py:prm"), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.ppo\.num_minibatches=3"):
        ppo.train(ppo_config(unused, **{"ppo.num_minibatches": 3}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.ppo\.scoring_slices=3: must divide the 32"):
        ppo.train(ppo_config(unused, **{"ppo.scoring_slices": 3}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.critic_optim\.grad_accum_steps=16: must divide "
                                          r"a minibatch of 8 rows"):
        ppo.train(ppo_config(unused, **{"critic_optim.grad_accum_steps": 16}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.critic_optim\.grad_accum_steps=0: expected >= 1"):
        ppo.train(ppo_config(unused, **{"critic_optim.grad_accum_steps": 0}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.sampling\.prefill_chunk=6: must divide the "
                                          r"prompt width"):
        ppo.train(ppo_config(unused, **{"sampling.prefill_chunk": 6}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config\.ppo\.reference='emma'"):
        ppo.train(ppo_config(unused, **{"ppo.reference": "emma"}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"experiments/ppo\.py:prm_clipp: unknown variant"):
        load_config(os.path.join(EXPERIMENTS, "ppo.py:prm_clipp"))

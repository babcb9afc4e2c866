"""Tests of the training infrastructure on 8 simulated CPU devices: train state and optimizer
sharding, AdamW against a float64 numpy reference, schedules, EMA, orbax checkpoints,
preemption, metrics files and timers."""
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding

from rlr.models import Transformer, get_config
from rlr.parallel import init_model_params, make_mesh
from rlr.train import checkpoint as ckpt
from rlr.train import metrics as metrics_lib
from rlr.train import (Checkpointer, CheckpointError, MetricsWriter, OptimConfig, Progress, Timer,
                       abstract_like, abstract_train_state, apply_gradients, create_train_state,
                       as_optim_config, ema_update, install_preemption_handler, make_optimizer,
                       make_schedule, read_jsonl, restore_from, should_stop, weight_decay_mask)

OPTIM = OptimConfig(learning_rate=1e-2, warmup_steps=2, total_steps=6, weight_decay=0.1)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def setup(mesh):
    """(optimizer, state after one update, jitted update) of the tiny model on the 2x2x2 mesh."""
    params = init_model_params(Transformer(get_config("tiny")), jax.random.key(0), mesh)
    optimizer = make_optimizer(OPTIM)
    state = create_train_state(params, optimizer, jax.random.key(1))
    update = jax.jit(lambda s, g: apply_gradients(s, g, optimizer))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    state, _ = update(state, grads)
    return optimizer, state, update


def same_sharding(a, b) -> bool:
    return a.sharding.is_equivalent_to(b.sharding, len(a.shape))


def test_opt_state_is_sharded_like_params(setup):
    optimizer, state, _ = setup
    adam = state.opt_state[1][0]  # chain(clip, adamw = chain(scale_by_adam, decay, lr))
    for moments in (adam.mu, adam.nu):
        assert jax.tree.all(jax.tree.map(same_sharding, moments, state.params))
    kernel = adam.mu["layers"]["mlp"]["up_proj"]["kernel"]  # [L, D, F] over (-, fsdp, tensor)
    assert kernel.addressable_shards[0].data.shape == (2, 64 // 2, 128 // 2)
    assert isinstance(adam.count.sharding, NamedSharding) and adam.count.sharding.is_fully_replicated
    # The abstract state (the restore target) carries the same shapes and shardings.
    abstract = abstract_train_state(abstract_like(state.params), optimizer, jax.random.key(0))
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert jax.tree.all(jax.tree.map(
        lambda a, x: a.shape == x.shape and a.dtype == x.dtype and same_sharding(a, x),
        abstract, state))


def numpy_adamw(params, grad_fn, config: OptimConfig, steps: int, decay_mask):
    """Float64 reference: global-norm clip, Adam with bias correction, decoupled masked decay,
    learning rate from the schedule formula of make_schedule's docstring."""
    def lr(t):
        if t < config.warmup_steps:
            return config.learning_rate * t / config.warmup_steps
        frac = min((t - config.warmup_steps) / (config.total_steps - config.warmup_steps), 1.0)
        f = config.end_lr_fraction
        return config.learning_rate * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * frac)))

    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    norms = []
    for t in range(steps):
        g = grad_fn(p)
        norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
        norms.append(norm)
        scale = min(1.0, config.max_grad_norm / norm)
        for k in p:
            gk = g[k] * scale
            m[k] = config.b1 * m[k] + (1 - config.b1) * gk
            v[k] = config.b2 * v[k] + (1 - config.b2) * gk ** 2
            m_hat = m[k] / (1 - config.b1 ** (t + 1))
            v_hat = v[k] / (1 - config.b2 ** (t + 1))
            step = m_hat / (np.sqrt(v_hat) + config.eps) + config.weight_decay * decay_mask[k] * p[k]
            p[k] = p[k] - lr(t) * step
    return p, norms


def test_adamw_steps_match_numpy_reference():
    config = OptimConfig(learning_rate=0.1, warmup_steps=2, total_steps=6, end_lr_fraction=0.2,
                         weight_decay=0.5, max_grad_norm=2.0)
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,)),
              "scale": rng.normal(size=(2,))}
    curvature = {k: rng.uniform(0.5, 3.0, size=v.shape) for k, v in params.items()}
    centre = {k: rng.normal(size=v.shape) for k, v in params.items()}

    def grads_of(p):  # d/dp of 0.5 * sum a (p - c)^2
        return {k: curvature[k] * (p[k] - centre[k]) for k in p}

    expected, norms = numpy_adamw(params, grads_of, config, 5,
                                  {"kernel": 1.0, "bias": 0.0, "scale": 0.0})
    assert norms[0] > config.max_grad_norm  # clipping is exercised
    optimizer = make_optimizer(config)
    state = create_train_state({k: jnp.asarray(v, jnp.float32) for k, v in params.items()},
                               optimizer, jax.random.key(0))
    step = jax.jit(lambda s: apply_gradients(s, grads_of(s.params), optimizer))
    for t in range(5):
        state, norm = step(state)
        np.testing.assert_allclose(float(norm), norms[t], rtol=1e-5)
    assert int(state.step) == 5
    for k in params:
        np.testing.assert_allclose(np.asarray(state.params[k]), expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule, at_60", [("cosine", 1e-3 * (0.1 + 0.9 * 0.5)),
                                             ("linear", 1e-3 * (1 - 0.9 * 0.5)),
                                             ("constant", 1e-3)])
def test_schedule_values(schedule, at_60):
    lr = make_schedule(OptimConfig(learning_rate=1e-3, schedule=schedule, warmup_steps=10,
                                   total_steps=110, end_lr_fraction=0.1))
    end = 1e-3 if schedule == "constant" else 1e-4
    for step, want in [(0, 0.0), (5, 5e-4), (10, 1e-3), (60, at_60), (110, end), (500, end)]:
        np.testing.assert_allclose(float(lr(step)), want, rtol=1e-5, atol=1e-12)


def test_schedule_config_errors():
    with pytest.raises(ValueError, match=r"config\.optim\.schedule='step'"):
        make_schedule(OptimConfig(schedule="step"))
    with pytest.raises(ValueError, match=r"config\.optim\.warmup_steps=10 must be < config\.optim\.total_steps=10"):
        make_optimizer({"warmup_steps": 10, "total_steps": 10})
    with pytest.raises(ValueError, match=r"config\.critic_optim\.grad_accum_steps=0: expected >= 1"):
        as_optim_config({"grad_accum_steps": 0}, where="critic_optim")
    with pytest.raises(ValueError, match="config.optim.lr: unknown key"):
        make_optimizer({"lr": 1.0})


def test_weight_decay_mask_skips_norm_scales_and_biases(setup):
    _, state, _ = setup
    flat = {jax.tree_util.keystr(path): v
            for path, v in jax.tree_util.tree_leaves_with_path(weight_decay_mask(state.params))}
    skipped = sorted(k for k, v in flat.items() if not v)
    assert skipped == sorted(k for k in flat if k.endswith("['scale']") or k.endswith("['bias']"))
    assert any("norm" in k for k in skipped) and any("q_proj']['bias" in k for k in skipped)
    assert flat["['embed']['embedding']"] and flat["['layers']['mlp']['up_proj']['kernel']"]


def test_ema_update():
    target = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([4.0], jnp.bfloat16)}
    source = {"a": jnp.array([3.0, -2.0]), "b": jnp.array([0.0], jnp.bfloat16)}
    out = jax.jit(ema_update)(target, source, 0.25)
    np.testing.assert_allclose(np.asarray(out["a"]), [1.5, 1.0])  # 0.25 s + 0.75 t
    assert out["b"].dtype == jnp.bfloat16 and float(out["b"][0]) == 3.0
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), ema_update(target, source, 1.0),
                                     source))


def assert_states_equal(restored, expected):
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(expected.rng))
    assert restored.rng.dtype == expected.rng.dtype
    assert int(restored.step) == int(expected.step)
    for r, e in zip(jax.tree.leaves((restored.params, restored.opt_state)),
                    jax.tree.leaves((expected.params, expected.opt_state))):
        np.testing.assert_array_equal(np.asarray(r), np.asarray(e))


def test_checkpoint_round_trip_keep_and_cadence(setup, tmp_path):
    optimizer, state, update = setup
    later, _ = update(state, jax.tree.map(lambda p: jnp.full_like(p, -0.02), state.params))
    target = abstract_train_state(abstract_like(state.params), optimizer, jax.random.key(7))
    with Checkpointer(str(tmp_path), every_steps=2, keep=2) as checkpointer:
        assert checkpointer.restore_latest(target) is None and checkpointer.latest_step() is None
        assert not checkpointer.save(1, state, {"position": 1})  # not a multiple of 2
        assert checkpointer.save(2, state, {"position": 2, "split": "train"})
        assert checkpointer.save(3, state, {"position": 3}, force=True)  # the end / preemption
        assert not checkpointer.save(3, state, force=True)  # already on disk
        assert checkpointer.save(4, later, {"position": 4})
        checkpointer.wait()
        assert checkpointer.all_steps() == [3, 4] and checkpointer.latest_step() == 4
        restored, extra = checkpointer.restore_latest(target)
        assert extra == {"position": 4}
        assert_states_equal(restored, later)
        assert jax.tree.all(jax.tree.map(
            lambda r, t: r.sharding.is_equivalent_to(t.sharding, r.ndim), restored, target))
        old, extra = checkpointer.restore(3, target)
        assert extra == {"position": 3}
        assert_states_equal(old, state)
    # An explicit path: a step directory or the directory of steps (its newest).
    restored, extra = restore_from(os.path.join(tmp_path, "checkpoints", "3"), target)
    assert extra == {"position": 3} and int(restored.step) == int(state.step)
    assert restore_from(os.path.join(tmp_path, "checkpoints"), target)[1] == {"position": 4}


def test_restore_from_bad_paths_name_the_path(setup, tmp_path):
    optimizer, state, _ = setup
    target = abstract_like(state)
    missing = os.path.join(tmp_path, "nowhere", "100")
    with pytest.raises(CheckpointError, match="nowhere/100: no such checkpoint") as e:
        restore_from(missing, target)
    assert "\n" not in str(e.value)
    corrupt = tmp_path / "corrupt" / "5"
    (corrupt / "state").mkdir(parents=True)
    (corrupt / "state" / "junk").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt/5: cannot restore checkpoint") as e:
        restore_from(str(corrupt), target)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="empty: not a checkpoint"):
        (tmp_path / "empty").mkdir()
        restore_from(str(tmp_path / "empty"), target)


def test_load_params_from_an_unfinished_run_names_the_run(mesh, tmp_path):
    """A run that stopped before its export holds config.json (the run config) and config.txt:
    load_params says the run did not finish, not that config.json is a bad HF checkpoint."""
    from rlr.train import params_io

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"trainer": "sft"}')
    (run / "config.txt").write_text("trainer: sft")
    with pytest.raises(CheckpointError, match=r"^config.sft.init_source='.*run': .*run: holds "
                                              r"neither params_info.json .*did that run finish"):
        params_io.load_params(Transformer(get_config("tiny")), str(run), mesh, jax.random.key(0),
                              key="sft.init_source")


def test_a_reward_model_source_must_hold_a_trained_score_head(mesh, tmp_path):
    """reward_model=True (an ORM, PRM or eval RM, which score with the head they load) refuses a
    source whose score head would be fresh noise: an LM export, a causal-LM Hugging Face
    checkpoint (sharded, read from its index), none. It loads score exports and HF classifiers;
    without it an LM export still gives a critic the SFT decoder and a fresh head."""
    from hf_fixtures import make_hf_model, save_hf_model
    from rlr.models.hf_io import read_hf_config
    from rlr.train import params_io

    lm, score = Transformer(get_config("tiny")), Transformer(get_config("tiny"), head="score")
    sft, orm = str(tmp_path / "sft"), str(tmp_path / "orm")
    params_io.export_params(sft, init_model_params(lm, jax.random.key(0), mesh), lm.config)
    exported = init_model_params(score, jax.random.key(1), mesh)
    params_io.export_params(orm, exported, score.config)

    def load(model, source, **kw):
        return params_io.load_params(model, source, mesh, jax.random.key(2),
                                     key="rewards.orm_source", **kw)

    loaded = load(score, orm, reward_model=True)
    np.testing.assert_array_equal(loaded["score_head"]["kernel"], exported["score_head"]["kernel"])
    with pytest.raises(CheckpointError, match=r"^config.rewards.orm_source='.*sft': /.*sft: an rlr "
                                              r"run that exported a language model \(head 'lm'\); "
                                              r"a reward model scoring with it would read a random"):
        load(score, sft, reward_model=True)
    critic = load(score, sft)
    assert critic["score_head"]["kernel"].shape == exported["score_head"]["kernel"].shape
    with pytest.raises(CheckpointError, match=r"^config.rewards.orm_source='': a reward model "
                                              r"needs a source"):
        load(score, "", reward_model=True)

    causal, classifier = tmp_path / "hf-lm", tmp_path / "hf-rm"
    save_hf_model(make_hf_model("qwen2"), causal, max_shard_size="20KB")
    rm = make_hf_model("qwen2-score", seed=1)
    save_hf_model(rm, classifier)
    hf_score = Transformer(read_hf_config(str(classifier)), head="score")
    with pytest.raises(CheckpointError, match=r"hf-lm: a Hugging Face causal LM \(no score.weight"):
        load(hf_score, str(causal), reward_model=True)
    np.testing.assert_array_equal(
        np.ravel(load(hf_score, str(classifier), reward_model=True)["score_head"]["kernel"]),
        rm.score.weight.detach().numpy().ravel())


def test_a_source_is_read_at_the_shape_it_records(mesh, tmp_path):
    """params_io.source_shape: an rlr export records its model's shape (ModelConfig.shape(), RoPE
    scaling and family included) and is read back at it, with the reader's numerics (dtypes,
    remat, attention); a Hugging Face directory at its config.json; an export written before
    shapes were recorded, and a random init, at the reader's config. A damaged record names the
    key and the file."""
    from hf_fixtures import make_hf_model, save_hf_model
    from rlr.models.config import RopeScaling
    from rlr.train import params_io

    reader = get_config("tiny", dtype=jnp.bfloat16, remat="full")
    llama = get_config("tiny", architecture="llama", qkv_bias=False, num_layers=3, hidden_size=32,
                       rope_theta=5e5, rope_scaling=RopeScaling(factor=8.0), tie_embeddings=True)
    run = str(tmp_path / "run")
    params_io.export_params(run, init_model_params(Transformer(llama, head="score"),
                                                   jax.random.key(0), mesh), llama)
    shape = params_io.source_shape(run, reader, key="rewards.prm_source")
    assert shape == llama.replace(dtype=jnp.bfloat16, remat="full")
    params_io.load_params(Transformer(shape, head="score"), run, mesh, jax.random.key(1),
                          reward_model=True)  # the recorded shape fits the exported arrays
    with pytest.raises(CheckpointError, match=r"run: the exported params \(a model of 3 layers, "
                                              r"hidden 32\) do not fit the model they are loaded "
                                              r"into \(2 layers, hidden 64: config.model"):
        params_io.load_params(Transformer(reader, head="score"), run, mesh, jax.random.key(1))
    hf = tmp_path / "hf"
    save_hf_model(make_hf_model("qwen2-score", hidden_size=48, num_hidden_layers=3), hf)
    hf_shape = params_io.source_shape(str(hf), reader)
    assert (hf_shape.hidden_size, hf_shape.num_layers, hf_shape.vocab_size) == (48, 3, 128)
    assert (hf_shape.dtype, hf_shape.remat) == (jnp.bfloat16, "full")
    assert params_io.source_shape("", reader) is reader
    info_file = os.path.join(run, params_io.PARAMS_INFO)
    with open(info_file) as f:
        info = json.load(f)
    with open(info_file, "w") as f:
        json.dump({k: v for k, v in info.items() if k != "model"}, f)
    assert params_io.source_shape(run, reader) is reader  # an older export
    with open(info_file, "w") as f:
        json.dump({**info, "model": {**info["model"], "num_experts": 8}}, f)
    with pytest.raises(CheckpointError, match=r"^config.rewards.prm_source='.*run': .*run/"
                                              r"params_info.json: model shape field 'num_experts' "
                                              r"is unknown"):
        params_io.source_shape(run, reader, key="rewards.prm_source")


def test_params_are_read_with_the_tokenizer_they_were_trained_on(mesh, tmp_path, caplog):
    """An export records its tokenizer's fingerprint: load_params refuses another tokenizer of the
    same vocabulary size (naming the key), as it refuses one unlike a Hugging Face directory's
    tokenizer.json; the same tokenizer loads. A tokenizer.json that cannot be read is named in
    a warning, and the params load."""
    from hf_fixtures import make_hf_model, save_bpe_tokenizer, save_hf_model
    from rlr.data.tokenizer import CHAR_ALPHABET, CharTokenizer, load_tokenizer
    from rlr.models.hf_io import read_hf_config
    from rlr.train import params_io

    model = Transformer(get_config("tiny"))
    char, reordered = CharTokenizer(), CharTokenizer(CHAR_ALPHABET[::-1])  # 51 ids either way
    run = str(tmp_path / "run")
    params_io.export_params(run, init_model_params(model, jax.random.key(0), mesh), model.config, char)
    params_io.load_params(model, run, mesh, jax.random.key(1), char)
    with pytest.raises(CheckpointError, match=(
            rf"^config.ppo.policy_source='.*run': .*run: its params were trained on the ids of "
            rf"another tokenizer \(the run that exported them: fingerprint {char.fingerprint()}\) "
            rf"than the one this run reads it with \(fingerprint {reordered.fingerprint()}\)")):
        params_io.load_params(model, run, mesh, jax.random.key(1), reordered, key="ppo.policy_source")
    hf = tmp_path / "hf"
    vocab_size = save_bpe_tokenizer(hf, ["48 + 24 = 72", "half as many clips in May"], 260)
    save_hf_model(make_hf_model("qwen2-score", vocab_size=vocab_size), hf)
    hf_model = Transformer(read_hf_config(str(hf)), head="score")
    params_io.load_params(hf_model, str(hf), mesh, jax.random.key(1), load_tokenizer(hf))
    with pytest.raises(CheckpointError, match=r"^config.rewards.orm_source='.*hf': .*hf: its params "
                                              r"were trained on the ids of another tokenizer \(its "
                                              r"tokenizer.json"):
        params_io.load_params(hf_model, str(hf), mesh, jax.random.key(1), char,
                              key="rewards.orm_source")
    os.remove(hf / "tokenizer_config.json")
    params_io.load_params(hf_model, str(hf), mesh, jax.random.key(1), char)
    assert "tokenizer.json: not compared with this run's tokenizer" in caplog.text


def test_params_source_is_the_first_key_set_and_errors_name_it(mesh):
    from rlr.train import params_io

    config = ml_collections.ConfigDict({"ppo": {"critic_source": "", "policy_source": "runs/sft"},
                                        "model": {"hf_checkpoint": "hf/qwen"}})
    keys = ("ppo.critic_source", "ppo.policy_source", "model.hf_checkpoint")
    assert params_io.config_source(config, *keys) == ("runs/sft", "ppo.policy_source")
    config.ppo.policy_source = ""
    assert params_io.config_source(config, *keys) == ("hf/qwen", "model.hf_checkpoint")
    config.model.hf_checkpoint = ""
    assert params_io.config_source(config, *keys) == ("", "ppo.critic_source")  # a random init
    with pytest.raises(CheckpointError, match=r"^config.ppo.policy_source='runs/nowhere': "
                                              r"/.*/runs/nowhere: no such directory"):
        params_io.load_params(Transformer(get_config("tiny")), "runs/nowhere", mesh,
                              jax.random.key(0), key="ppo.policy_source")


def test_sigterm_sets_the_stop_flag():
    previous = install_preemption_handler()
    try:
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 2.0
        while not should_stop() and time.time() < deadline:
            time.sleep(0.01)
        assert should_stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt._stop_requested.clear()


def test_metrics_and_samples_files(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(3, {"loss": jnp.float32(1.5), "acc": np.array(0.25), "n": 4, "ok": True,
                     "bad": float("nan")})
    writer.write(4, {"loss": jnp.array([2.5])})
    with pytest.raises(TypeError, match="metric 'vec'.*shape \\(2,\\)"):
        writer.write(5, {"vec": jnp.ones(2)})
    writer.write_samples(4, [{"prompt": "1+1", "response": "2", "rewards": np.array([0.5, 1.0])},
                             {"prompt": "2+2", "response": "5", "rewards": jnp.array([0.0])}])
    writer.close()
    lines = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [line["step"] for line in lines] == [3, 4]
    assert lines[0]["loss"] == 1.5 and lines[0]["acc"] == 0.25 and lines[0]["n"] == 4.0
    assert lines[0]["ok"] == 1.0 and lines[0]["bad"] is None and lines[1]["loss"] == 2.5
    assert 0 <= lines[0]["wall_time"] <= lines[1]["wall_time"] < 60
    samples = read_jsonl(os.path.join(tmp_path, "samples.jsonl"))
    assert samples == [{"step": 4, "prompt": "1+1", "response": "2", "rewards": [0.5, 1.0]},
                       {"step": 4, "prompt": "2+2", "response": "5", "rewards": [0.0]}]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


def test_read_jsonl_truncated_and_corrupt_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match="m.jsonl:2: not a JSON line"):
        read_jsonl(str(path))


def test_timer_split(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 21.0])
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
    timer = Timer()
    with timer.phase("rollout"):
        pass
    with timer.phase("update"):
        pass
    with timer.phase("update"):
        pass
    assert timer.split() == {"time/rollout": 3.0, "time/update": 2.0,
                             "time/rollout_frac": 0.6, "time/update_frac": 0.4}
    timer.reset()
    assert timer.split() == {}


def test_progress_shows_chosen_metrics():
    bar = Progress(total=10, initial=2, keys=("loss", "reward"))
    bar.update(5, {"loss": jnp.float32(0.5), "other": 1.0})
    assert bar._bar.n == 5 and "loss=0.5" in bar._bar.postfix and "other" not in bar._bar.postfix
    bar.close()

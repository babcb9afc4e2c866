"""SFT end to end on CPU (tiny model, synthetic task): the loss falls, a stopped and resumed run
gives the params of a straight one, and the export loads into a score-head model (a reward
model or critic initialised from the SFT policy)."""
import logging
import re

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from rlr.config import ConfigError, load_config
from rlr.data import synthetic
from rlr.models import Transformer
from rlr.parallel import shard_batch
from rlr.parallel.memory import estimate_memory, format_bytes, param_bytes
from rlr.train import common, params_io, sft, sft_step, tasks
from rlr.train.metrics import read_jsonl

TOTAL_STEPS = 6


def sft_config(num_steps: int, init_source: str = "") -> ml_collections.ConfigDict:
    """experiments/sft.py with tiny data; the schedule is that of a TOTAL_STEPS run whatever
    num_steps is (to_dict() unties sft.num_steps from optim.total_steps)."""
    config = ml_collections.ConfigDict(load_config("experiments/sft.py").to_dict())
    config.sft.init_source = init_source
    config.data.num_train, config.data.num_eval = 64, 8
    config.sft.num_steps, config.sft.batch_size = num_steps, 8
    config.optim.total_steps, config.optim.warmup_steps = TOTAL_STEPS, 1
    config.optim.learning_rate = 3e-3
    config.eval.num_problems = 0
    config.logging.every_steps = 1
    config.checkpoint.every_steps = 100
    return config


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> str:
    """An exported random init that every run starts from (restoring it is cheaper than
    compiling the init again; the runs start from the same params either way)."""
    s = common.setup(sft_config(TOTAL_STEPS))
    params = params_io.load_params(Transformer(s.model_config), "", s.mesh, jax.random.key(0))
    workdir = str(tmp_path_factory.mktemp("sft_init"))
    params_io.export_params(workdir, params, s.model_config)
    return workdir


@pytest.fixture(scope="module")
def straight(init, tmp_path_factory):
    """A TOTAL_STEPS run in one go: (workdir, final metrics)."""
    workdir = str(tmp_path_factory.mktemp("sft_straight"))
    return workdir, sft.train(sft_config(TOTAL_STEPS, init), workdir)


def _load(workdir: str, head: str = "lm"):
    config = sft_config(TOTAL_STEPS)
    s = common.setup(config)
    model = Transformer(s.model_config, head=head)
    return params_io.load_params(model, workdir, s.mesh, jax.random.key(1))


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_loss_falls(straight):
    workdir, final = straight
    losses = [line["loss"] for line in read_jsonl(f"{workdir}/metrics.jsonl") if "loss" in line]
    assert len(losses) == TOTAL_STEPS
    assert losses[-1] < losses[0] - 0.5, losses
    assert final["loss"] == pytest.approx(losses[-1])


def test_resume_gives_the_straight_run(init, straight, tmp_path, caplog):
    workdir = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        sft.train(sft_config(TOTAL_STEPS // 2, init), workdir)  # stops (and checkpoints) half way
        sft.train(sft_config(TOTAL_STEPS, init), workdir)  # resumes from that checkpoint
    # Each run logs its memory estimate first: params, and AdamW's two moments of them.
    s = common.setup(sft_config(TOTAL_STEPS))
    params = param_bytes(s.model_config, s.mesh)
    parts = f"(params {format_bytes(params)}, optimizer {format_bytes(2 * params)}, "
    assert [m.startswith("sft: estimated memory a device: training ") and parts in m
            for m in caplog.messages if "estimated memory" in m] == [True, True]
    steps = [line["step"] for line in read_jsonl(f"{workdir}/metrics.jsonl") if "loss" in line]
    assert steps == list(range(1, TOTAL_STEPS + 1))
    resumed, reference = _flat(_load(workdir)), _flat(_load(straight[0]))
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(resumed[key], reference[key], atol=1e-6, rtol=0, err_msg=key)


def test_grad_accumulation_logs_the_metrics_of_one_pass(init, tmp_path):
    """sft.batch_size 16 over the 8 devices in optim.grad_accum_steps=2 micro-batches: the same
    logged loss and grad norm at every step as in one pass (the loop passes the setting to the
    step; tests/test_train_step_numerics.py compares the gradients themselves)."""
    logged = []
    for accum in (1, 2):
        config = sft_config(2, init)
        config.sft.batch_size, config.optim.grad_accum_steps = 16, accum
        workdir = str(tmp_path / f"accum{accum}")
        sft.train(config, workdir)
        logged.append([(line["loss"], line["grad_norm"], line["num_tokens"])
                       for line in read_jsonl(f"{workdir}/metrics.jsonl") if "loss" in line])
    assert len(logged[0]) == 2
    np.testing.assert_allclose(logged[1], logged[0], rtol=1e-5)
    config = sft_config(2, init)
    config.optim.grad_accum_steps = 2  # 8 rows: one a device, not two
    with pytest.raises(ConfigError, match=r"config\.sft\.batch_size=8: expected a positive multiple "
                                          r"of the mesh's data x fsdp = 8 devices x "
                                          r"optim\.grad_accum_steps = 2, i\.e\. of 16"):
        sft.train(config, str(tmp_path / "bad"))


def test_eval_loss_and_perplexity_are_those_of_all_held_out_rows_at_once(init, tmp_path):
    """9 held-out problems in eval batches of 8 (the second one a row and 7 padding) under the
    seq_mean_token_sum aggregation: the logged eval loss and perplexity equal eval_step's on the
    9 rows as one batch (a mean over their sequences; exp of the mean over their tokens)."""
    config = sft_config(1, init)
    config.sft.aggregation = "seq_mean_token_sum"
    config.data.num_eval = config.eval.num_problems = 9
    config.eval.batch_size = 8
    final = sft.train(config, str(tmp_path))
    s = common.setup(config)
    model = Transformer(s.model_config)
    params = params_io.load_params(model, str(tmp_path), s.mesh, jax.random.key(1))
    data = tasks.as_data_config(config.data)
    rows = sft.sft_rows(s.tokenizer, tasks.task_examples(data, "eval", limit=9), data)
    [batch] = sft._eval_batches(rows, 16)
    with common.model_context(s.mesh):
        whole = sft_step.eval_step(params, shard_batch(batch, s.mesh), model=model,
                                   chunk_size=config.sft.chunk_size,
                                   aggregation=config.sft.aggregation)
    assert float(whole["num_tokens"]) == rows["loss_mask"][:, 1:].sum()
    assert final["eval/loss"] == pytest.approx(float(whole["loss"]), rel=1e-5)
    assert final["eval/perplexity"] == pytest.approx(float(whole["perplexity"]), rel=1e-5)


def test_export_loads_into_a_score_model(straight):
    policy, scorer = _flat(_load(straight[0])), _flat(_load(straight[0], head="score"))
    assert "lm_head" in policy and "lm_head" not in scorer
    assert set(scorer) - set(policy) == {"score_head/kernel", "score_head/bias"}
    for key in set(scorer) & set(policy):  # the decoder is the SFT policy's
        np.testing.assert_array_equal(scorer[key], policy[key], err_msg=key)
    assert scorer["score_head/kernel"].shape == (policy["final_norm/scale"].shape[0],)
    assert 0 < np.std(scorer["score_head/kernel"]) < 0.1 and scorer["score_head/bias"] == 0


def test_needless_fraction_adds_one_needless_correct_step_to_that_share_of_train_solutions():
    plain = tasks.task_examples(tasks.DataConfig(num_train=400), "train")
    data = tasks.DataConfig(num_train=400, needless_fraction=0.25)
    examples = tasks.task_examples(data, "train")
    changed = [(p, e) for p, e in zip(plain, examples) if e.solution != p.solution]
    assert 0.18 < len(changed) / len(examples) < 0.32  # binomial(400, 0.25): 4.5 sigma
    for p, e in changed:
        assert (e.question, e.answer) == (p.question, p.answer)
        check = synthetic.check_steps(e.question, e.solution)
        plain_steps = synthetic.check_steps(p.question, p.solution).steps
        assert check.num_steps == len(plain_steps) + 1 and all(check.correct) and check.answer_correct
        extra = [s for k, s in enumerate(check.steps) if check.steps[:k] + check.steps[k + 1:] == plain_steps]
        assert extra and (extra[0] in plain_steps or re.fullmatch(r"(-?\d+)(\*1|\+0|-0)=\1", extra[0]))
    assert tasks.task_examples(data, "train", limit=50) == examples[:50]  # prefix-stable
    assert tasks.task_examples(data, "eval") == tasks.task_examples(tasks.DataConfig(num_train=400), "eval")
    with pytest.raises(ConfigError, match="needless_fraction"):
        tasks.DataConfig(needless_fraction=1.5)


def test_eval_rm_of_its_own_shape_and_tokenizer_scores_the_replies_as_text(init, tmp_path, monkeypatch,
                                                                            caplog):
    """config.eval.rm_source may be a judge unlike the policy (the char-level tiny decoder): a
    Hugging Face reward model of another shape with its own BPE tokenizer (config.eval.rm_tokenizer)
    and chat format (ChatML). Each greedy reply's rm_score is transformers' score of the prompt in
    the judge's format + the reply (the judge's tokens, eos, cut at max_response_len; this
    tokenizer has no bos); the memory estimate counts the judge's params. A reply longer in the
    judge's tokens is cut there, with a warning."""
    import torch
    from hf_fixtures import make_hf_model, save_bpe_tokenizer, save_hf_model
    from rlr.data.tokenizer import load_tokenizer
    from rlr.train import sequences

    config = sft_config(2, init)
    examples = tasks.task_examples(config.data, "train")
    judge_dir = str(tmp_path / "judge")
    vocab_size = save_bpe_tokenizer(judge_dir, [t for e in examples for t in (e.question, e.solution)])
    judge = make_hf_model("qwen2-score", seed=3, vocab_size=vocab_size, hidden_size=48,
                          intermediate_size=80, num_hidden_layers=3)
    save_hf_model(judge, judge_dir)
    config.eval.rm_source = config.eval.rm_tokenizer = judge_dir
    config.eval.num_problems = 8
    judges = []  # the scorers of each memory estimate

    def recording(*args, scorers=(), **kwargs):
        judges.extend(scorers)
        return estimate_memory(*args, scorers=scorers, **kwargs)

    monkeypatch.setattr(sft, "estimate_memory", recording)
    workdir = str(tmp_path / "run")
    final = sft.train(config, workdir)
    assert [(c.hidden_size, c.num_layers, c.vocab_size) for c in judges] == [(48, 3, vocab_size)]
    tokenizer = load_tokenizer(judge_dir)
    assert tokenizer.chat_format == "chatml" and common.setup(config).tokenizer.chat_format == "plain"
    replies = [r for r in read_jsonl(f"{workdir}/samples.jsonl") if "rm_score" in r]
    assert len(replies) == 8

    def judged(question: str, reply: str) -> float:
        prompt = sequences.prompt_text(tokenizer, question, config.data.prompt_template)
        assert prompt.startswith("<|im_start|>system\n")
        response = (tokenizer.encode(reply) + [tokenizer.eos_id])[:config.data.max_response_len]
        with torch.no_grad():
            return float(judge(torch.tensor([tokenizer.encode(prompt) + response])).logits[0, 0])

    for reply in replies:
        assert reply["rm_score"] == pytest.approx(judged(reply["prompt"], reply["response"]), abs=1e-4)
    assert final["eval/rm_score"] == pytest.approx(np.mean([r["rm_score"] for r in replies]), abs=1e-6)
    held_out = tasks.task_examples(config.data, "eval", limit=8)
    score = common.judge_scorer(common.setup(config), judge_dir, judge_dir, "eval", config.data,
                                held_out, 8, jax.random.key(0))
    long_reply = "é" * config.data.max_response_len  # two byte-level tokens a character
    with caplog.at_level(logging.WARNING, logger="rlr.train.common"):
        [[value]] = score(held_out[:1], [[long_reply]])
    assert "1 of 1 replies take more than config.data.max_response_len" in caplog.text
    assert value == pytest.approx(judged(held_out[0].question, long_reply), abs=1e-4)
    config.eval.rm_tokenizer = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"^config\.eval\.rm_tokenizer='.*missing'"):
        common.reward_model_setup(common.setup(config), judge_dir, config.eval.rm_tokenizer, "eval")

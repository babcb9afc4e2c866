"""DPO trainer (rlr/train/dpo.py): pair sources with hand-checked contents, the round bookkeeping
that resumes, and end-to-end runs on CPU (tiny decoder, 8 simulated devices).

The policy is a random tiny decoder whose vocabulary is exactly the character tokenizer's 51 ids
(an HF checkpoint written by the test), so anything it samples decodes.
"""
import gzip
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from experiments import dpo as dpo_experiment
from experiments import iterative_dpo as iterative_experiment
from experiments import orm as orm_experiment
from rlr.config import ConfigError
from rlr.data import synthetic
from rlr.data.builders._io import DataFormatError
from rlr.data.builders.hh_rlhf import SUBSETS as HH_SUBSETS
from rlr.data.tokenizer import CHAR_ALPHABET, CharTokenizer, load_tokenizer
from rlr.parallel.memory import estimate_memory
from rlr.sampling import Sampler
from rlr.train import dpo, dpo_step, label, params_io, ppo, preferences, rm, sequences, tasks
from rlr.train.metrics import read_jsonl
from hf_fixtures import make_hf_model, save_bpe_tokenizer, save_hf_model

TOKENIZER = CharTokenizer()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A random tiny Qwen2 causal LM with vocab_size 51, as a Hugging Face checkpoint."""
    path = tmp_path_factory.mktemp("policy")
    save_hf_model(make_hf_model("qwen2", seed=0, vocab_size=TOKENIZER.vocab_size), path)
    return str(path)


def _config(experiment, policy_dir, **dpo_changes):
    """A tiny CPU config of an experiment file: the test policy, few problems, a checkpoint only
    at the end, metrics every update."""
    config = experiment.get_config()
    config.model.name = ""
    config.model.hf_checkpoint = policy_dir
    config.dpo.policy_source = ""  # = config.model.hf_checkpoint
    config.data.num_train, config.data.num_eval = 64, 16
    config.data.max_response_len = 48
    config.eval.every_steps, config.eval.num_problems, config.eval.batch_size = 0, 8, 8
    config.checkpoint.every_steps = 1000
    config.optim.warmup_steps = 0
    config.logging.every_steps = 1
    config.logging.num_samples = 2
    config.dpo.batch_size = 16
    config.dpo.eval_pairs = 16
    for key, value in dpo_changes.items():
        setattr(config.dpo, key, value)
    return config


# ----------------------------------------------------------------------------- pairs


def test_corrupt_pairs_prefer_the_reference_solution():
    data = tasks.DataConfig(num_train=8)
    problems = tasks.synthetic_problems(data, "train")
    pairs = preferences.corrupt_pairs(problems, TOKENIZER, data, preferences.FLAWED_MODES, 2, seed=0)
    assert len(pairs) == 2 * len(problems)  # two distinct flaws of every problem
    for problem, pair in zip(np.repeat(problems, 2), pairs):
        assert pair.prompt == problem.question + "\n" and pair.chosen == problem.solution
        assert synthetic.final_answer_correct(problem.question, pair.chosen)
        assert synthetic.check_steps(problem.question, pair.rejected).first_wrong is not None
    assert pairs == preferences.corrupt_pairs(problems, TOKENIZER, data, preferences.FLAWED_MODES, 2, seed=0)


def _write_labelled(path, rows):
    with open(path, "w") as f:
        for question, response, correct in rows:
            f.write(json.dumps({"question": question, "response": response, "answer": "0",
                                "correct": correct, "step_labels": [1], "num_steps": 1}) + "\n")


def test_labelled_pairs_are_correct_over_incorrect_and_held_out_by_question(tmp_path):
    rows = [("1+1", "a", True), ("1+1", "b", False), ("1+1", "c", False), ("1+1", "a", True),
            ("2+2", "d", True), ("2+2", "e", True),  # no incorrect response: no pair
            ("3+3", "f", False), ("3+3", "g", True)]
    _write_labelled(tmp_path / "labelled.jsonl", rows)
    records = label.read_labelled(str(tmp_path))
    assert records[0] == label.Labelled("1+1", "a", True, (1,)) and len(records) == 8
    grouped = preferences.labelled_pairs(records, TOKENIZER, tasks.DataConfig(), per_prompt=5, seed=0)
    assert sorted(grouped) == ["1+1", "3+3"]
    assert sorted(grouped["1+1"]) == [preferences.Pair("1+1\n", "a", "b"), preferences.Pair("1+1\n", "a", "c")]
    assert grouped["3+3"] == [preferences.Pair("3+3\n", "g", "f")]
    one = preferences.labelled_pairs(records, TOKENIZER, tasks.DataConfig(), per_prompt=1, seed=0)
    assert len(one["1+1"]) == 1
    train, held = preferences.hold_out(grouped, num_eval=1, seed=0)
    assert len(train) + len(held) == 3 and held
    assert not {p.prompt for p in train} & {p.prompt for p in held}


def test_corrupt_labelled_file_is_a_one_line_error_naming_it(tmp_path, policy_dir):
    path = tmp_path / "labelled.jsonl"
    _write_labelled(path, [("1+1", "2", True)])
    with open(path, "a") as f:
        f.write('{"question": "1+2", "response": \n')
    config = _config(dpo_experiment, policy_dir, pairs="labelled", data_path=str(path))
    with pytest.raises(DataFormatError) as info:
        dpo.train(config, str(tmp_path / "run"))
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "\n" not in message
    config.dpo.data_path = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="config.dpo.data_path=.*missing.jsonl"):
        dpo.train(config, str(tmp_path / "run"))


@pytest.mark.parametrize("subset", ["", "helpful-online"])
def test_dataset_pairs_format_a_prompt_as_the_rm_and_ppo_do(tmp_path, subset):
    """An HH-RLHF record reads the same in DPO, the Bradley-Terry RM and PPO: its prompt is the
    user message of the chat format (plain here: the dialogue and a newline), so DPO and PPO
    policies compared on HH are trained and scored on one prompt format; all three read the
    subset of config.data.dataset_config ("": the four), and a held-out sample spreads over them."""
    tokenizer = CharTokenizer(CHAR_ALPHABET + "HAW")
    dialogues = {name: f"\n\nHuman: What is {i}+{i}?\n\nAssistant:"
                 for i, name in enumerate(HH_SUBSETS)}
    for name, dialogue in dialogues.items():
        for split in ("train", "test"):
            (tmp_path / "manual" / name).mkdir(parents=True, exist_ok=True)
            with gzip.open(tmp_path / "manual" / name / f"{split}.jsonl.gz", "wt") as f:
                f.write(json.dumps({"chosen": dialogue + " 4.", "rejected": dialogue + " 5."}) + "\n")
    data = tasks.DataConfig(task="hh_rlhf", data_dir=str(tmp_path / "tfds"),
                            manual_dir=str(tmp_path / "manual"),
                            dataset_config=subset.replace("-", "_"))
    read = [dialogues[subset]] if subset else list(dialogues.values())

    pairs = preferences.dataset_pairs("hh_rlhf", "train", tokenizer, data, data.manual_dir)
    assert pairs == [preferences.Pair(d + "\n", " 4.", " 5.") for d in read]
    dpo_rows = preferences.encode_pairs(tokenizer, pairs, data)
    rm_group = orm_experiment.rm_group("orm", 10, dataset="hh_rlhf")
    rm_rows = rm.pair_rows(tokenizer, data, rm.read_dataset(rm_group, data)[0])
    assert dpo_rows.keys() == rm_rows.keys()
    for key in dpo_rows:
        np.testing.assert_array_equal(dpo_rows[key], rm_rows[key], err_msg=key)
    ppo_prompts = ppo.Prompts(tokenizer, data, tasks.prompt_examples(data, "train"))
    np.testing.assert_array_equal(ppo_prompts.rows["tokens"], dpo_rows["prompt_tokens"])
    np.testing.assert_array_equal(ppo_prompts.rows["mask"], dpo_rows["prompt_mask"])
    if not subset:  # 2 held out of the 4 records: 0 and 2 (harmless-base, helpful-online), not
        spread = [read[0], read[2]]  # the first two
        held = preferences.dataset_pairs("hh_rlhf", "test", tokenizer, data, data.manual_dir, limit=2)
        assert [p.prompt for p in held] == [d + "\n" for d in spread]
        assert [e.question for e in tasks.prompt_examples(data, "eval", limit=2)] == spread


def test_best_worst_pairs_hand_example():
    responses = [["r0", "r1", "r2"], ["s0", "s1", "s2"], ["t0", "t1", "t2"]]
    scores = [[0.0, 2.0, -1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    pairs = preferences.best_worst_pairs(["p", "q", "r"], responses, scores, seed=0)
    assert pairs[0] == preferences.Pair("p", "r1", "r2")  # best over worst
    assert len(pairs) == 2 and pairs[1].prompt == "r"  # "q": all alike, no pair
    assert pairs[1].rejected == "t0" and pairs[1].chosen in ("t1", "t2")  # a tie broken at random


def test_best_worst_pairs_reference_where_no_response_is_correct():
    responses = [["r0", "r1"], ["s0", "s1"], ["t0", "t1"]]
    scores = [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    pairs = preferences.best_worst_pairs(["p", "q", "r"], responses, scores, seed=0, references=["P", "Q", "R"])
    assert pairs[0] == preferences.Pair("p", "r1", "r0")  # a correct sample: the usual pair
    assert pairs[1].prompt == "q" and pairs[1].chosen == "Q" and pairs[1].rejected in ("s0", "s1")
    assert len(pairs) == 2  # "r": all correct, no pair


def test_encode_pairs_shapes_and_prompt_cut(caplog):
    pairs = [preferences.Pair("1+2\n", "1+2=3\nanswer: 3", "answer: 4"),
             preferences.Pair("12*3+4\n", "x", "yz")]
    data = tasks.DataConfig(prompt_bucket=4, response_bucket=8)
    rows = preferences.encode_pairs(TOKENIZER, pairs, data)
    assert rows["prompt_tokens"].shape == (2, 8)  # bos + 7 characters
    assert rows["chosen_tokens"].shape == rows["rejected_tokens"].shape == (2, 16)
    np.testing.assert_array_equal(rows["chosen_mask"].sum(1), [16, 2])  # text + eos
    np.testing.assert_array_equal(rows["rejected_mask"].sum(1), [10, 3])
    assert TOKENIZER.decode(rows["rejected_tokens"][1][rows["rejected_mask"][1]]) == "yz"
    with caplog.at_level(logging.WARNING, logger="rlr.train.sequences"):
        cut = preferences.encode_pairs(TOKENIZER, pairs, data, max_prompt_len=5, prompt_length=8,
                                       max_prompt_key="config.dpo.max_prompt_len")
    # bos + "1+2\n" fills the 5 slots; bos + "12*3+4\n" (8 tokens) keeps its last 5
    assert caplog.messages == ["1 of 2 prompts are longer than config.dpo.max_prompt_len=5 tokens; "
                               "they keep their last 5"]
    assert cut["prompt_tokens"].shape == (2, 8)
    assert TOKENIZER.decode(cut["prompt_tokens"][0][cut["prompt_mask"][0]]) == "1+2\n"
    assert TOKENIZER.decode(cut["prompt_tokens"][1][cut["prompt_mask"][1]]) == "*3+4\n"
    assert rows["pair_mask"].all()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"config.dpo.iterations=2"):
        dpo.DPOConfig(iterations=2)  # offline pairs do not change between rounds
    with pytest.raises(ConfigError, match=r"config.dpo.num_steps=5.*iterations=2"):
        dpo.DPOConfig(pairs="sampled", iterations=2, num_steps=5)
    with pytest.raises(ConfigError, match=r"config.dpo.loss='kto'"):
        dpo.DPOConfig(loss="kto")
    with pytest.raises(ConfigError, match=r"config.dpo.label_smoothing"):
        dpo.DPOConfig(label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"config.dpo.refresh_reference=True"):
        dpo.DPOConfig(refresh_reference=True)
    with pytest.raises(ConfigError, match=r"config.dpo.reference_chosen=True.*answer checker"):
        dpo.DPOConfig(pairs="sampled", rm_source="runs/orm", reference_chosen=True)
    with pytest.raises(ConfigError, match=r"config.dpo.prefill_chunk=48: expected 0 .* power of two"):
        dpo.DPOConfig(pairs="sampled", prefill_chunk=48)
    with pytest.raises(ConfigError, match=r"config.dpo.bogus: unknown key"):
        dpo.as_dpo_config({"bogus": 1})


@pytest.mark.parametrize("experiment, variant", [
    *((dpo_experiment, v) for v in dpo_experiment.VARIANTS),
    *((iterative_experiment, v) for v in iterative_experiment.VARIANTS)])
def test_experiment_configs_are_valid(experiment, variant):
    config = experiment.get_config(variant)
    c = dpo.as_dpo_config(config.dpo)  # every check of DPOConfig passes
    tasks.as_data_config(config.data)
    assert config.trainer == "dpo" and config.optim.total_steps == c.num_steps
    config.dpo.num_steps = 2 * c.num_steps  # the schedule follows the number of updates
    assert config.optim.total_steps == 2 * c.num_steps
    assert (c.pairs == "sampled") == (experiment is iterative_experiment or variant in ("gsm8k", "math"))


def test_rounds_resume_mid_round_from_the_round_file(tmp_path):
    c = dpo.DPOConfig(pairs="sampled", iterations=2, num_steps=6, batch_size=2)
    made = []

    def make_round(r, params):
        made.append(r)
        return [preferences.Pair(f"{r}-{i}\n", "1", "2" * (i + 1)) for i in range(3)], {"round/pairs": 3.0}

    def encode(pairs):
        return preferences.encode_pairs(TOKENIZER, pairs, tasks.DataConfig(prompt_bucket=4, response_bucket=4))

    class Writer:
        def write_samples(self, step, records):
            pass

    def run(rounds, steps):
        return [np.asarray(rounds.batch(i, None)[0].rejected_mask.sum(1)).tolist() for i in steps]

    first = dpo._Rounds(c, 0, str(tmp_path), make_round, encode, Writer(), 2)
    batches = run(first, range(0, 2))
    extra = first.state_dict()  # a checkpoint after update 2 (in round 0)
    rest = run(first, range(2, 6))
    assert made == [0, 1] and os.path.isfile(dpo.round_file(str(tmp_path), 1))
    resumed = dpo._Rounds(c, 0, str(tmp_path), make_round, encode, Writer(), 2)
    resumed.restore(json.loads(json.dumps(extra)))
    assert run(resumed, range(2, 6)) == rest  # round 0 read back, round 1 made afresh
    assert made == [0, 1, 1] and resumed.stats == {"round/pairs": 3.0}
    assert batches and rest


# ----------------------------------------------------------------------------- end to end


def memory_lines(caplog) -> list[str]:
    return [m for m in caplog.messages if m.startswith("dpo: estimated memory a device: training ")]


def record_estimates(monkeypatch) -> list[tuple[int, int, int]]:
    """(references: frozen LM copies, reward models: ranking + evaluation's, prefill_chunk) of
    each DPO memory estimate, as it is made."""
    calls = []

    def recording(*args, references=0, scorers=(), prefill_chunk=0, **kwargs):
        calls.append((references, len(scorers), prefill_chunk))
        return estimate_memory(*args, references=references, scorers=scorers,
                               prefill_chunk=prefill_chunk, **kwargs)

    monkeypatch.setattr(dpo, "estimate_memory", recording)
    return calls


def test_offline_dpo_learns_the_pairs_and_evaluates(tmp_path, policy_dir, caplog, monkeypatch):
    estimates = record_estimates(monkeypatch)
    config = _config(dpo_experiment, policy_dir, num_steps=24)
    config.optim.learning_rate, config.optim.warmup_steps = 3e-3, 2
    config.eval.every_steps = 12
    rm_model = make_hf_model("qwen2-score", seed=1, vocab_size=TOKENIZER.vocab_size)
    config.eval.rm_source = str(tmp_path / "rm")  # a random outcome reward model scores the replies
    save_hf_model(rm_model, config.eval.rm_source)
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        final = dpo.train(config, workdir)
    # One memory estimate: the pairs have one shape, so the step compiles once; it counts the
    # reference and the evaluation's reward model.
    assert len(memory_lines(caplog)) == 1 and "sampling" not in memory_lines(caplog)[0]
    assert estimates == [(1, 1, 0)]
    lines = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in line]
    assert len(lines) == 24
    first = np.mean([line["rewards/margin"] for line in lines[:4]])
    last = np.mean([line["rewards/margin"] for line in lines[-4:]])
    assert last > first + 0.5 and lines[-1]["rewards/accuracy"] > 0.8
    assert np.mean([line["loss"] for line in lines[-4:]]) < np.mean([line["loss"] for line in lines[:4]])
    evals = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval/pair_loss" in line]
    assert [line["step"] for line in evals] == [12, 24]
    # Held-out pairs start at loss log 2 (policy = reference); they are learned too.
    assert evals[-1]["eval/pair_loss"] < np.log(2.0) - 0.1 and evals[-1]["eval/pair_margin"] > 0.3
    assert evals[-1]["eval/pair_accuracy"] >= 0.7
    assert 0.0 <= final["eval/accuracy"] <= 1.0 and final["eval/response_length"] > 0
    assert os.path.isfile(os.path.join(workdir, params_io.PARAMS_INFO))
    # eval/rm_score: the mean of the reward model's score of each greedy reply, as transformers
    # scores bos + prompt + reply + eos (cut at max_response_len) with the same checkpoint.
    replies = [r for r in read_jsonl(os.path.join(workdir, "samples.jsonl")) if r["step"] == 24]
    assert len(replies) == config.eval.num_problems
    for reply in replies:
        prompt = sequences.prompt_text(TOKENIZER, reply["prompt"], config.data.prompt_template)
        response = (TOKENIZER.encode(reply["response"]) + [TOKENIZER.eos_id])[:config.data.max_response_len]
        ids = torch.tensor([[TOKENIZER.bos_id] + TOKENIZER.encode(prompt) + response])
        with torch.no_grad():
            expected = float(rm_model(ids).logits[0, 0])
        assert reply["rm_score"] == pytest.approx(expected, abs=1e-4)
    assert final["eval/rm_score"] == pytest.approx(np.mean([r["rm_score"] for r in replies]), abs=1e-6)


def test_simpo_loss_reads_no_reference_hand_value():
    policy = dpo_step.PairLogps(*(jnp.array([v]) for v in (-4.0, -6.0, 2.0, 3.0)))
    config = dpo.DPOConfig(loss="simpo", beta=2.0, simpo_gamma=0.5).preference()
    assert not config.uses_reference
    loss, metrics = dpo_step.preference_loss(config, policy, None, jnp.array([True]))
    margin = 2.0 * (-4.0 / 2) - 2.0 * (-6.0 / 3) - 0.5  # beta * mean log-probs, minus gamma
    assert float(loss) == pytest.approx(np.log1p(np.exp(-margin)), rel=1e-5)
    assert float(metrics["rewards/chosen"]) == pytest.approx(-4.0)


def test_ipo_on_averaged_logps_hand_value():
    policy = dpo_step.PairLogps(*(jnp.array([v]) for v in (-4.0, -6.0, 2.0, 3.0)))
    reference = dpo_step.PairLogps(*(jnp.array([v]) for v in (-5.0, -5.0, 2.0, 3.0)))
    config = dpo.DPOConfig(loss="ipo", beta=0.5, average_logps=True).preference()
    loss, metrics = dpo_step.preference_loss(config, policy, reference, jnp.array([True]))
    h = (-2.0 + 2.5) - (-2.0 + 5.0 / 3.0)  # per-token log-ratios of chosen minus rejected
    assert float(loss) == pytest.approx((h - 1.0 / (2 * 0.5)) ** 2, rel=1e-5)
    assert float(metrics["logps/chosen"]) == -4.0  # reported summed, whatever the loss reads


def test_iterative_ipo_runs_two_rounds_ranked_by_a_reward_model(tmp_path, policy_dir, caplog,
                                                                monkeypatch):
    """Two rounds ranked by a judge unlike the policy: a random Hugging Face reward model of another
    shape with its own BPE tokenizer and chat format (ChatML; config.dpo.rm_tokenizer). Every
    pair's chosen reply outscores its rejected one under transformers' forward of that judge."""
    estimates = record_estimates(monkeypatch)
    samplers = []  # the prefill_chunk of each sampler made
    monkeypatch.setattr(dpo, "Sampler", lambda model, sampling, mesh: samplers.append(
        sampling.prefill_chunk) or Sampler(model, sampling, mesh))
    rm_dir = str(tmp_path / "rm")  # a random outcome reward model: its verdicts always differ
    examples = tasks.task_examples(tasks.DataConfig(num_train=64), "train")
    save_bpe_tokenizer(rm_dir, [t for e in examples for t in (e.question, e.solution)])
    judge_tokenizer = load_tokenizer(rm_dir)
    judge = make_hf_model("qwen2-score", seed=1, vocab_size=judge_tokenizer.vocab_size, hidden_size=48,
                          intermediate_size=80, num_hidden_layers=3)
    save_hf_model(judge, rm_dir)
    config = _config(iterative_experiment, policy_dir, num_steps=4, iterations=2, loss="ipo",
                     prompts_per_iteration=8, num_samples=2, sample_batch_size=8, eval_pairs=0,
                     rm_source=rm_dir, rm_tokenizer=rm_dir, refresh_reference=True, prefill_chunk=8)
    config.eval.num_problems = 0
    config.data.max_response_len = 24
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        final = dpo.train(config, workdir)
    assert len(memory_lines(caplog)) == 1 and "sampling" in memory_lines(caplog)[0]
    # The refreshed reference and the initial one (held-out metrics), the ranking RM; rounds
    # prefill 8 tokens a pass.
    assert estimates == [(2, 1, 8)] and samplers == [8]
    questions = {sequences.prompt_text(TOKENIZER, e.question, config.data.prompt_template): e.question
                 for e in tasks.task_examples(config.data, "train")}

    def judged(question: str, reply: str) -> float:  # prompt in ChatML, reply, eos (cut)
        prompt = judge_tokenizer.encode(
            sequences.prompt_text(judge_tokenizer, question, config.data.prompt_template))
        response = (judge_tokenizer.encode(reply) + [judge_tokenizer.eos_id])[:config.data.max_response_len]
        with torch.no_grad():
            return float(judge(torch.tensor([prompt + response])).logits[0, 0])

    for r in (0, 1):
        pairs = preferences.read_pairs(dpo.round_file(workdir, r))
        assert len(pairs) == 8 and all(p.chosen != p.rejected for p in pairs)
        for p in pairs:
            assert judged(questions[p.prompt], p.chosen) > judged(questions[p.prompt], p.rejected)
    lines = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in line]
    assert [line["round/pairs"] for line in lines] == [8.0] * 4
    # The reference is the policy at the start of each round: IPO's loss there is (0 - 1/(2 beta))^2.
    for line in (lines[0], lines[2]):
        assert line["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
        assert line["loss"] == pytest.approx((1 / (2 * config.dpo.beta)) ** 2, rel=1e-4)
    assert lines[1]["rewards/margin"] != pytest.approx(0.0, abs=1e-5)
    assert np.isfinite(final["loss"]) and final["pairs"] == 16


def test_sampled_rounds_pair_the_reference_when_no_sample_is_correct(tmp_path, policy_dir):
    """The random policy never solves a problem: without reference_chosen no pair is made, with it
    every prompt pairs its reference solution (the checker accepts it) over a sample."""
    config = _config(iterative_experiment, policy_dir, num_steps=2, iterations=1,
                     prompts_per_iteration=8, num_samples=2, sample_batch_size=8, eval_pairs=8,
                     batch_size=8, reference_chosen=True)
    config.eval.num_problems = 0
    config.data.max_response_len = 16
    workdir = str(tmp_path / "run")
    final = dpo.train(config, workdir)
    pairs = preferences.read_pairs(dpo.round_file(workdir, 0))
    solutions = {sequences.prompt_text(TOKENIZER, e.question, config.data.prompt_template): e
                 for e in tasks.task_examples(config.data, "train")}
    assert len(pairs) == 8
    for pair in pairs:
        example = solutions[pair.prompt]
        assert pair.chosen == example.solution and tasks.answer_correct(config.data, example, pair.chosen)
        assert not tasks.answer_correct(config.data, example, pair.rejected)
    lines = [line for line in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in line]
    assert [(line["round/pairs"], line["round/reference_pairs"]) for line in lines] == [(8.0, 8.0)] * 2
    assert np.isfinite(final["loss"]) and final["pairs"] == 8


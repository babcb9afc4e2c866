"""Labelling sampled solutions: the labels of hand-made responses, the statistics, resuming a
partial file, and a label run end to end (a tiny policy samples, labelled.jsonl is written, a
stopped run resumes to the same file)."""
import json
import os

import jax
import numpy as np
import pytest

from rlr.config import ConfigError, load_config
from rlr.data import synthetic
from rlr.data.builders._io import DataFormatError
from rlr.models import Transformer
from rlr.train import common, label, params_io, tasks
from rlr.train.metrics import read_jsonl

SYNTHETIC = tasks.DataConfig()
QUESTION = "(3+4)*2"  # 3+4=7, 7*2=14, answer 14


@pytest.mark.parametrize("response,correct,step_labels", [
    ("3+4=7\n7*2=14\nanswer: 14", True, [1, 1]),
    ("3+4=7\n3+4=7\n7*2=14\nanswer: 14", True, [1, 1, 1]),  # a repeated correct step is correct
    ("3+4=7\n7*1=7\n7*2=14\nanswer: 14", True, [1, 1, 1]),  # so is a no-op
    ("3+4=8\n8*2=16\nanswer: 16", False, [0, 0]),  # a wrong result, and a step on it
    ("7*2=14\n3+4=7\nanswer: 14", True, [0, 1]),  # 7 is not computed yet
    ("3+4=7\n7*2=14", False, [1, 1]),  # no answer line
    ("", False, []),
])
def test_synthetic_labels(response, correct, step_labels):
    example = tasks.TaskExample(QUESTION, "", "14")
    assert label.label_response(SYNTHETIC, example, response) == {
        "question": QUESTION, "response": response, "answer": "14", "correct": correct,
        "step_labels": step_labels, "num_steps": len(step_labels)}


def test_real_tasks_label_the_outcome_only():
    data = tasks.DataConfig(task="gsm8k", data_dir="unused")
    example = tasks.TaskExample("Tom has 3 apples and buys 4.", "3+4=7\n#### 7", "7")
    right = label.label_response(data, example, "He has 3 + 4 = 7.\n\nThe answer is 7.")
    assert (right["correct"], right["step_labels"], right["num_steps"]) == (True, [], 2)
    assert not label.label_response(data, example, "The answer is 8.")["correct"]


def test_label_stats_by_hand():
    records = [{"correct": c, "num_steps": n, "step_labels": s} for c, n, s in [
        (True, 2, [1, 1]), (False, 3, [1, 0, 0]),  # problem 1
        (False, 1, [1]), (False, 2, [0, 1])]]  # problem 2
    assert label.label_stats(records, num_samples=2) == {
        "accuracy": 0.25, "pass_at_n": 0.5, "mean_steps": 2.0, "wrong_step_rate": 0.5,
        "num_responses": 4, "num_problems": 2}


def test_completed_problems_cuts_back_to_whole_batches(tmp_path):
    path = str(tmp_path / "labelled.jsonl.partial")

    def write(questions: str, tail: str = ""):
        with open(path, "w") as f:
            f.writelines(json.dumps({"question": q, "response": str(i)}) + "\n"
                         for i, q in enumerate(questions))
            f.write(tail)

    def kept() -> str:
        return "".join(r["question"] for r in read_jsonl(path))

    write("aabbc", '{"question": "c", "resp')  # stopped mid-line in problem c
    assert label.completed_problems(path, "abcd", num_samples=2, batch_size=1) == 2
    assert [r["response"] for r in read_jsonl(path)] == ["0", "1", "2", "3"]
    write("aabbcc")  # a stopped run's incomplete batch goes: c is sampled again with d
    assert label.completed_problems(path, "abcd", num_samples=2, batch_size=2) == 2
    assert kept() == "aabb"
    write("aabbab")  # a finished run with its references; then with num_problems 2 -> 3
    assert label.completed_problems(path, "ab", num_samples=2, batch_size=2) == 2
    assert kept() == "aabb"
    write("aabbab")
    assert label.completed_problems(path, "abc", num_samples=2, batch_size=1) == 2
    assert kept() == "aabb"
    write("aabbab")
    assert label.completed_problems(path, "abc", num_samples=2, batch_size=3) == 0
    assert not os.path.exists(path)
    for questions in ("aaabbb", "axcc"):  # another num_samples; other problems
        write(questions)
        assert label.completed_problems(path, "abc", num_samples=2, batch_size=1) == 0
        assert not os.path.exists(path)
    assert label.completed_problems(path, "a", num_samples=2, batch_size=1) == 0  # no file


def label_config(policy_source: str):
    config = load_config("experiments/label.py")
    config.label.policy_source = policy_source
    config.label.num_problems, config.label.num_samples, config.label.batch_size = 10, 2, 8
    config.label.corruptions = ("needless_step", "wrong_result")
    config.data.max_response_len = 16
    return config


@pytest.fixture(scope="module")
def alphabet_policy(tmp_path_factory) -> str:
    """The workdir of an exported tiny policy that samples only ids of the character tokenizer.

    The tiny model's vocabulary (256) is larger than the tokenizer's (51 ids), and ids outside
    it do not decode. Every token's embedding gets a large constant in dimension 0, so the final
    norm's output is ~ sqrt(D) e_0 and the logits ~ sqrt(D) lm_head[0]: lm_head[0] = 0 on the
    alphabet, +0.3 on eos (short responses) and -10 elsewhere (special and unused ids, never
    sampled) gives a near-uniform policy over the characters.
    """
    config = label_config("")
    s = common.setup(config)
    params = params_io.load_params(Transformer(s.model_config), "", s.mesh, jax.random.key(0))
    tokenizer = s.tokenizer
    head_row = np.full(s.model_config.vocab_size, -10.0, np.float32)
    head_row[3:tokenizer.vocab_size] = 0.0  # the characters (ids 0, 1, 2 are pad, bos, eos)
    head_row[tokenizer.eos_id] = 0.3
    params["embed"]["embedding"] = params["embed"]["embedding"].at[:, 0].set(30.0)
    params["lm_head"] = params["lm_head"].at[0].set(head_row)
    workdir = str(tmp_path_factory.mktemp("policy"))
    params_io.export_params(workdir, params, s.model_config)
    return workdir


@pytest.fixture(scope="module")
def label_run(alphabet_policy, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("label"))
    return workdir, label.train(label_config(alphabet_policy), workdir)


def test_label_run_writes_every_response_labelled(label_run):
    workdir, stats = label_run
    records = read_jsonl(f"{workdir}/labelled.jsonl")
    examples = tasks.task_examples(label_config("").data, "train", limit=10)
    records, references = records[:20], records[20:]
    assert [r["question"] for r in records] == [e.question for e in examples for _ in range(2)]
    # then one corrupted reference solution a problem and mode, labelled by the checker
    assert [r["question"] for r in references] == [e.question for e in examples for _ in range(2)]
    for r, e in zip(references, [e for e in examples for _ in range(2)]):
        check = synthetic.check_steps(r["question"], r["response"])
        assert r["step_labels"] == [int(ok) for ok in check.correct] and r["answer"] == e.answer
        assert check.num_steps == len(synthetic.solve(e.question).steps) + (1 if all(check.correct) else 0)
    needless, wrong = references[0::2], references[1::2]
    assert all(all(r["step_labels"]) and r["correct"] for r in needless)
    assert all(0 in r["step_labels"] for r in wrong)
    for r, e in zip(records, [e for e in examples for _ in range(2)]):
        assert set(r) == set(label.FIELDS) and r["answer"] == e.answer
        check = synthetic.check_steps(r["question"], r["response"])
        assert r["step_labels"] == [int(ok) for ok in check.correct]
        assert r["num_steps"] == check.num_steps
        assert r["correct"] == synthetic.final_answer_correct(r["question"], r["response"])
        assert len(r["response"]) <= 16
    assert len({r["response"] for r in records}) > 10  # sampled, not one answer
    assert stats == {**label.label_stats(records, 2), "num_references": 20}
    assert read_jsonl(f"{workdir}/metrics.jsonl")[-1]["num_responses"] == 20
    assert label.read_labelled(workdir) == [  # what the reward-model and DPO stages read back
        label.Labelled(r["question"], r["response"], r["correct"], tuple(r["step_labels"]))
        for r in records + references]


def test_read_labelled_fields_and_errors(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"question": "1+1", "response": "a", "correct": True,
                                "step_labels": [1, 0], "answer": "2"}) + "\n\n"
                    + json.dumps({"question": "2+2", "response": "b", "correct": 0}) + "\n")
    assert label.read_labelled(str(path)) == [label.Labelled("1+1", "a", True, (1, 0)),
                                              label.Labelled("2+2", "b", False, ())]
    for bad, key in [({"question": "1+1", "correct": True}, "'response'"),
                     ({"question": "1+1", "response": "a", "correct": "yes"}, "'correct'"),
                     ({"question": "1+1", "response": "a", "correct": True, "step_labels": [2]},
                      "'step_labels'")]:
        path.write_text(json.dumps({"question": "q", "response": "r", "correct": True}) + "\n"
                        + json.dumps(bad) + "\n")
        with pytest.raises(DataFormatError, match=f"labelled.jsonl, line 2: .*{key}"):
            label.read_labelled(str(path))
    path.write_text("\n")
    with pytest.raises(DataFormatError, match="no labelled responses"):
        label.read_labelled(str(tmp_path))
    with pytest.raises(ConfigError, match="config.rm.data_path=.*missing.*no such file"):
        label.read_labelled(str(tmp_path / "missing"), "rm.data_path")


@pytest.mark.parametrize("kept_lines", [17, 18])
def test_stopped_label_run_resumes_to_the_same_file(label_run, alphabet_policy, tmp_path,
                                                    kept_lines):
    """Stopped in the second batch (problems 8-9, 2 samples each) after 1 or 2 of its lines: the
    resumed run samples the whole batch again, with the straight run's key."""
    straight = f"{label_run[0]}/labelled.jsonl"
    with open(straight) as f:
        lines = f.readlines()
    with open(tmp_path / "labelled.jsonl.partial", "w") as f:
        f.writelines(lines[:kept_lines])
        f.write(lines[kept_lines][:10])  # cut mid-line
    for _ in range(2):  # resume; then run again in a finished workdir (nothing is sampled)
        stats = label.train(label_config(alphabet_policy), str(tmp_path))
        with open(tmp_path / "labelled.jsonl") as f:
            assert f.readlines() == lines
        assert not (tmp_path / "labelled.jsonl.partial").exists()
        assert stats == label_run[1]


def test_label_run_with_more_problems_samples_only_from_its_last_whole_batch(
        label_run, alphabet_policy, tmp_path, monkeypatch):
    """A finished run of 9 problems rerun with 10 (batch 8): problems 8-9 are sampled, one batch,
    and the file is the straight 10-problem run's."""
    config = label_config(alphabet_policy)
    config.label.num_problems = 9
    label.train(config, str(tmp_path))
    sampled, generate_texts = [], common.generate_texts

    def counted_generate_texts(sampler, params, tokenizer, prompts, *args):
        sampled.append(len(prompts))
        return generate_texts(sampler, params, tokenizer, prompts, *args)

    monkeypatch.setattr(common, "generate_texts", counted_generate_texts)
    stats = label.train(label_config(alphabet_policy), str(tmp_path))
    assert sampled == [2]
    with open(f"{label_run[0]}/labelled.jsonl") as straight, open(tmp_path / "labelled.jsonl") as f:
        assert f.readlines() == straight.readlines()
    assert stats == label_run[1]


def test_label_config_errors(alphabet_policy, tmp_path):
    config = label_config(alphabet_policy)
    config.label.num_samples = 0
    with pytest.raises(ConfigError, match="config.label.num_samples"):
        label.train(config, str(tmp_path))
    config = label_config(alphabet_policy)
    config.label.batch_size = 4
    with pytest.raises(ConfigError, match="config.label.batch_size"):
        label.train(config, str(tmp_path))
    config = label_config(alphabet_policy)
    config.label.corruptions = ("needless_step", "typo")
    with pytest.raises(ConfigError, match="config.label.corruptions"):
        label.train(config, str(tmp_path))

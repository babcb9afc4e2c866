"""Reward models on CPU (tiny model, synthetic task).

The ORM and the PRM train a few dozen steps on labelled data made with rlr.data.synthetic.corrupt
and beat chance on held-out questions; a Bradley-Terry batch scores each response as the ORM
does; reranking picks the right solution; and the pieces (labels of lines, pairs, the split by
question, metrics, best-of-N selection, config errors) on hand-made cases.
"""
import json
import random

import jax
import ml_collections
import numpy as np
import pytest

from rlr.config import ConfigError, load_config
from rlr.data import synthetic
from rlr.data.tokenizer import CharTokenizer
from rlr.models import Transformer
from rlr.parallel import shard_batch
from rlr.parallel.memory import activation_bytes, param_bytes
from rlr.train import common, label, params_io, rm, rm_step, tasks
from rlr.train.metrics import read_jsonl
from rlr.train.optim import make_optimizer

MARK = "??"  # written in place of the result of a corrupted step


def flagged_corruption(problem: synthetic.Problem, rng: random.Random) -> str:
    """A wrong_result corruption of the solution (later steps carry on from the wrong value, so
    the answer is wrong too) whose first wrong step shows MARK instead of its result: a mistake
    a tiny model can learn to see in a few dozen steps."""
    text, first_wrong = synthetic.corrupt(problem, "wrong_result", rng)
    lines = text.split("\n")
    lines[first_wrong] = lines[first_wrong].split("=")[0] + "=" + MARK
    return "\n".join(lines)


def record(problem: synthetic.Problem, response: str) -> dict:
    """A labelled.jsonl line as rlr/train/label.py writes it."""
    check = synthetic.check_steps(problem.question, response)
    return {"question": problem.question, "response": response, "answer": str(problem.answer),
            "correct": synthetic.final_answer_correct(problem.question, response),
            "step_labels": [int(ok) for ok in check.correct], "num_steps": check.num_steps}


def problems(seed: int, n: int) -> list[synthetic.Problem]:
    return synthetic.generate_problems(seed, n, synthetic.SyntheticConfig(num_ops=(2, 3)))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    """A label run's folder: per problem its solution (right) and a flagged corruption (wrong)."""
    folder = tmp_path_factory.mktemp("label")
    rng = random.Random(0)
    with open(folder / "labelled.jsonl", "w") as f:
        for p in problems(0, 300):
            for response in (p.solution, flagged_corruption(p, rng)):
                f.write(json.dumps(record(p, response)) + "\n")
    return str(folder)


def rm_config(kind: str, data_path: str, init_source: str = "") -> ml_collections.ConfigDict:
    config = load_config(f"experiments/{kind}.py")
    config.rm.init_source, config.rm.data_path = init_source, data_path
    config.rm.num_steps, config.rm.batch_size, config.rm.eval_fraction = 25, 16, 0.2
    config.optim.learning_rate, config.optim.warmup_steps = 3e-3, 0
    config.eval.every_steps, config.eval.batch_size = 0, 64
    config.logging.every_steps = 5
    config.checkpoint.every_steps = 1000
    return config


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    """An exported random "lm" init, as an SFT run's export: the reward models start from its
    decoder with a fresh score head (and restoring it is cheaper than compiling an init)."""
    s = common.setup(rm_config("orm", ""))
    params = params_io.load_params(Transformer(s.model_config), "", s.mesh, jax.random.key(0))
    workdir = str(tmp_path_factory.mktemp("policy"))
    params_io.export_params(workdir, params, s.model_config)
    return workdir


@pytest.fixture(scope="module")
def orm_run(labelled, policy, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("orm"))
    return workdir, rm.train(rm_config("orm", labelled, policy), workdir)


@pytest.fixture(scope="module")
def prm_run(labelled, policy, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("prm"))
    return workdir, rm.train(rm_config("prm", labelled, policy), workdir)


def load_scorer(workdir: str):
    config = rm_config("orm", "")
    s = common.setup(config)
    model = Transformer(s.model_config, head="score")
    return s, model, params_io.load_params(model, workdir, s.mesh, jax.random.key(0))


def test_orm_beats_chance_on_held_out_questions(orm_run):
    workdir, final = orm_run
    data = read_jsonl(f"{workdir}/metrics.jsonl")[0]
    assert data["data/train_rows"] + data["data/eval_rows"] == 600 and data["data/eval_rows"] == 120
    assert final["eval/positive_rate"] == pytest.approx(0.5)  # chance: 0.5
    assert final["eval/accuracy"] >= 0.85, final
    with open(f"{workdir}/params_info.json") as f:
        assert json.load(f)["head"] == "score"


def test_prm_beats_chance_on_held_out_steps(prm_run):
    workdir, final = prm_run
    positive = read_jsonl(f"{workdir}/metrics.jsonl")[0]["data/step_positive_rate"]
    assert 0.5 < positive < 0.75  # chance: predicting "correct" everywhere
    assert final["eval/accuracy"] >= positive + 0.15, final
    assert final["eval/first_error_accuracy"] >= 0.8, final


def test_bradley_terry_pairs_score_each_response_as_the_orm(orm_run):
    s, model, params = load_scorer(orm_run[0])
    rng = random.Random(1)
    held_out = problems(7, 8)
    pairs = [rm.Pair(p.question, p.solution, flagged_corruption(p, rng)) for p in held_out]
    data = rm_config("orm", "").data
    pair_rows = rm.pair_rows(s.tokenizer, data, pairs)
    questions = [p.question for p in pairs]
    single = {side: rm.response_rows(s.tokenizer, data, questions, [getattr(p, side) for p in pairs])
              for side in ("chosen", "rejected")}

    def scores(p, pair_batch, chosen, rejected):  # the pair objective and each side as an ORM
        return (rm_step.loss_fn(p, pair_batch, model, "bradley_terry"),
                rm_step.eval_scores(p, pair_batch, model=model, objective="bradley_terry"),
                rm_step.outcome_verdicts(model, p, chosen), rm_step.outcome_verdicts(model, p, rejected))

    with common.model_context(s.mesh):
        batches = [shard_batch(rows, s.mesh) for rows in (pair_rows, single["chosen"], single["rejected"])]
        (loss, metrics), pair, chosen, rejected = jax.device_get(jax.jit(scores)(params, *batches))
    np.testing.assert_allclose(pair["chosen"], chosen, atol=1e-5)
    np.testing.assert_allclose(pair["rejected"], rejected, atol=1e-5)
    margin = np.asarray(pair["chosen"], np.float64) - np.asarray(pair["rejected"], np.float64)
    assert float(loss) == pytest.approx(np.mean(np.log1p(np.exp(-margin))), rel=1e-5)
    assert float(metrics["accuracy"]) == np.mean(margin > 0) >= 0.85


@pytest.mark.parametrize("objective", ["outcome_bce", "bradley_terry"])
def test_memory_estimate_counts_the_score_head_and_both_sides_of_a_pair(labelled, objective):
    config = rm_config("orm", labelled)
    s = common.setup(config)
    rows = rm.rm_data(config, s.tokenizer, objective).train
    optimizer = make_optimizer(config.optim)
    estimate = rm.memory_estimate(s, 16, objective, rows, optimizer)
    response = rows["chosen_tokens" if objective == "bradley_terry" else "response_tokens"]
    width = rows["prompt_tokens"].shape[1] + response.shape[1]
    sequences = 32 if objective == "bradley_terry" else 16  # chosen and rejected
    params = param_bytes(s.model_config, s.mesh, "score")
    assert params < param_bytes(s.model_config, s.mesh, "lm")  # the tiny model is untied
    assert (estimate.params, estimate.gradients) == (params, params)
    assert estimate.activations == activation_bytes(s.model_config, s.mesh, sequences, width,
                                                    head="score")


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_rerank_picks_the_right_solution(orm_run, prm_run, kind):
    s, model, params = load_scorer((orm_run if kind == "orm" else prm_run)[0])
    rng = random.Random(2)
    held_out = problems(9, 8)
    examples = [tasks.TaskExample(p.question, p.solution, str(p.answer)) for p in held_out]
    responses = [[flagged_corruption(p, rng), p.solution, flagged_corruption(p, rng)] for p in held_out]
    result = rm.rerank(model, params, s.tokenizer, rm_config(kind, "").data, examples, responses,
                       kind=kind, mesh=s.mesh, batch_size=8)
    assert (result["best_of_n"], result["first_sample"], result["pass_at_n"]) == (1.0, 0.0, 1.0)


def test_select_best_by_hand():
    scores = [[0.1, 0.9, 0.5], [0.7, 0.7, 0.2], [0.3, 0.2, 0.1], [0.0, 0.0, 1.0]]
    correct = [[False, True, False], [False, True, True], [False, False, False], [False, True, False]]
    answers = [["1", "2", "1"], ["5", "6", "6"], [None, None, None], ["3", "4", None]]
    # best: right, wrong (tie -> first), wrong, wrong; majority: "1" wrong, "6" right, none,
    # "3" (a tie goes to the first seen) wrong; pass: yes, yes, no, yes.
    assert rm.select_best(np.array(scores), np.array(correct), answers) == {
        "best_of_n": 0.25, "first_sample": 0.0, "majority": 0.25, "pass_at_n": 0.75}
    with pytest.raises(ValueError, match="select_best"):
        rm.select_best(np.zeros((2, 3)), np.zeros((2, 2), bool), [[None] * 3] * 2)


def test_aggregate_steps_by_hand():
    probs = np.array([[0.9, 0.5, 0.8], [0.9, 0.1, 0.2], [0.7, 0.6, 0.3]])
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(rm.aggregate_steps(probs, mask, "min"), [0.5, 0.9, 0.0])
    np.testing.assert_allclose(rm.aggregate_steps(probs, mask, "product"), [0.36, 0.9, 0.0])
    with pytest.raises(ValueError, match="how='mean'"):
        rm.aggregate_steps(probs, mask, "mean")


def test_answer_key_normalises_final_answers():
    assert rm.answer_key("1+2=3\nanswer: 3") == rm.answer_key("so the answer is 3.") == "3"
    assert rm.answer_key("no answer here") is None


def test_segment_labels():
    assert rm.segment_labels("3+4=7\n7*2=14\nanswer: 14", [1, 1], True) == [1, 1, 1]
    assert rm.segment_labels("3+4=8\n8*2=16\nanswer: 16", [0, 0], False) == [0, 0, 0]
    assert rm.segment_labels("3+4=7\n7*2=14", [1, 1], False) == [1, 1]  # no answer line
    assert rm.segment_labels("3+4=7\n\n7*2=15\nanswer: 15", [1, 0], False) == [1, 0, 0]
    assert rm.segment_labels("3+4=7\nanswer: 7\nmore", [1], True) == [1, 1, None]
    assert rm.segment_labels("answer: 7", [], True) == [1]


def test_process_rows_label_the_kept_steps_at_their_end_tokens():
    tokenizer, data = CharTokenizer(), tasks.DataConfig()
    response = "1+1=2\n2+1=3\nanswer: 3"  # lines end at characters 5, 11 and 20
    records = [label.Labelled("(1+1)+1", response, True, (0, 1)),
               label.Labelled("1+1", "answer: 3", False, ())]
    rows = rm.process_rows(tokenizer, data, records, max_steps=2)
    # Three lines, two kept (the first and the last): labels [0, 1, correct] -> [0, correct].
    # The second response is its (wrong) answer line alone.
    np.testing.assert_array_equal(rows["step_positions"], [[5, 20], [8, 0]])
    np.testing.assert_array_equal(rows["step_labels"], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(rows["step_mask"], [[True, True], [True, False]])


def test_outcome_pairs_use_every_response():
    records = [label.Labelled("q1", "r1", True, ()), label.Labelled("q1", "w1", False, ()),
               label.Labelled("q1", "w2", False, ()), label.Labelled("q2", "r2", True, ()),
               label.Labelled("q3", "r3", True, ()), label.Labelled("q3", "r4", True, ()),
               label.Labelled("q3", "w3", False, ())]
    assert rm.outcome_pairs(records) == [rm.Pair("q1", "r1", "w1"), rm.Pair("q1", "r1", "w2"),
                                         rm.Pair("q3", "r3", "w3"), rm.Pair("q3", "r4", "w3")]


def test_split_by_question_keeps_questions_whole():
    questions = [f"q{i % 8}" for i in range(40)]
    train, held_out = rm.split_by_question(questions, 0.25, seed=3)
    assert sorted(np.concatenate([train, held_out])) == list(range(40))
    assert len({questions[i] for i in held_out}) == 2
    assert not {questions[i] for i in held_out} & {questions[i] for i in train}
    np.testing.assert_array_equal(rm.split_by_question(questions, 0.25, seed=3)[1], held_out)
    assert len(rm.split_by_question(questions, 0.0, seed=3)[1]) == 0
    assert len(rm.split_by_question(questions, 0.01, seed=3)[1]) == 5  # at least one question
    with pytest.raises(ConfigError, match="eval_fraction"):
        rm.split_by_question(questions, 1.0, seed=3)


def test_first_error_accuracy_by_hand():
    scores = np.array([[1.0, -1.0, 2.0], [1.0, 1.0, -1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
    # row 0: both at step 1; row 1: predicted 2, actual 1; row 2: none and none; row 3: no steps.
    assert rm.first_error_accuracy(scores, labels, mask) == pytest.approx(2 / 3)


def test_data_and_config_errors(labelled, tmp_path):
    tokenizer = CharTokenizer()
    config = rm_config("prm", labelled)
    config.rm.dataset = "hh_rlhf"
    with pytest.raises(ConfigError, match="set exactly one"):
        rm.rm_data(config, tokenizer, "process_bce")
    config.rm.data_path, config.data.data_dir = "", str(tmp_path)
    with pytest.raises(ConfigError, match="bradley_terry objective"):
        rm.rm_data(config, tokenizer, "process_bce")
    outcome_only = tmp_path / "outcomes.jsonl"
    outcome_only.write_text(json.dumps({"question": "1+1", "response": "answer: 2", "correct": True,
                                        "step_labels": []}) + "\n")
    config = rm_config("prm", str(outcome_only))
    with pytest.raises(ConfigError, match="no step labels"):
        rm.rm_data(config, tokenizer, "process_bce")
    config.rm.data_path = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="config.rm.data_path=.*no such file"):
        rm.rm_data(config, tokenizer, "process_bce")
    config.rm.kind = "xrm"
    with pytest.raises(ConfigError, match="config.rm.kind"):
        rm.objective(config.rm)
    config.rm.kind, config.rm.orm_loss = "orm", "hinge"
    with pytest.raises(ConfigError, match="config.rm.orm_loss"):
        rm.objective(config.rm)

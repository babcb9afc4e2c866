"""The dataset builders on small fixtures in each upstream format, read back through load_split."""
import dataclasses
import gzip
import json
import logging
import pickle
import re
import sys
import types

import numpy as np
import pytest

from rlr.data.builders import DataFormatError, synthetic_builder_config
from rlr.data.builders._io import RecordError, get_field
from rlr.data.builders.math import last_boxed
from rlr.data.datasets import DataSource, load_split, spread_indices


def write_jsonl(path, records, gz=False):
    """Writes records (dicts, or raw strings written as they are) one a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(name, split, tmp_path, config=None):
    return load_split(name, split, tmp_path / "data", tmp_path / "manual", config=config)


def raises_at(path, line, *fragments):
    """pytest.raises for a DataFormatError whose message starts with "<path>, line <line>: " and has fragments."""
    pattern = re.escape(f"{path}, line {line}: ") + ".*".join(map(re.escape, fragments))
    return pytest.raises(DataFormatError, match=pattern)


# ----------------------------------------------------------------------------- GSM8K

GSM8K_TRAIN = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 1234 eggs.", "answer": "It sells 1,234 eggs.\n#### 1,234"},
]
GSM8K_TEST = [{"question": "What is 2 minus 5?", "answer": "2-5=-3\n#### -3"}]


def test_gsm8k_records_and_final_answers(tmp_path):
    write_jsonl(tmp_path / "manual/train.jsonl", GSM8K_TRAIN)
    write_jsonl(tmp_path / "manual/test.jsonl", GSM8K_TEST)
    train = load("gsm8k", "train", tmp_path)
    assert list(train) == [
        {"id": "train.jsonl:1", "question": GSM8K_TRAIN[0]["question"], "answer": GSM8K_TRAIN[0]["answer"],
         "final_answer": "7"},
        {"id": "train.jsonl:2", "question": GSM8K_TRAIN[1]["question"], "answer": GSM8K_TRAIN[1]["answer"],
         "final_answer": "1234"},
    ]
    assert [r["final_answer"] for r in load("gsm8k", "test", tmp_path)] == ["-3"]


@pytest.mark.parametrize("bad_line, fragments", [
    ('{"question": "q", "answer": ', ("invalid JSON",)),
    ({"answer": "x\n#### 1"}, ("missing key 'question'",)),
    ({"question": 3, "answer": "x\n#### 1"}, ("key 'question'", "expected str, got int")),
    ({"question": "q", "answer": "no marker"}, ("key 'answer'", "'####'")),
    ('["question", "answer"]', ("expected a JSON object",)),
])
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, bad_line, fragments):
    path = write_jsonl(tmp_path / "manual/train.jsonl", [GSM8K_TRAIN[0], bad_line])
    write_jsonl(tmp_path / "manual/test.jsonl", GSM8K_TEST)
    with raises_at(path, 2, *fragments):
        load("gsm8k", "train", tmp_path)


def test_missing_manual_file_names_path_and_url(tmp_path):
    write_jsonl(tmp_path / "manual/train.jsonl", GSM8K_TRAIN)
    expected = tmp_path / "manual/test.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected)) + "(.|\n)*github.com/openai/grade-school-math"):
        load("gsm8k", "train", tmp_path)


def test_missing_manual_dir_names_it_and_the_instructions(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "manual")) + "(.|\n)*math-shepherd.jsonl"):
        load("math_shepherd", "train", tmp_path)


# ----------------------------------------------------------------------------- MATH

@pytest.mark.parametrize("text, expected", [
    ("so $x = \\boxed{2}$.", "2"),
    ("$\\boxed{\\frac{1}{\\sqrt{2}}}$", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1}, then \\boxed{3^{2}}", "3^{2}"),
    ("the set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("an escaped close \\boxed{a\\}b}", "a\\}b"),
    ("old style $\\boxed 5$.", "5"),
    ("$\\fbox{7}$", "7"),
    ("no box here", None),
    ("unclosed \\boxed{1 + {2}", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


MATH_FILES = {
    "train/algebra/1.json": {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
                             "solution": "$1+1=\\boxed{2}$."},
    "train/geometry/10.json": {"problem": "Find the side.", "level": "Level 3", "type": "Geometry",
                               "solution": "It is $\\boxed{\\frac{1}{\\sqrt{2}}}$."},
    "test/algebra/3.json": {"problem": "Solve $x-5=0$.", "level": "Level 2", "type": "Algebra",
                            "solution": "$x = \\boxed 5$."},
    "test/precalculus/807.json": {"problem": "Which set?", "level": "Level 4", "type": "Precalculus",
                                  "solution": "Try \\boxed{1}; in fact \\boxed{\\{1, 2\\}}."},
}


def write_math(tmp_path, files=MATH_FILES):
    for relpath, record in files.items():
        path = tmp_path / "manual/MATH" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record) if isinstance(record, dict) else record)


def test_math_splits_fields_and_math500_from_prm800k_jsonl(tmp_path):
    write_math(tmp_path)
    write_jsonl(tmp_path / "manual/math500_test.jsonl", [
        {"problem": "Which set?", "answer": "\\{1,2\\}", "unique_id": "test/precalculus/807.json", "level": 4},
        {"problem": "Solve $x-5=0$.", "answer": "5", "unique_id": "test/algebra/3.json", "level": 2},
    ])
    train = load("math", "train", tmp_path)
    assert list(train) == [
        {"id": "train/algebra/1.json", **MATH_FILES["train/algebra/1.json"], "final_answer": "2"},
        {"id": "train/geometry/10.json", **MATH_FILES["train/geometry/10.json"],
         "final_answer": "\\frac{1}{\\sqrt{2}}"},
    ]
    test = load("math", "test", tmp_path)
    assert [(r["id"], r["final_answer"]) for r in test] == [
        ("test/algebra/3.json", "5"), ("test/precalculus/807.json", "\\{1, 2\\}")]
    math500 = load("math", "math500", tmp_path)
    assert [(r["id"], r["final_answer"], r["type"]) for r in math500] == [
        ("test/precalculus/807.json", "\\{1,2\\}", "Precalculus"), ("test/algebra/3.json", "5", "Algebra")]
    assert math500[0]["solution"] == MATH_FILES["test/precalculus/807.json"]["solution"]


def test_math500_from_an_id_list_and_absent_without_one(tmp_path):
    write_math(tmp_path)
    with pytest.raises(ValueError, match="no split 'math500'.*'test', 'train'"):
        load_split("math", "math500", tmp_path / "data_without_list", tmp_path / "manual")
    (tmp_path / "manual/math500_ids.txt").write_text("test/algebra/3.json\n\n")
    math500 = load_split("math", "math500", tmp_path / "data_with_list", tmp_path / "manual")
    assert [(r["id"], r["final_answer"]) for r in math500] == [("test/algebra/3.json", "5")]


def test_math_malformed_problem_file_and_unknown_math500_id(tmp_path):
    files = dict(MATH_FILES)
    files["train/algebra/2.json"] = {"problem": "p", "level": "Level 1", "type": "Algebra"}
    write_math(tmp_path, files)
    with pytest.raises(DataFormatError, match=re.escape(f"{tmp_path / 'manual/MATH/train/algebra/2.json'}: "
                                                        "missing key 'solution'")):
        load("math", "train", tmp_path)

    other = tmp_path / "other"
    write_math(other)
    path = write_jsonl(other / "manual/math500_test.jsonl", [
        {"unique_id": "test/algebra/3.json", "answer": "5"}, {"unique_id": "test/algebra/999.json", "answer": "1"}])
    with raises_at(path, 2, "unique_id 'test/algebra/999.json' is not a MATH test problem"):
        load("math", "math500", other)


def test_math_bad_json_names_file_and_line(tmp_path):
    files = dict(MATH_FILES)
    files["test/algebra/4.json"] = '{\n  "problem": "p",\n  "level": }'
    write_math(tmp_path, files)
    with pytest.raises(DataFormatError, match=re.escape(f"{tmp_path / 'manual/MATH/test/algebra/4.json'}, line 3: "
                                                        "invalid JSON")):
        load("math", "test", tmp_path)


# ----------------------------------------------------------------------------- HH-RLHF

TWO_TURNS = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
HH_TRAIN = [
    {"chosen": TWO_TURNS + " Why did the chicken cross the road?", "rejected": TWO_TURNS + " No."},
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
    {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
     "rejected": "\n\nHuman: A\n\nAssistant: X\n\nHuman: C\n\nAssistant: D"},
]
HH_TEST = [{"chosen": "\n\nHuman: Bye.\n\nAssistant: Goodbye!", "rejected": "\n\nHuman: Bye.\n\nAssistant: Whatever."}]


def test_hh_rlhf_splits_prompt_from_final_replies_and_skips_mismatched_pairs(tmp_path, caplog):
    train_path = write_jsonl(tmp_path / "manual/helpful-base/train.jsonl.gz", HH_TRAIN, gz=True)
    write_jsonl(tmp_path / "manual/helpful-base/test.jsonl.gz", HH_TEST, gz=True)
    with caplog.at_level(logging.WARNING, logger="rlr.data.builders.hh_rlhf"):
        train = load("hh_rlhf", "train", tmp_path, config="helpful_base")
    assert len(train) == 2
    first = train[0]
    assert first == {
        "id": "helpful-base/train.jsonl.gz:1", "subset": "helpful-base", "prompt": TWO_TURNS,
        "chosen": " Why did the chicken cross the road?", "rejected": " No.",
        "chosen_full": HH_TRAIN[0]["chosen"], "rejected_full": HH_TRAIN[0]["rejected"],
    }
    assert (train[1]["prompt"], train[1]["chosen"], train[1]["rejected"]) == (
        "\n\nHuman: What is 2+2?\n\nAssistant:", " 4.", " 5.")
    assert all(r["prompt"] + r["chosen"] == r["chosen_full"] and r["prompt"] + r["rejected"] == r["rejected_full"]
               for r in train)
    assert f"{train_path}: skipped 1 pairs" in caplog.text and "(lines 3)" in caplog.text
    assert [r["chosen"] for r in load("hh_rlhf", "test", tmp_path, config="helpful_base")] == [" Goodbye!"]


def test_hh_rlhf_malformed_line_and_missing_subset(tmp_path):
    path = write_jsonl(tmp_path / "manual/helpful-base/train.jsonl.gz",
                       [HH_TRAIN[1], {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}], gz=True)
    write_jsonl(tmp_path / "manual/helpful-base/test.jsonl.gz", HH_TEST, gz=True)
    with raises_at(path, 2, "key 'chosen' has no '\\n\\nAssistant:' turn"):
        load("hh_rlhf", "train", tmp_path, config="helpful_base")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "manual/harmless-base/train.jsonl.gz"))):
        load("hh_rlhf", "train", tmp_path, config="all")


def test_hh_dialogue_messages_one_a_turn():
    from rlr.data.builders.hh_rlhf import dialogue_messages

    assert dialogue_messages(TWO_TURNS) == [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."}]
    assert dialogue_messages("\n\nHuman: Line one.\nLine two:\n\nAssistant:") == [
        {"role": "user", "content": "Line one.\nLine two:"}]
    for bad in ("\n\nHuman: Hi.\n\nAssistant: Hello.",  # no empty Assistant turn to reply in
                "\n\nAssistant: Hello.\n\nHuman: Hi.\n\nAssistant:",  # the assistant speaks first
                "Hi.\n\nAssistant:",  # text before the first turn
                "What is 2+2?"):
        with pytest.raises(ValueError, match="expected an HH-RLHF dialogue"):
            dialogue_messages(bad)


# ----------------------------------------------------------------------------- Math-Shepherd

SHEPHERD_INPUT = ("Janet has 16 eggs and eats 3. How many are left? Step 1: She has 16 eggs. ки\n"
                  "Step 2: 16 - 3 = 12. ки\nStep 3: The answer is: 12 ки")
SHEPHERD_LINES = [
    {"input": SHEPHERD_INPUT, "task": "GSM8K",
     "label": SHEPHERD_INPUT.replace("ки", "+", 1).replace("ки", "-", 1).replace("ки", "-", 1)},
    {"input": "What is $1+1$? Step 1: $1+1=2$. The answer is: 2 ки", "task": "MATH",
     "label": "What is $1+1$? Step 1: $1+1=2$. The answer is: 2 +"},
]


def test_math_shepherd_steps_and_labels(tmp_path):
    write_jsonl(tmp_path / "manual/math-shepherd.jsonl", SHEPHERD_LINES)
    records = list(load("math_shepherd", "train", tmp_path))
    assert records[0]["prompt"] == "Janet has 16 eggs and eats 3. How many are left?"
    assert records[0]["steps"] == ["She has 16 eggs.", "16 - 3 = 12.", "The answer is: 12"]
    np.testing.assert_array_equal(records[0]["step_labels"], np.array([1, 0, 0], np.int32))
    assert records[0]["step_labels"].dtype == np.int32
    assert (records[0]["source"], records[0]["id"]) == ("GSM8K", "math-shepherd.jsonl:1")
    assert (records[1]["prompt"], records[1]["steps"], records[1]["step_labels"].tolist()) == (
        "What is $1+1$?", ["$1+1=2$. The answer is: 2"], [1])


@pytest.mark.parametrize("label, fragments", [
    (SHEPHERD_INPUT.replace("ки", "+", 1).replace("ки", "x", 1).replace("ки", "-", 1),
     ("key 'label' has 'x' at step tag 2, expected '+' or '-'",)),
    (SHEPHERD_INPUT.replace("16 - 3", "16 - 4").replace("ки", "+"), ("key 'label' differs from key 'input' before step tag 2",)),
])
def test_math_shepherd_malformed_label_names_file_and_line(tmp_path, label, fragments):
    path = write_jsonl(tmp_path / "manual/math-shepherd.jsonl",
                       [SHEPHERD_LINES[1], {"input": SHEPHERD_INPUT, "label": label, "task": "GSM8K"}])
    with raises_at(path, 2, *fragments):
        load("math_shepherd", "train", tmp_path)


# ----------------------------------------------------------------------------- PRM800K

def prm_line(problem, steps, finish="solution", answer="2"):
    """A PRM800K line; steps: [(completions as [(text, rating)], chosen_completion)]."""
    return {"labeler": "x", "generation": 1, "is_quality_control_question": False,
            "question": {"problem": problem, "ground_truth_answer": answer},
            "label": {"steps": [{"completions": [{"text": t, "rating": r, "flagged": False} for t, r in comps],
                                 "human_completion": None, "chosen_completion": chosen} for comps, chosen in steps],
                      "total_time": 1, "finish_reason": finish}}


PRM_TRAIN_2 = [
    # follows the chosen completion; stops after the first wrong step (kept, label 0)
    prm_line("P1", [([("a", 1)], 0), ([("b-alt", -1), ("b", 0)], 1), ([("c", -1)], None), ([("d", 1)], 0)],
             finish="found_error"),
    # chosen null -> the first completion; an unrated step ends the trajectory before it
    prm_line("P2", [([("e", 1), ("e2", -1)], None), ([("f", None)], None), ([("g", 1)], 0)]),
]


def write_prm800k(tmp_path, train2=PRM_TRAIN_2):
    manual = tmp_path / "manual"
    write_jsonl(manual / "phase1_train.jsonl", [prm_line("Q", [([("only", 1)], 0)], answer="7")])
    write_jsonl(manual / "phase1_test.jsonl", [prm_line("T1", [([("t", -1)], None)], finish="found_error")])
    write_jsonl(manual / "phase2_test.jsonl", [prm_line("T2", [([("u", 1)], 0), ([], None)])])
    return write_jsonl(manual / "phase2_train.jsonl", train2)


def test_prm800k_follows_chosen_completions_until_the_first_wrong_step(tmp_path):
    write_prm800k(tmp_path)
    train = load("prm800k", "train", tmp_path)
    got = [(r["id"], r["source"], r["prompt"], r["steps"], r["step_labels"].tolist(), r["final_answer"],
            r["finish_reason"]) for r in train]
    assert got == [
        ("phase1_train.jsonl:1", "prm800k/phase1", "Q", ["only"], [1], "7", "solution"),
        ("phase2_train.jsonl:1", "prm800k/phase2", "P1", ["a", "b", "c"], [1, 1, 0], "2", "found_error"),
        ("phase2_train.jsonl:2", "prm800k/phase2", "P2", ["e"], [1], "2", "solution"),
    ]
    test = load("prm800k", "test", tmp_path)
    assert [(r["steps"], r["step_labels"].tolist()) for r in test] == [(["t"], [0]), (["u"], [1])]


@pytest.mark.parametrize("bad, fragments", [
    (prm_line("P", [([("a", 5)], 0)]), ("key 'label.steps[0].completions[0].rating': expected -1, 0, 1 or null",)),
    (prm_line("P", [([("a", 1)], 3)]), ("key 'label.steps[0].chosen_completion': 3 is not an index",)),
    ({"question": {"ground_truth_answer": "1"}, "label": {"steps": [], "finish_reason": "x"}},
     ("missing key 'question.problem'",)),
    (prm_line("P", [([("a", True)], 0)]), ("key 'label.steps[0].completions[0].rating': expected int or null, got bool",)),
])
def test_prm800k_malformed_line_names_file_line_and_key(tmp_path, bad, fragments):
    path = write_prm800k(tmp_path, [PRM_TRAIN_2[0], bad])
    with raises_at(path, 2, *fragments):
        load("prm800k", "train", tmp_path)


# ----------------------------------------------------------------------------- preference pairs

def test_preference_pairs_one_split_a_file(tmp_path):
    pairs = [{"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "extra": 1},
             {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}]
    write_jsonl(tmp_path / "manual/train.jsonl", pairs)
    write_jsonl(tmp_path / "manual/eval_small.jsonl", pairs[1:])
    assert list(load("preference_pairs", "train", tmp_path)) == [
        {"id": "train.jsonl:1", "prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"},
        {"id": "train.jsonl:2", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
    ]
    assert len(load("preference_pairs", "eval_small", tmp_path)) == 1


def test_preference_pairs_malformed_and_missing(tmp_path):
    path = write_jsonl(tmp_path / "manual/train.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}])
    with raises_at(path, 2, "key 'chosen': expected str, got list"):
        load("preference_pairs", "train", tmp_path)
    (tmp_path / "empty/manual").mkdir(parents=True)
    (tmp_path / "empty/manual/README").write_text("not a split")
    with pytest.raises(FileNotFoundError, match="expected <split>.jsonl files in " + re.escape(str(tmp_path / "empty/manual"))):
        load("preference_pairs", "train", tmp_path / "empty")


# ----------------------------------------------------------------------------- synthetic task

@dataclasses.dataclass(frozen=True)
class StandInProblem:
    question: str
    steps: tuple
    answer: int

    @property
    def prompt(self):
        return self.question + "\n"

    @property
    def solution(self):
        return "\n".join(self.steps + (f"answer: {self.answer}",))


@dataclasses.dataclass(frozen=True)
class StandInConfig:
    addend: int = 1


def stand_in_problems(seed, n, config=StandInConfig()):
    """Problem i of seed s is "(s+i)+addend": seeds 0 and 1 share questions, as two real seeds may."""
    return [StandInProblem(f"{seed + i}+{config.addend}", (f"{seed + i}+{config.addend}={seed + i + config.addend}",),
                           seed + i + config.addend) for i in range(n)]


def test_synthetic_builder_wraps_the_generator_with_disjoint_splits(tmp_path, monkeypatch):
    module = types.ModuleType("rlr.data.synthetic")
    module.Problem, module.SyntheticConfig, module.generate_problems = StandInProblem, StandInConfig, stand_in_problems
    monkeypatch.setitem(sys.modules, "rlr.data.synthetic", module)
    config = synthetic_builder_config(n_train=3, n_test=2, addend=10)
    train = load_split("synthetic", "train", tmp_path, config=config)
    assert train[1] == {"id": "train/1", "question": "1+10", "prompt": "1+10\n", "steps": ["1+10=11"],
                        "answer": "1+10=11\nanswer: 11", "final_answer": "11"}
    assert [r["question"] for r in train] == ["0+10", "1+10", "2+10"]
    # the test stream of seed 1 is 1, 2, 3, 4, ...: questions 1 and 2 are in train, so test is 3, 4
    assert [r["question"] for r in load_split("synthetic", "test", tmp_path, config=config)] == ["3+10", "4+10"]


def test_synthetic_builder_on_the_real_task(tmp_path):
    synthetic = pytest.importorskip("rlr.data.synthetic")
    config = synthetic_builder_config(n_train=30, n_test=10, train_seed=3, test_seed=4, num_ops=(1, 2))
    task = synthetic.SyntheticConfig(num_ops=(1, 2))
    train = load_split("synthetic", "train", tmp_path, config=config)
    expected = synthetic.generate_problems(3, 30, task)
    assert [(r["question"], r["steps"], r["answer"], r["final_answer"]) for r in train] == [
        (p.question, list(p.steps), p.solution, str(p.answer)) for p in expected]
    test = load_split("synthetic", "test", tmp_path, config=config)
    held_out = [p for p in synthetic.generate_problems(4, 200, task) if p.question not in {p.question for p in expected}]
    assert [r["question"] for r in test] == [p.question for p in held_out[:10]]


def test_synthetic_builder_config_names_and_checks():
    assert synthetic_builder_config(10, 5).name != synthetic_builder_config(10, 5, num_ops=(1, 2)).name
    assert synthetic_builder_config(10, 5, num_ops=[1, 2]).name == synthetic_builder_config(10, 5, num_ops=(1, 2)).name
    with pytest.raises(ValueError, match="train_seed and test_seed must differ"):
        synthetic_builder_config(10, 5, train_seed=2, test_seed=2)
    with pytest.raises(ValueError, match="n_test=0"):
        synthetic_builder_config(10, 0)


# ----------------------------------------------------------------------------- front door

def test_data_source_access_pickling_and_errors(tmp_path):
    write_jsonl(tmp_path / "manual/train.jsonl", GSM8K_TRAIN)
    write_jsonl(tmp_path / "manual/test.jsonl", GSM8K_TEST)
    source = load("gsm8k", "train", tmp_path)
    assert isinstance(source, DataSource) and len(source) == 2
    assert source[-1] == source[1] and source[1]["final_answer"] == "1234"
    assert source.__getitems__([1, 0]) == [source[1], source[0]] and source[:1] == [source[0]]
    assert list(pickle.loads(pickle.dumps(source))) == list(source)
    with pytest.raises(IndexError, match="record 2 out of range for a split of 2 records"):
        source[2]
    assert len(load("gsm8k", "train[:1]+test", tmp_path)) == 2
    with pytest.raises(ValueError, match="has no split 'validation'; its splits are \\['test', 'train'\\]"):
        load("gsm8k", "validation", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'; expected one of"):
        load("gsm9k", "train", tmp_path)


def test_get_field_checks_presence_and_json_type():
    assert get_field({"a": 1}, "a", int) == 1
    with pytest.raises(RecordError, match="key 'x.a': expected int, got bool"):
        get_field({"a": True}, "a", int, "x.")
    with pytest.raises(RecordError, match="expected a JSON object at 'x', got list"):
        get_field([1], "a", int, "x.")


def test_spread_indices_cover_the_split_evenly():
    assert spread_indices(10, 4) == [0, 2, 5, 7]  # floor(i x 10 / 4)
    assert spread_indices(8, 2) == [0, 4]
    assert spread_indices(3, 5) == spread_indices(3, None) == [0, 1, 2]
    assert spread_indices(0, 4) == []

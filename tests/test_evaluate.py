"""`rlr eval` (rlr.evaluate): pass@k by hand, scoring by the verifier, set loading, and the command
end to end on the tiny GGUF model of test_gguf (random weights: the plumbing, not the accuracy)."""
import json
import math

import pytest

from rlr import evaluate as E
from rlr.data.real_sets import Problem
from test_gguf import SMOL_SYSTEM, write_model


def test_pass_at_k_by_hand():
    assert E.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert E.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert E.pass_at_k(5, 2, 3) == pytest.approx(1 - math.comb(3, 3) / math.comb(5, 3))
    assert E.pass_at_k(4, 0, 4) == 0.0 and E.pass_at_k(3, 2, 2) == 1.0
    with pytest.raises(ValueError, match="k=3 must be in 1..n=2"):
        E.pass_at_k(2, 1, 3)


def test_score_uses_the_verifier_on_the_first_and_all_samples():
    problems = [Problem("q1", "s", "18", "a"), Problem("q2", "s", "7", "b")]
    responses = [["So the answer is 18.", "#### 17"], ["\\boxed{6}", "The answer is: 7"]]
    metrics, correct = E.score(problems, responses, ks=[1, 2])
    assert correct == [[True, False], [False, True]]
    assert metrics == {"accuracy": 0.5, "pass@1": 0.5, "pass@2": 1.0}


def test_load_set_reads_files_and_limits(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    lines = [{"question": f"q{i}", "answer": f"work\n#### {i}", "id": f"x{i}"} for i in range(3)]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    problems = E.load_set("gsm8k-eval", str(tmp_path), limit=2)
    assert problems == [Problem("q0", "work\n#### 0", "0", "x0"), Problem("q1", "work\n#### 1", "1", "x1")]
    assert E.load_set(str(tmp_path / "gsm8k" / "test.jsonl"), "unused")[2].answer == "2"
    with pytest.raises(ValueError, match="--sets 'nope'"):
        E.load_set("nope", str(tmp_path))


def test_eval_command_end_to_end(tmp_path, capsys):
    from rlr.models.gguf_io import convert_gguf
    from rlr.parallel import make_mesh

    write_model(tmp_path / "tiny.gguf")
    problems = tmp_path / "set.jsonl"
    problems.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                                for i in range(3)))
    out = tmp_path / "out.jsonl"
    status = E.main(["--checkpoint", str(tmp_path / "tiny.gguf"), "--sets", str(problems),
                     "--num-samples", "2", "--temperature", "1.0", "--k", "1,2",
                     "--max-new-tokens", "4", "--batch-size", "8", "--out", str(out)])
    assert status == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["num_problems"] == 3 and set(line) >= {"accuracy", "pass@1", "pass@2", "wall_s"}
    records = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(records) == 3 and all(len(r["responses"]) == 2 == len(r["correct"]) for r in records)
    # A converted checkpoint directory keeps the GGUF's chat template's system message.
    convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "hf"))
    checkpoint = E.load_checkpoint(str(tmp_path / "hf"), make_mesh(data=-1))
    assert checkpoint.tokenizer.system_prompt == SMOL_SYSTEM and checkpoint.config.num_layers == 2
    assert E.main(["--checkpoint", str(tmp_path / "missing"), "--sets", str(problems)]) == 1
    assert "rlr eval: error: --checkpoint" in capsys.readouterr().err

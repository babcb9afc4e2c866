"""The synthetic reasoning task: generation, the step checker, corruptions."""
import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlr.data.synthetic import (
    CORRUPTION_MODES,
    Problem,
    SyntheticConfig,
    check_steps,
    corrupt,
    final_answer_correct,
    generate_problems,
    parse_answer,
    repetition_rate,
    solve,
)
from rlr.data.tokenizer import CharTokenizer

Q = "((3+4)*2)-5"
STEP = re.compile(r"^(-?\d+)([-+*])(-?\d+)=(-?\d+)$")


def test_solve_hand_checked():
    p = solve(Q)
    assert p == Problem(Q, ("3+4=7", "7*2=14", "14-5=9"), 9)
    assert p.prompt == "((3+4)*2)-5\n"
    assert p.solution == "3+4=7\n7*2=14\n14-5=9\nanswer: 9"
    # post-order: left operand, right operand, then the operation
    assert solve("(5-9)*(5-8)").steps == ("5-9=-4", "5-8=-3", "-4*-3=12")
    assert solve("(1+(2*3))-(4+5)").steps == ("2*3=6", "1+6=7", "4+5=9", "7-9=-2")
    assert solve("2+3*4").steps == ("3*4=12", "2+12=14")  # usual precedence without parentheses
    for bad in ("(3+4", "3+", "3/4", "7"):
        with pytest.raises(ValueError, match="question"):
            solve(bad)


def test_generation_deterministic_and_in_config():
    config = SyntheticConfig(num_ops=(1, 3), operand_range=(2, 6), ops=("+", "*"), value_range=(0, 200))
    problems = generate_problems(7, 200, config)
    assert problems == generate_problems(7, 200, config)
    assert problems[:50] == generate_problems(7, 50, config)
    assert problems != generate_problems(8, 200, config)
    for p in problems:
        assert 1 <= len(p.steps) <= 3
        assert all(2 <= int(x) <= 6 for x in re.findall(r"\d+", p.question))
        assert set(re.findall(r"[-+*]", p.question)) <= {"+", "*"}
        assert all(0 <= int(s.split("=")[1]) <= 200 for s in p.steps)
        assert len(set(p.steps)) == len(p.steps)
    assert {len(p.steps) for p in problems} == {1, 2, 3}


def test_config_errors():
    with pytest.raises(ValueError, match="num_ops"):
        SyntheticConfig(num_ops=(3, 2))
    with pytest.raises(ValueError, match="ops"):
        SyntheticConfig(ops=("/",))
    with pytest.raises(ValueError, match="operand_range"):
        SyntheticConfig(operand_range=(-3, 3))
    with pytest.raises(ValueError, match="no problem within"):
        generate_problems(0, 1, SyntheticConfig(num_ops=(3, 3), operand_range=(5, 9), ops=("*",), value_range=(0, 10)))


def test_checker_agrees_with_python_on_10000_problems():
    start = time.perf_counter()
    problems = generate_problems(0, 7000) + generate_problems(
        1, 3000, SyntheticConfig(num_ops=(1, 5), operand_range=(0, 20), value_range=(-500, 500))
    )
    for p in problems:
        truth = eval(p.question)  # noqa: S307 -- the question is digits, + - * and parentheses
        assert p.answer == truth
        check = check_steps(p.question, p.solution)
        assert all(check.correct) and not any(check.repeated), p
        assert check.has_answer and check.answer_correct and check.answer == truth
        assert final_answer_correct(p.question, p.solution)
        assert not final_answer_correct(p.question, p.solution.replace(f"answer: {truth}", f"answer: {truth + 1}"))
    assert time.perf_counter() - start < 30.0  # ~5 s idle; loose for a loaded CI machine


def test_checker_hand_checked():
    def labels(response):
        return check_steps(Q, response).correct

    assert labels("4+3=7\n2*7=14\n14-5=9\nanswer: 9") == (True, True, True)  # + and * commute
    assert labels("3+4=7\n7*2=14\n5-14=-9") == (True, True, False)  # - does not
    assert labels("3*4=12\n12*2=24\n24-5=19") == (False, False, False)  # wrong operator, true arithmetic
    assert labels("3+4=8\n8*2=16\n16-5=11") == (False, False, False)  # wrong result, carried on
    assert labels("7*2=14\n14-5=9") == (False, False)  # skipped 3+4: 7 is not available yet
    assert labels("3+5=8\n3+4=7\n7*2=14\n14-5=9") == (False, True, True, True)  # 5 is not an operand of 3+
    assert labels("3+4=7\nthen 7*2\n7*2=14") == (True, False, True)  # malformed line
    assert labels("3+4=7\n7*1=7\n7*2=14\n14+0=14\n14-5=9") == (True,) * 5  # no-ops on available values
    assert labels("9*1=9") == (False,)  # 9 is not available
    # A skipped result that equals 1 or 0 is not a no-op's identity: 3-2 and 5-5 were skipped.
    assert check_steps("(3-2)*4", "1*4=4\nanswer: 4").correct == (False,)
    assert check_steps("(9-8)*(2+3)", "2+3=5\n1*5=5").correct == (True, False)
    assert check_steps("7-(5-5)", "7-0=7").correct == (False,)
    assert check_steps("(3-2)*4", "3-2=1\n1*4=4\n4*1=4").correct == (True, True, True)
    assert check_steps("(1+2)*(3+4)", "3+4=7\n1+2=3\n3*7=21\nanswer: 21").correct == (True, True, True)

    response = "3+4=7\n3+4=7\n7*2=14\n  7*2 = 14 \n14-5=9\nanswer: 9\n1+1=5"
    check = check_steps(Q, response)
    assert check.correct == (True,) * 5  # repeats of correct steps stay correct
    assert check.repeated == (False, True, False, True, False)
    assert (check.num_steps, check.num_repeated, check.first_wrong) == (5, 2, None)
    assert check.has_answer and check.answer_correct
    assert [response[a:b] for a, b in check.spans] == ["3+4=7", "3+4=7", "7*2=14", "7*2 = 14", "14-5=9"]
    assert repetition_rate(response) == pytest.approx(2 / 5)
    assert repetition_rate("answer: 3") == 0.0

    no_answer = check_steps(Q, "3+4=7\n7*2=14")
    assert not no_answer.has_answer and not no_answer.answer_correct and no_answer.answer == 9


@pytest.mark.parametrize(
    "response, value",
    [("answer: 9", 9), ("Answer = -4", -4), ("x\nanswer is 12.", 12), ("ANSWER:7", 7), ("answer: x", None), ("9", None)],
)
def test_parse_answer(response, value):
    assert parse_answer(response) == value


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 30), st.sampled_from("+-*"), st.integers(0, 30), st.integers(-5, 5))
def test_single_step_label_is_python_arithmetic(a, op, b, error):
    result = eval(f"{a}{op}{b}") + error  # noqa: S307
    assert check_steps(f"{a}{op}{b}", f"{a}{op}{b}={result}").correct == (error == 0,)


def _result(line):
    return int(line.rsplit("=", 1)[1])


def test_corruptions_flagged_at_the_corrupted_step():
    problems = generate_problems(3, 150)
    rng = random.Random(0)
    seen_modes = {m: 0 for m in CORRUPTION_MODES}
    for p in problems:
        canonical = list(p.steps)
        for mode in CORRUPTION_MODES:
            try:
                text, k = corrupt(p, mode, rng)
            except ValueError:  # no corruption of this mode is detectable on this problem
                assert mode == "skipped_step"
                continue
            seen_modes[mode] += 1
            lines = text.split("\n")
            steps, answer = lines[:-1], parse_answer(lines[-1])
            check = check_steps(p.question, text)
            assert check.first_wrong == k, (p, mode, text)
            if mode in ("wrong_result", "wrong_operator", "wrong_operand"):
                assert steps[:k] == canonical[:k] and len(steps) == len(canonical)
                a, op, b, c = STEP.match(steps[k]).groups()
                a0, op0, b0, c0 = STEP.match(canonical[k]).groups()
                if mode == "wrong_result":
                    assert (a, op, b) == (a0, op0, b0) and 1 <= abs(int(c) - int(c0)) <= 3
                elif mode == "wrong_operator":
                    assert (a, b) == (a0, b0) and op != op0 and int(c) == eval(f"{a}{op}({b})")  # noqa: S307
                else:
                    assert op == op0 and ((a == a0) != (b == b0))
                    assert 1 <= abs(int(a) - int(a0)) + abs(int(b) - int(b0)) <= 3
                    assert int(c) == eval(f"({a}){op}({b})")  # noqa: S307
                assert answer == _result(steps[-1])  # later steps carry on from the error
            elif mode == "skipped_step":
                j = next(i for i in range(len(canonical)) if i == len(steps) or steps[i] != canonical[i])
                assert steps == canonical[:j] + canonical[j + 1 :] and j <= k
                assert str(_result(canonical[j])) in STEP.match(steps[k]).group(1, 3)
                assert answer == p.answer
            else:
                assert k is None and all(check.correct) and answer == p.answer
                extra = next(s for i, s in enumerate(steps) if i == len(canonical) or s != canonical[i])
                assert len(steps) == len(canonical) + 1
                assert check.num_repeated == 1 or re.fullmatch(r"(-?\d+)(\*1|\+0|-0)=\1", extra)
    assert all(n >= 100 for n in seen_modes.values()), seen_modes


def test_corrupt_deterministic_and_errors():
    p = generate_problems(0, 1)[0]
    for mode in CORRUPTION_MODES:
        assert corrupt(p, mode, random.Random(5)) == corrupt(p, mode, random.Random(5))
    with pytest.raises(ValueError, match="mode='typo'"):
        corrupt(p, "typo", random.Random(0))
    with pytest.raises(ValueError, match="skipped_step"):  # one step: none whose result is used
        corrupt(solve("3+4"), "skipped_step", random.Random(0))
    # Skipping 8-8=0 leaves 0+7=7: a skip (8-8 was never computed), not a no-op.
    assert corrupt(solve("(8-8)+7"), "skipped_step", random.Random(0)) == ("0+7=7\nanswer: 7", 0)


def test_char_tokenizer_covers_the_task():
    tok = CharTokenizer()
    rng = random.Random(0)
    texts = []
    for p in generate_problems(0, 300) + generate_problems(1, 100, SyntheticConfig(operand_range=(0, 20))):
        texts += [p.prompt + p.solution] + [corrupt(p, m, rng)[0] for m in CORRUPTION_MODES if m != "skipped_step"]
        assert tok.apply_chat_template([{"role": "user", "content": p.question}]) == p.prompt
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert set("".join(texts)) <= set(tok.alphabet)
    assert max(len(t) for t in texts[:5 * 300]) < 100  # short enough for a tiny model

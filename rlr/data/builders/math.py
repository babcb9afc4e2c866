"""MATH (Hendrycks et al., 2021, "Measuring Mathematical Problem Solving With the MATH Dataset").

Reads the upstream tree `MATH/{train,test}/<subject>/<n>.json`, each {"problem", "level",
"type", "solution"}. Features: id ("test/precalculus/807.json", the form PRM800K's
MATH500 uses), problem, solution, level ("Level 5"), type ("Precalculus"), final_answer
(the content of the last \\boxed{...} of the solution, nested braces matched).

A `math500` split (the 500-problem test subset of Lightman et al., 2023, "Let's Verify
Step by Step") is added when manual_dir holds either `math500_test.jsonl` (PRM800K's
`math_splits/test.jsonl`: lines with "unique_id" and "answer"; its "answer" becomes
final_answer) or `math500_ids.txt` (one unique_id a line). Its records are read from
the MATH test tree, so they carry the same features as the other splits.
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from rlr.data.builders._base import TEXT, Example, ManualBuilder
from rlr.data.builders._io import DataFormatError, RecordError, get_field, parse_json_file, parse_jsonl

SPLITS = ("train", "test")
MATH500_JSONL = "math500_test.jsonl"
MATH500_IDS = "math500_ids.txt"
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, or None when there is none.

    Braces nest: "\\boxed{\\frac{1}{2}}" -> "\\frac{1}{2}"; escaped braces "\\{" "\\}" do not
    count. The brace-less form "\\boxed 5$" gives "5" (up to the next "$"), as in
    Hendrycks et al.'s `last_boxed_only_string`. An unclosed box gives None.
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = text[start + len(command):]
    if rest.startswith(" "):
        return rest.split("$", 1)[0].strip() or None
    if not rest.startswith("{"):
        return None
    depth, i = 0, 0
    while i < len(rest):
        char = rest[i]
        if char == "\\":  # a command or an escaped character: "\{", "\}" and "\\" never count
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return rest[1:i]
        i += 1
    return None


def parse_math(record: dict) -> Example:
    """One upstream MATH problem -> {problem, solution, level, type, final_answer}."""
    solution = get_field(record, "solution", str)
    final_answer = last_boxed(solution)
    if final_answer is None:
        raise RecordError("key 'solution' has no \\boxed{...} final answer")
    return {
        "problem": get_field(record, "problem", str),
        "solution": solution,
        "level": get_field(record, "level", str),
        "type": get_field(record, "type", str),
        "final_answer": final_answer,
    }


def parse_math500_line(record: dict) -> tuple[str, str]:
    """One line of PRM800K's MATH500 test.jsonl -> (unique_id, answer)."""
    return get_field(record, "unique_id", str), get_field(record, "answer", str)


class Math(ManualBuilder):
    """MATH from the upstream per-problem JSON tree in manual_dir (splits train, test[, math500])."""

    name = "rlr_math"
    DESCRIPTION = "Competition mathematics problems with LaTeX solutions (Hendrycks et al., 2021)."
    HOMEPAGE = "https://github.com/hendrycks/math"
    CITATION = (
        "Hendrycks et al. Measuring Mathematical Problem Solving With the MATH Dataset. NeurIPS 2021. "
        "MATH500: Lightman et al. Let's Verify Step by Step. ICLR 2024."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download MATH.tar from https://github.com/hendrycks/math (https://people.eecs.berkeley.edu/"
        "~hendrycks/MATH.tar) and extract it into the manual directory, giving "
        "<manual_dir>/MATH/{train,test}/<subject>/<n>.json. For the math500 split, also put "
        "https://github.com/openai/prm800k/blob/main/prm800k/math_splits/test.jsonl there as "
        f"<manual_dir>/{MATH500_JSONL} (or a list of unique_ids, one a line, as {MATH500_IDS})."
    )
    FEATURES = {"id": TEXT, "problem": TEXT, "solution": TEXT, "level": TEXT, "type": TEXT, "final_answer": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self._manual_path(dl_manager, "MATH")
        for split in SPLITS:
            split_dir = self._manual_path(dl_manager, f"MATH/{split}")
            if not any(split_dir.glob("*/*.json")):
                raise FileNotFoundError(f"{self.name}: no <subject>/<n>.json files under {split_dir}.\n"
                                        f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        generators = {split: self._generate_examples(root, split) for split in SPLITS}
        manual = self._manual_root(dl_manager)
        if (manual / MATH500_JSONL).exists() or (manual / MATH500_IDS).exists():
            generators["math500"] = self._generate_math500(root, manual)
        return generators

    def _generate_examples(self, root: pathlib.Path, split: str) -> Iterator[tuple[str, Example]]:
        for path in sorted((root / split).glob("*/*.json")):
            key = path.relative_to(root).as_posix()
            yield key, {"id": key, **parse_json_file(path, parse_math)}

    def _generate_math500(self, root: pathlib.Path, manual: pathlib.Path) -> Iterator[tuple[str, Example]]:
        """MATH500 records: the MATH test problem of each listed unique_id (answer from the jsonl if given)."""
        if (manual / MATH500_JSONL).exists():
            listed = ((f"{manual / MATH500_JSONL}, line {line}", uid, answer)
                      for line, (uid, answer) in parse_jsonl(manual / MATH500_JSONL, parse_math500_line))
        else:
            lines = (manual / MATH500_IDS).read_text(encoding="utf-8").splitlines()
            listed = ((f"{manual / MATH500_IDS}, line {n}", text.strip(), None)
                      for n, text in enumerate(lines, start=1) if text.strip())
        for where, uid, answer in listed:
            path = root / uid
            if not uid.startswith("test/") or not path.is_file():
                raise DataFormatError(f"{where}: unique_id {uid!r} is not a MATH test problem (no file {path})")
            example = {"id": uid, **parse_json_file(path, parse_math)}
            if answer is not None:
                example["final_answer"] = answer
            yield uid, example

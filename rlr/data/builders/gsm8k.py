"""GSM8K (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems").

Reads the upstream `train.jsonl` / `test.jsonl`, lines {"question": ..., "answer":
"...reasoning...\\n#### 72"}. Features: id ("train.jsonl:<line>"), question, answer (the
full upstream solution, calculator annotations "<<48/2=24>>" included) and final_answer
(the text after "####", commas removed: "1,234" -> "1234").
"""
from __future__ import annotations

import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from rlr.data.builders._base import TEXT, Example, ManualBuilder, jsonl_examples
from rlr.data.builders._io import RecordError, get_field

ANSWER_MARK = "####"
SPLITS = ("train", "test")


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after the last "####", stripped, commas removed.

    Raises RecordError when the solution has no "####" or nothing after it.
    """
    if ANSWER_MARK not in solution:
        raise RecordError(f"key 'answer' has no {ANSWER_MARK!r} final-answer line")
    answer = solution.rsplit(ANSWER_MARK, 1)[1].strip().replace(",", "")
    if not answer:
        raise RecordError(f"key 'answer' has nothing after {ANSWER_MARK!r}")
    return answer


def parse_gsm8k(record: dict) -> Example:
    """One upstream GSM8K record -> {question, answer, final_answer}."""
    answer = get_field(record, "answer", str)
    return {
        "question": get_field(record, "question", str),
        "answer": answer,
        "final_answer": gsm8k_final_answer(answer),
    }


class Gsm8k(ManualBuilder):
    """GSM8K from the upstream JSONL files in manual_dir (splits train, test)."""

    name = "rlr_gsm8k"
    DESCRIPTION = "Grade-school math word problems with worked solutions (Cobbe et al., 2021)."
    HOMEPAGE = "https://github.com/openai/grade-school-math"
    CITATION = "Cobbe et al. Training Verifiers to Solve Math Word Problems. arXiv:2110.14168, 2021."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download train.jsonl and test.jsonl from "
        "https://github.com/openai/grade-school-math/tree/master/grade_school_math/data "
        "into the manual directory (e.g. <manual_dir>/train.jsonl)."
    )
    FEATURES = {"id": TEXT, "question": TEXT, "answer": TEXT, "final_answer": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        paths = {split: self._manual_path(dl_manager, f"{split}.jsonl") for split in SPLITS}
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path: pathlib.Path) -> Iterator[tuple[str, Example]]:
        yield from jsonl_examples(path, parse_gsm8k, path.name)

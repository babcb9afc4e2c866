"""Process-labelled solution steps for PRM training: Math-Shepherd and PRM800K.

Both builders give the features a PRM trainer reads: id, prompt (the question),
steps (list of str), step_labels (int32 [K], 1 = step correct, 0 = step wrong) and
source; PRM800K adds final_answer and finish_reason.

- Math-Shepherd (Wang et al., 2024, "Math-Shepherd: Verify and Reinforce LLMs
  Step-by-step without Human Annotations"): `math-shepherd.jsonl`, lines {"input":
  question + " Step 1: ... ки\\nStep 2: ... ки", "label": the same text with each "ки"
  replaced by "+" or "-", "task": "GSM8K" | "MATH"}. Every tagged step is kept with its
  label (Monte-Carlo labels: a step after a "-" may be "+"); the "Step k:" prefixes are
  removed from the step texts.
- PRM800K (Lightman et al., 2023, "Let's Verify Step by Step"): `phase{1,2}_{train,test}.jsonl`.
  Per step, the chosen completion is followed (the first one when chosen_completion is
  null); rating 1 or 0 -> label 1, rating -1 -> label 0. The trajectory ends at its first
  wrong step (kept, label 0) or before its first unrated step (rating null, or no
  completions), whichever comes first.
"""
from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from rlr.data.builders._base import INT_LIST, TEXT, TEXT_LIST, Example, ManualBuilder, jsonl_examples
from rlr.data.builders._io import RecordError, get_field

STEP_TAG = "ки"
STEP_MARKS = {"+": 1, "-": 0}
FIRST_STEP = "Step 1:"
_STEP_PREFIX = re.compile(r"^Step \d+:\s*")
PRM800K_RATINGS = {1: 1, 0: 1, -1: 0}
PROCESS_FEATURES = {"id": TEXT, "prompt": TEXT, "steps": TEXT_LIST, "step_labels": INT_LIST, "source": TEXT}


def math_shepherd_labels(tagged: str, labelled: str) -> list[int]:
    """Step labels of a Math-Shepherd record: the "+"/"-" that `labelled` has where `tagged` has "ки".

    `labelled` must be `tagged` with each "ки" replaced by one mark; "+" -> 1, "-" -> 0.
    """
    segments = tagged.split(STEP_TAG)
    labels, pos = [], 0
    for k, segment in enumerate(segments[:-1], start=1):
        if not labelled.startswith(segment, pos):
            raise RecordError(f"key 'label' differs from key 'input' before step tag {k}")
        pos += len(segment)
        mark = labelled[pos:pos + 1]
        if mark not in STEP_MARKS:
            raise RecordError(f"key 'label' has {mark!r} at step tag {k}, expected '+' or '-'")
        labels.append(STEP_MARKS[mark])
        pos += 1
    if labelled[pos:] != segments[-1]:
        raise RecordError("key 'label' differs from key 'input' after the last step tag")
    return labels


def parse_math_shepherd(record: dict) -> Example:
    """One Math-Shepherd line -> {prompt, steps, step_labels, source}."""
    tagged = get_field(record, "input", str)
    labelled = get_field(record, "label", str)
    segments = tagged.split(STEP_TAG)
    if len(segments) < 2:
        raise RecordError(f"key 'input' has no step tag {STEP_TAG!r}")
    if segments[-1].strip():
        raise RecordError(f"key 'input' has text after the last step tag {STEP_TAG!r}")
    cut = segments[0].rfind(FIRST_STEP)
    if cut < 0:
        raise RecordError(f"key 'input' has no {FIRST_STEP!r} before the first step tag")
    steps = [segments[0][cut:], *segments[1:-1]]
    return {
        "prompt": segments[0][:cut].strip(),
        "steps": [_STEP_PREFIX.sub("", step.strip()).strip() for step in steps],
        "step_labels": np.asarray(math_shepherd_labels(tagged, labelled), np.int32),
        "source": get_field(record, "task", str),
    }


def prm800k_trajectory(steps: list) -> tuple[list[str], list[int]]:
    """Texts and labels along a PRM800K solution, by the rules in the module docstring."""
    texts, labels = [], []
    for k, step in enumerate(steps):
        where = f"label.steps[{k}]."
        completions = get_field(step, "completions", list, where)
        chosen = get_field(step, "chosen_completion", (int, type(None)), where)
        if not completions:
            break
        index = 0 if chosen is None else chosen
        if not 0 <= index < len(completions):
            raise RecordError(f"key '{where}chosen_completion': {index} is not an index of its "
                              f"{len(completions)} completions")
        completion = completions[index]
        where = f"{where}completions[{index}]."
        text = get_field(completion, "text", str, where)
        rating = get_field(completion, "rating", (int, type(None)), where)
        if rating is None:
            break
        if rating not in PRM800K_RATINGS:
            raise RecordError(f"key '{where}rating': expected -1, 0, 1 or null, got {rating}")
        texts.append(text)
        labels.append(PRM800K_RATINGS[rating])
        if rating == -1:
            break
    return texts, labels


def parse_prm800k(record: dict) -> Example:
    """One PRM800K line -> {prompt, steps, step_labels, final_answer, finish_reason}."""
    question = get_field(record, "question", dict)
    label = get_field(record, "label", dict)
    steps, labels = prm800k_trajectory(get_field(label, "steps", list, "label."))
    return {
        "prompt": get_field(question, "problem", str, "question."),
        "steps": steps,
        "step_labels": np.asarray(labels, np.int32),
        "final_answer": get_field(question, "ground_truth_answer", str, "question."),
        "finish_reason": get_field(label, "finish_reason", str, "label."),
    }


class MathShepherd(ManualBuilder):
    """Math-Shepherd step labels from `math-shepherd.jsonl` in manual_dir (split train)."""

    name = "rlr_math_shepherd"
    DESCRIPTION = "Automatically process-labelled GSM8K/MATH solutions (Wang et al., 2024)."
    HOMEPAGE = "https://huggingface.co/datasets/peiyi9979/Math-Shepherd"
    CITATION = ("Wang et al. Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human "
                "Annotations. ACL 2024.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download math-shepherd.jsonl from https://huggingface.co/datasets/peiyi9979/Math-Shepherd "
        "into the manual directory (<manual_dir>/math-shepherd.jsonl)."
    )
    FEATURES = PROCESS_FEATURES

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(self._manual_path(dl_manager, "math-shepherd.jsonl"))}

    def _generate_examples(self, path: pathlib.Path) -> Iterator[tuple[str, Example]]:
        yield from jsonl_examples(path, parse_math_shepherd, path.name)


class Prm800k(ManualBuilder):
    """PRM800K step labels from `phase{1,2}_{train,test}.jsonl` in manual_dir (splits train, test)."""

    name = "rlr_prm800k"
    DESCRIPTION = "Human step-level correctness labels on MATH solutions (Lightman et al., 2023)."
    HOMEPAGE = "https://github.com/openai/prm800k"
    CITATION = "Lightman et al. Let's Verify Step by Step. ICLR 2024."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download phase1_train.jsonl, phase1_test.jsonl, phase2_train.jsonl and phase2_test.jsonl "
        "from https://github.com/openai/prm800k/tree/main/prm800k/data (git lfs) into the manual "
        "directory (<manual_dir>/phase2_train.jsonl etc.)."
    )
    FEATURES = {**PROCESS_FEATURES, "final_answer": TEXT, "finish_reason": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        paths = {split: [self._manual_path(dl_manager, f"phase{phase}_{split}.jsonl") for phase in (1, 2)]
                 for split in ("train", "test")}
        return {split: self._generate_examples(split_paths) for split, split_paths in paths.items()}

    def _generate_examples(self, paths: list[pathlib.Path]) -> Iterator[tuple[str, Example]]:
        for path in paths:
            for key, example in jsonl_examples(path, parse_prm800k, path.name):
                yield key, {**example, "source": f"prm800k/{path.stem.split('_')[0]}"}

"""Generic preference pairs: any JSONL of {"prompt", "chosen", "rejected"} strings.

Each `<split>.jsonl` in manual_dir becomes a split named `<split>` (e.g. train.jsonl,
test.jsonl). Features: id ("<split>.jsonl:<line>"), prompt, chosen, rejected, where
chosen and rejected are the replies that follow the prompt (as in HH-RLHF's builder).
Other keys of a line are ignored; chat-format lists instead of strings are an error.
"""
from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from rlr.data.builders._base import TEXT, Example, ManualBuilder, jsonl_examples
from rlr.data.builders._io import get_field

_SPLIT_NAME = re.compile(r"^\w+$")


def parse_preference_pair(record: dict) -> Example:
    """One line -> {prompt, chosen, rejected}, each a str."""
    return {key: get_field(record, key, str) for key in ("prompt", "chosen", "rejected")}


class PreferencePairs(ManualBuilder):
    """Preference pairs from `<split>.jsonl` files in manual_dir, one split a file."""

    name = "rlr_preference_pairs"
    DESCRIPTION = "Prompt / chosen reply / rejected reply triples from local JSONL files."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one JSONL file a split into the manual directory (<manual_dir>/train.jsonl, "
        '<manual_dir>/test.jsonl, ...), each line {"prompt": str, "chosen": str, "rejected": str}.'
    )
    FEATURES = {"id": TEXT, "prompt": TEXT, "chosen": TEXT, "rejected": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual = self._manual_root(dl_manager)
        paths = sorted(manual.glob("*.jsonl"))
        if not paths:
            raise FileNotFoundError(f"{self.name}: expected <split>.jsonl files in {manual}, found none.\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        for path in paths:
            if not _SPLIT_NAME.match(path.stem):
                raise ValueError(f"{path}: a split file must be named <split>.jsonl with <split> made of "
                                 f"letters, digits and '_', got {path.stem!r}")
        return {path.stem: self._generate_examples(path) for path in paths}

    def _generate_examples(self, path: pathlib.Path) -> Iterator[tuple[str, Example]]:
        yield from jsonl_examples(path, parse_preference_pair, path.name)

"""Anthropic HH-RLHF (Bai et al., 2022, "Training a Helpful and Harmless Assistant with RLHF").

Reads the upstream `<subset>/{train,test}.jsonl.gz`, lines {"chosen": "\\n\\nHuman: ...
\\n\\nAssistant: ...", "rejected": ...}. Features: id ("helpful-base/train.jsonl.gz:<line>"),
subset, prompt (the dialogue up to and including the last "\\n\\nAssistant:"), chosen and
rejected (the final assistant replies, so prompt + chosen == chosen_full), chosen_full and
rejected_full (the upstream texts). This is how the DPO reference code (Rafailov et al.,
2023) splits prompt and reply. dialogue_messages turns a prompt into chat messages, one a
turn (as TRL's hh-rlhf conversion does), for a chat model's template.

A pair whose two dialogues differ before their last "\\n\\nAssistant:" is not a
preference between two replies to one prompt; such pairs (a few in the upstream files)
are skipped and a warning names the file, their count and their line numbers.
The red-team-attempts subset has another format and is not read.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from rlr.data.builders._base import TEXT, Example, ManualBuilder
from rlr.data.builders._io import RecordError, get_field, parse_jsonl

HUMAN_TURN, ASSISTANT_TURN = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")
_SHOWN_LINES = 10
log = logging.getLogger(__name__)


def split_last_reply(dialogue: str, key: str) -> tuple[str, str]:
    """Splits an HH dialogue into (prompt up to and including the last "\\n\\nAssistant:", final reply)."""
    cut = dialogue.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise RecordError(f"key {key!r} has no {ASSISTANT_TURN!r} turn")
    cut += len(ASSISTANT_TURN)
    return dialogue[:cut], dialogue[cut:]


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an HH prompt ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...
    \\n\\nAssistant:") as chat messages, [{"role": "user" | "assistant", "content": the turn's
    text, stripped}, ...]; the prompt's last, empty "Assistant:" turn is where the reply goes and
    is not a message. Raises ValueError when the prompt does not end in that turn or does not
    start with a Human turn."""
    parts = _TURN.split(prompt)  # [text before the first turn, speaker, text, speaker, text, ...]
    if parts[0].strip() or len(parts) < 5 or parts[1] != "Human" or parts[-2:] != ["Assistant", ""]:
        raise ValueError(f"{prompt[:80]!r}...: expected an HH-RLHF dialogue, {HUMAN_TURN!r} turns "
                         f"and {ASSISTANT_TURN!r} turns from a Human one to a last, empty Assistant one")
    return [{"role": _ROLES[speaker], "content": text.strip()}
            for speaker, text in zip(parts[1:-2:2], parts[2:-2:2])]


def parse_hh_pair(record: dict) -> Example | None:
    """One upstream HH-RLHF line -> {prompt, chosen, rejected, chosen_full, rejected_full}.

    Returns None when the two dialogues differ before their final assistant replies.
    """
    chosen_full = get_field(record, "chosen", str)
    rejected_full = get_field(record, "rejected", str)
    prompt, chosen = split_last_reply(chosen_full, "chosen")
    rejected_prompt, rejected = split_last_reply(rejected_full, "rejected")
    if rejected_prompt != prompt:
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "chosen_full": chosen_full, "rejected_full": rejected_full}


@dataclasses.dataclass
class HhRlhfConfig(tfds.core.BuilderConfig):
    """Which upstream subsets a config reads (directory names, e.g. "helpful-base")."""

    subsets: tuple[str, ...] = SUBSETS


def _subset_config(subset: str) -> HhRlhfConfig:
    return HhRlhfConfig(name=subset.replace("-", "_"), subsets=(subset,), description=f"The {subset} subset.")


class HhRlhf(ManualBuilder):
    """HH-RLHF preference pairs from the upstream gzipped JSONL files (splits train, test).

    Configs: "all" (default: the four subsets above, concatenated) or one subset
    ("harmless_base", "helpful_base", "helpful_online", "helpful_rejection_sampled").
    """

    name = "rlr_hh_rlhf"
    BUILDER_CONFIGS = [HhRlhfConfig(name="all", description="All four pairwise subsets."),
                       *map(_subset_config, SUBSETS)]
    DESCRIPTION = "Human preference pairs between assistant replies (Bai et al., 2022)."
    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    CITATION = ("Bai et al. Training a Helpful and Harmless Assistant with Reinforcement Learning "
                "from Human Feedback. arXiv:2204.05862, 2022.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the subset directories (harmless-base, helpful-base, helpful-online, "
        "helpful-rejection-sampled) with their train.jsonl.gz and test.jsonl.gz from "
        "https://github.com/anthropics/hh-rlhf into the manual directory, giving "
        "<manual_dir>/helpful-base/train.jsonl.gz etc. Keep the files gzipped."
    )
    FEATURES = {"id": TEXT, "subset": TEXT, "prompt": TEXT, "chosen": TEXT, "rejected": TEXT,
                "chosen_full": TEXT, "rejected_full": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        subsets = self.builder_config.subsets
        paths = {split: [self._manual_path(dl_manager, f"{subset}/{split}.jsonl.gz") for subset in subsets]
                 for split in SPLITS}
        return {split: self._generate_examples(split_paths) for split, split_paths in paths.items()}

    def _generate_examples(self, paths: list[pathlib.Path]) -> Iterator[tuple[str, Example]]:
        for path in paths:
            subset = path.parent.name
            skipped = []
            for line, example in parse_jsonl(path, parse_hh_pair):
                if example is None:
                    skipped.append(line)
                    continue
                key = f"{subset}/{path.name}:{line}"
                yield key, {"id": key, "subset": subset, **example}
            if skipped:
                log.warning("%s: skipped %d pairs whose chosen and rejected dialogues differ before the "
                            "final assistant reply (lines %s%s)", path, len(skipped),
                            ", ".join(map(str, skipped[:_SHOWN_LINES])),
                            ", ..." if len(skipped) > _SHOWN_LINES else "")

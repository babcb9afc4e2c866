"""Step segmentation: where the reasoning steps of a response end, in characters and tokens.

A process reward model (PRM) scores a solution step by step and is read at the token that
ends each step (Lightman et al. 2023, "Let's Verify Step by Step"; Wang et al. 2024,
Math-Shepherd, which ends every step with the tag "ки"). Gao et al. (2024), "On Designing
Effective RL Reward at Training Time for LLM Reasoning", place the shaped process reward
of step k at that same token. This module finds those tokens:

    text --split_steps--> character spans --step_end_tokens--> token indices
         --step_arrays--> padded positions [B, K] and step_mask [B, K]

Axes: B batch (responses), K steps. Plain Python / numpy: it runs on the host after
decoding, before the jitted reward shaping in ``rlr.rewards.shaping``.
"""
from bisect import bisect_left
from typing import Sequence

import numpy as np

Span = tuple[int, int]


def split_steps(text: str, delimiter: str = "\n", *, tag: str | None = None) -> list[Span]:
    """Character spans ``[start, end)`` of the reasoning steps of ``text``.

    A step ends right after a step-end marker, which belongs to the step it ends:
    ``"a\\nb\\n"`` -> ``[(0, 2), (2, 4)]``. The marker is ``delimiter`` (a newline by
    default) or, in step-tag mode, ``tag`` (e.g. Math-Shepherd's ``"ки"``, Wang et al.
    2024), which then replaces the delimiter: newlines are ordinary text and the PRM is
    read at the tag.

    - Empty steps (consecutive markers, whitespace-only text between markers or at either
      end) are skipped: ``"a\\n\\nb"`` -> ``[(0, 2), (3, 4)]``.
    - Text with no marker is one step; text after the last marker (a truncated response)
      is a final step that ends at the end of the text.
    - Empty or whitespace-only text has no steps.
    """
    marker = delimiter if tag is None else tag
    if not marker:
        name = "delimiter" if tag is None else "tag"
        raise ValueError(f"split_steps: {name} must be a non-empty string, got {marker!r}")
    spans: list[Span] = []
    start = 0
    while start < len(text):
        found = text.find(marker, start)
        end = len(text) if found < 0 else found + len(marker)
        body = text[start:end if found < 0 else found]
        if body.strip():
            spans.append((start, end))
        start = end
    return spans


def step_end_tokens(step_spans: Sequence[Span], token_char_ends: Sequence[int]) -> list[int]:
    """Index of the token in which each step ends.

    ``token_char_ends[i]`` is the end character offset (exclusive) of token i in the
    decoded response text (see the tokenizer's ``decode_with_offsets``); offsets are
    non-decreasing. A step ``[start, end)`` ends in the first token i with
    ``token_char_ends[i] >= end``, i.e. the token holding its last character. A token
    that holds the end of one step and the start of the next (e.g. ``".\\n\\nThe"``)
    ends the first. A truncated last step ends at the text end, hence at the last token.
    """
    ends = list(token_char_ends)
    if any(b < a for a, b in zip(ends, ends[1:])):
        raise ValueError("step_end_tokens: token_char_ends must be non-decreasing")
    positions = []
    for start, end in step_spans:
        index = bisect_left(ends, end)
        if index == len(ends):
            covered = ends[-1] if ends else 0
            raise ValueError(
                f"step_end_tokens: step span ({start}, {end}) ends after the last token "
                f"(token_char_ends cover {covered} characters); spans and offsets must "
                "come from the same decoded text"
            )
        positions.append(index)
    return positions


def step_arrays(
    step_end_token_lists: Sequence[Sequence[int]], max_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad per-response step-end token indices into arrays of K = ``max_steps`` steps.

    Returns ``(positions int32 [B, K], step_mask bool [B, K], n_dropped int32 [B])``;
    valid steps fill a prefix of each row, padding holds position 0 and mask False.

    A response with more than K steps keeps its first K-1 steps and its LAST step (the
    last step carries the answer, and the Delta transform of Gao et al. 2024 telescopes
    to the first step's reward, so both ends must stay); the middle steps are dropped and
    counted in ``n_dropped`` (log it: a high count means K is too small).
    """
    if max_steps < 1:
        raise ValueError(f"step_arrays: max_steps must be >= 1, got {max_steps}")
    batch = len(step_end_token_lists)
    positions = np.zeros((batch, max_steps), np.int32)
    step_mask = np.zeros((batch, max_steps), bool)
    n_dropped = np.zeros((batch,), np.int32)
    for row, steps in enumerate(step_end_token_lists):
        steps = list(steps)
        if len(steps) > max_steps:
            n_dropped[row] = len(steps) - max_steps
            steps = steps[: max_steps - 1] + steps[-1:]
        positions[row, : len(steps)] = steps
        step_mask[row, : len(steps)] = True
    return positions, step_mask, n_dropped

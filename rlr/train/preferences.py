"""Preference pairs: where they come from, how they are stored, and their arrays.

A Pair is a prompt as the model reads it (chat format applied) with a preferred and a
dispreferred response. Sources: corrupted synthetic solutions (corrupt_pairs), a label run's
correct-over-incorrect responses (labelled_pairs), a preference dataset of
rlr.data.datasets (dataset_pairs), and the best-over-worst samples of a policy
(best_worst_pairs, iterative DPO). Pairs are kept as JSONL (write_pairs / read_pairs) and
encoded to the host arrays of a dpo_step.PairBatch (encode_pairs), which pair_iterator and
eval_batches batch. DPO (rlr/train/dpo.py) trains on them; the Bradley-Terry reward model
(rlr/train/rm.py) encodes its pairs with encode_pairs.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import random
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np

from rlr.config import ConfigError
from rlr.data import synthetic
from rlr.data.batching import BatchIterator
from rlr.data.builders._io import get_field, parse_jsonl
from rlr.data.tokenizer import Tokenizer
from rlr.train import dpo_step, label, sequences, tasks

# The rlr.data.synthetic.corrupt modes that leave a wrong step (needless_step leaves none).
FLAWED_MODES = ("wrong_result", "wrong_operator", "wrong_operand", "skipped_step")


# ----------------------------------------------------------------------------- sources, files


class Pair(NamedTuple):
    """One preference: the prompt text as the model reads it (chat format applied), the
    preferred response and the dispreferred one."""

    prompt: str
    chosen: str
    rejected: str


def prompted_pair(tokenizer: Tokenizer, template: str, question: str, chosen: str,
                  rejected: str) -> Pair:
    """A dataset's preference as the models read it: sequences.prompt_text of the question
    (config.data.prompt_template), sequences.reply_text of both replies."""
    return Pair(sequences.prompt_text(tokenizer, question, template),
                sequences.reply_text(tokenizer, chosen), sequences.reply_text(tokenizer, rejected))


def corrupt_pairs(problems: Sequence[synthetic.Problem], tokenizer: Tokenizer, data: Any,
                  modes: Sequence[str], per_prompt: int, seed: int) -> list[Pair]:
    """Pairs of the synthetic task: each problem's reference solution over up to `per_prompt`
    flawed ones, one a corruption mode (modes tried in a random order; a mode that cannot
    corrupt a problem is skipped). Deterministic in `seed`."""
    d = tasks.as_data_config(data)
    rng = random.Random(seed)
    pairs = []
    for problem in problems:
        prompt = sequences.prompt_text(tokenizer, problem.question, d.prompt_template)
        made: list[str] = []
        for mode in rng.sample(list(modes), len(modes)):
            if len(made) == per_prompt:
                break
            try:
                text, _ = synthetic.corrupt(problem, mode, rng)
            except ValueError:  # no corruption of this mode fits the problem
                continue
            if text != problem.solution and text not in made:
                made.append(text)
                pairs.append(Pair(prompt, problem.solution, text))
    return pairs


def labelled_pairs(records: Sequence[label.Labelled], tokenizer: Tokenizer, data: Any,
                   per_prompt: int, seed: int) -> dict[str, list[Pair]]:
    """Pairs of labelled responses, grouped by question (in file order): for each question up to
    `per_prompt` of its (correct, incorrect) combinations, drawn at random without repeats;
    a question without both kinds gives none."""
    d = tasks.as_data_config(data)
    rng = random.Random(seed)
    grouped: dict[str, tuple[list[str], list[str]]] = {}
    for r in records:
        correct, wrong = grouped.setdefault(r.question, ([], []))
        texts = correct if r.correct else wrong
        if r.response not in texts:
            texts.append(r.response)
    out = {}
    for question, (correct, wrong) in grouped.items():
        combos = [(c, w) for c in correct for w in wrong]
        if not combos:
            continue
        prompt = sequences.prompt_text(tokenizer, question, d.prompt_template)
        out[question] = [Pair(prompt, c, w) for c, w in rng.sample(combos, min(per_prompt, len(combos)))]
    return out


def hold_out(grouped: dict[str, list[Pair]], num_eval: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs: whole questions, taken in a seeded random order, go to the
    held-out side until it has at least `num_eval` pairs (so no held-out question is trained on)."""
    order = list(grouped)
    random.Random(seed).shuffle(order)
    train, held = [], []
    for question in order:
        (held if len(held) < num_eval else train).extend(grouped[question])
    return train, held


def dataset_pairs(name: str, split: str, tokenizer: Tokenizer, data: Any, manual_dir: str,
                  limit: Optional[int] = None) -> list[Pair]:
    """The pairs of a split of a preference dataset read with rlr.data.datasets.load_split
    (prepared under config.data.data_dir from the upstream files in `manual_dir`, or
    config.data.manual_dir when it is ""; builder config config.data.dataset_config): the
    record's prompt and replies as prompted_pair gives them (as the Bradley-Terry RM and PPO
    read the same record). `limit`: that many, spread evenly over the split (rlr.data.datasets.spread_indices: every HH
    subset has its share)."""
    from rlr.data.datasets import load_split, spread_indices

    d = tasks.as_data_config(data)
    if not d.data_dir:
        raise ConfigError(f"config.dpo.pairs={name!r}: set config.data.data_dir (where load_split "
                          f"prepares the dataset)")
    source = load_split(name, split, d.data_dir, manual_dir or d.manual_dir or None,
                        config=d.dataset_config or None)
    indices = spread_indices(len(source), limit)
    pairs = []
    for start in range(0, len(indices), 1024):
        records = source.__getitems__(indices[start:start + 1024])
        pairs.extend(prompted_pair(tokenizer, d.prompt_template, r["prompt"], r["chosen"],
                                   r["rejected"]) for r in records)
    return pairs


def best_worst_pairs(prompts: Sequence[str], responses: Sequence[Sequence[str]],
                     scores: Sequence[Sequence[float]], seed: Any,
                     references: Optional[Sequence[str]] = None) -> list[Pair]:
    """One pair a prompt: a highest-scored response over a lowest-scored one (ties broken at
    random by numpy's default_rng(seed)); no pair when all its responses score alike (the
    rejection-sampling pairs of iterative DPO, Xiong et al. 2024). With `references` (a correct
    solution a prompt, responses scored 1 correct / 0 not): a prompt whose responses all score
    <= 0 pairs its reference over a random response (SPIN's pairs, Chen et al. 2024)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, (prompt, texts, row) in enumerate(zip(prompts, responses, scores)):
        row = np.asarray(row, np.float64)
        if references is not None and row.max() <= 0:
            pairs.append(Pair(prompt, references[i], texts[rng.integers(len(texts))]))
            continue
        if row.max() <= row.min():
            continue
        best = rng.choice(np.flatnonzero(row == row.max()))
        worst = rng.choice(np.flatnonzero(row == row.min()))
        pairs.append(Pair(prompt, texts[best], texts[worst]))
    return pairs


def write_pairs(path: str, pairs: Sequence[Pair]) -> None:
    """Pairs to a JSONL file, one {"prompt", "chosen", "rejected"} a line (process 0 writes)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        for p in pairs:
            f.write(json.dumps(p._asdict()) + "\n")
    os.replace(path + ".tmp", path)


def read_pairs(path: str) -> list[Pair]:
    """The pairs of a write_pairs file (errors name the file and line)."""
    parse = lambda r: Pair(*(get_field(r, k, str) for k in Pair._fields))  # noqa: E731
    return [pair for _, pair in parse_jsonl(pathlib.Path(path), parse)]


# ----------------------------------------------------------------------------- arrays


PairRows = dict[str, np.ndarray]  # the PairBatch fields as host arrays, N pairs


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[Pair], data: Any, max_prompt_len: int = 0,
                 prompt_length: Optional[int] = None, response_length: Optional[int] = None,
                 max_prompt_key: str = "max_prompt_len") -> PairRows:
    """Host arrays of pairs (the PairBatch fields): prompts left-padded (sequences.encode_prompts, to
    `prompt_length` or the bucketed longest; with max_prompt_len > 0 cut to their last
    max_prompt_len tokens, sequences.keep_last_tokens, whose log names `max_prompt_key`), chosen
    and rejected responses right-padded to one length (sequences.encode_responses, eos added, cut
    to config.data.max_response_len), pair_mask True."""
    d = tasks.as_data_config(data)
    if not pairs:
        raise ValueError("encode_pairs: no pairs")
    prompt_tokens, prompt_mask = sequences.keep_last_tokens(
        *sequences.encode_prompts(tokenizer, [p.prompt for p in pairs], d.prompt_bucket),
        max_prompt_len, max_prompt_key)
    if prompt_length is not None:
        extra = prompt_length - prompt_tokens.shape[1]
        if extra < 0:
            raise ValueError(f"encode_pairs: prompts of {prompt_tokens.shape[1]} tokens do not fit "
                             f"prompt_length={prompt_length}")
        prompt_tokens = np.pad(prompt_tokens, ((0, 0), (extra, 0)), constant_values=tokenizer.pad_id)
        prompt_mask = np.pad(prompt_mask, ((0, 0), (extra, 0)))
    tokens, mask = sequences.encode_responses(tokenizer, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                              d.response_bucket, max_len=d.max_response_len,
                                              length=response_length)
    n = len(pairs)
    return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
            "chosen_tokens": tokens[:n], "chosen_mask": mask[:n],
            "rejected_tokens": tokens[n:], "rejected_mask": mask[n:],
            "pair_mask": np.ones((n,), bool)}


def _pair_batch(rows: PairRows, indices: Any) -> dpo_step.PairBatch:
    index = np.asarray(indices)
    return dpo_step.PairBatch(**{k: v[index] for k, v in rows.items()})


def pair_iterator(rows: PairRows, global_batch: int, seed: int,
                  state: Optional[dict] = None) -> BatchIterator:
    """This host's shuffled PairBatches of `rows`, epoch after epoch (from a saved position
    `state`). Fewer pairs than a batch are repeated to fill one."""
    n = len(rows["pair_mask"])
    indices = np.arange(max(n, global_batch)) % n
    collate = functools.partial(_pair_batch, rows)
    if state:
        return BatchIterator.from_state(state, indices, collate=collate)
    return BatchIterator(indices, global_batch // jax.process_count(), jax.process_index(),
                         jax.process_count(), seed=seed, collate=collate)


def eval_batches(rows: PairRows, batch_size: int) -> list[dpo_step.PairBatch]:
    """All pairs in PairBatches of batch_size; the last filled with copies whose pair_mask is off."""
    n = len(rows["pair_mask"])
    batches = []
    for start in range(0, n, batch_size):
        slots = np.arange(start, start + batch_size)
        batch = _pair_batch(rows, np.minimum(slots, n - 1))
        batches.append(batch._replace(pair_mask=batch.pair_mask & (slots < n)))
    return batches

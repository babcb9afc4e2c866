"""Host-side batching in numpy: padding to bucketed lengths, prompt + response inputs,
sequence packing for SFT, and a per-host, resumable batch iterator.

Every batch carries explicit masks; the pad id is only filler. Lengths are rounded up to
buckets so that a new batch reuses an already compiled shape.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Buckets = int | Sequence[int] | None


def bucket_length(n: int, buckets: Buckets) -> int:
    """The padded length of a batch whose longest sequence has n tokens.

    buckets: None -> n; an int m -> n rounded up to a multiple of m (at least m); a
    sorted list of lengths -> the smallest one >= n (e.g. powers of two). An n above
    the largest bucket is an error.
    """
    if buckets is None:
        return n
    if isinstance(buckets, (int, np.integer)):
        if buckets < 1:
            raise ValueError(f"bucket_length: buckets={buckets}, expected a multiple >= 1")
        return max(1, -(-n // buckets)) * int(buckets)
    buckets = sorted(int(b) for b in buckets)
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"bucket_length: length {n} is above the largest bucket {buckets[-1]} (buckets={buckets})")
    return buckets[i]


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None, bucket: Buckets, left: bool, where: str):
    longest = max((len(s) for s in seqs), default=0)
    if length is None:
        length = bucket_length(longest, bucket)
    elif longest > length:
        i = next(i for i, s in enumerate(seqs) if len(s) > length)
        raise ValueError(f"{where}: sequence {i} has {len(seqs[i])} tokens, more than length={length}")
    tokens = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        cols = slice(length - len(s), length) if left else slice(0, len(s))
        tokens[i, cols] = s
        mask[i, cols] = True
    return tokens, mask


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None, bucket: Buckets = None):
    """Pads sequences on the left, for generation prompts (every row ends at T-1).

    Returns (tokens int32 [B, T], mask bool [B, T]); T = length, or the longest sequence
    rounded up by bucket_length(·, bucket). A sequence longer than length is an error.
    """
    return _pad(seqs, pad_id, length, bucket, left=True, where="left_pad")


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None, bucket: Buckets = None):
    """Pads sequences on the right, for responses and training rows (every row starts at 0).

    Returns (tokens int32 [B, T], mask bool [B, T]), T as in left_pad.
    """
    return _pad(seqs, pad_id, length, bucket, left=False, where="right_pad")


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids [B, T] = (number of valid tokens up to and including t) - 1 on valid
    tokens, 0 on padding; so left padding does not shift rotary position embeddings."""
    mask = np.asarray(mask).astype(bool)
    return np.where(mask, np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)


def concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask) -> dict[str, np.ndarray]:
    """Model inputs for scoring responses: the left-padded prompt [B, Tp] followed by the
    right-padded response [B, Tr].

    Returns a dict of [B, Tp + Tr] arrays: tokens (int32), positions (int32, see
    positions_from_mask), attention_mask (bool, valid prompt or response token) and
    loss_mask (bool, valid response token: the tokens whose log-probabilities the policy
    is trained on; the token at t is predicted from position t-1).
    """
    prompt_tokens, response_tokens = np.asarray(prompt_tokens), np.asarray(response_tokens)
    prompt_mask, response_mask = np.asarray(prompt_mask).astype(bool), np.asarray(response_mask).astype(bool)
    if prompt_tokens.shape != prompt_mask.shape or response_tokens.shape != response_mask.shape:
        raise ValueError(
            f"concat_prompt_response: tokens and masks differ in shape: prompt {prompt_tokens.shape} vs "
            f"{prompt_mask.shape}, response {response_tokens.shape} vs {response_mask.shape}"
        )
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[0] != response_tokens.shape[0]:
        raise ValueError(
            f"concat_prompt_response: expected [B, Tp] prompts and [B, Tr] responses, got "
            f"{prompt_tokens.shape} and {response_tokens.shape}"
        )
    attention_mask = np.concatenate([prompt_mask, response_mask], axis=1)
    return {
        "tokens": np.concatenate([prompt_tokens, response_tokens], axis=1).astype(np.int32),
        "positions": positions_from_mask(attention_mask),
        "attention_mask": attention_mask,
        "loss_mask": np.concatenate([np.zeros_like(prompt_mask), response_mask], axis=1),
    }


def pack_sequences(examples: Sequence[Mapping[str, Sequence]], seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Packs examples into rows of seq_len tokens for SFT (first fit, in order).

    examples: dicts with "tokens" and "loss_mask" (1 on the tokens to learn, e.g. the
    response) of equal lengths <= seq_len. Each example goes into the first row with room
    left. Returns a dict of [R, seq_len] arrays: tokens (int32), segment_ids (int32,
    1, 2, ... for the examples of a row, 0 on padding; attention stays within a segment),
    positions (int32, restarting at 0 in every segment), attention_mask (bool,
    segment_ids > 0) and loss_mask (bool; never on the first token of a segment, which
    nothing in its segment predicts).
    """
    rows: list[list[int]] = []  # example indices of each row
    room: list[int] = []
    for i, example in enumerate(examples):
        n = len(example["tokens"])
        if n != len(example["loss_mask"]):
            raise ValueError(f"pack_sequences: example {i} has {n} tokens but {len(example['loss_mask'])} loss_mask entries")
        if not 0 < n <= seq_len:
            raise ValueError(f"pack_sequences: example {i} has {n} tokens, expected 1 to seq_len={seq_len}")
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(seq_len)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    shape = (len(rows), seq_len)
    out = {
        "tokens": np.full(shape, pad_id, np.int32),
        "segment_ids": np.zeros(shape, np.int32),
        "positions": np.zeros(shape, np.int32),
        "loss_mask": np.zeros(shape, bool),
    }
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members, start=1):
            tokens, loss_mask = examples[i]["tokens"], np.asarray(examples[i]["loss_mask"]).astype(bool)
            cols = slice(start, start + len(tokens))
            out["tokens"][r, cols] = tokens
            out["segment_ids"][r, cols] = segment
            out["positions"][r, cols] = np.arange(len(tokens))
            out["loss_mask"][r, cols] = loss_mask
            out["loss_mask"][r, start] = False
            start += len(tokens)
    out["attention_mask"] = out["segment_ids"] > 0
    return out


# ----------------------------------------------------------------------------- hosts


def host_shard(
    indices: int | Sequence[int] | np.ndarray,
    process_index: int,
    process_count: int,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    split: str = "strided",
) -> np.ndarray:
    """The example indices this host reads in an epoch.

    Shuffles indices (or range(n) for an int) with a permutation drawn from
    numpy's default_rng([seed, epoch]) -- the same on every host -- then gives host p
    either the strided slice perm[p::P] ("strided") or the p-th of P contiguous,
    near-equal chunks ("contiguous"). The P hosts' shards are disjoint and together cover
    the indices.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"host_shard: process_index={process_index}, expected 0 <= index < process_count={process_count}")
    if split not in ("strided", "contiguous"):
        raise ValueError(f"host_shard: split={split!r}, expected 'strided' or 'contiguous'")
    indices = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices)
    if shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    if split == "strided":
        return indices[process_index::process_count]
    return np.array_split(indices, process_count)[process_index]


class BatchIterator(Iterator):
    """Yields this host's batches of a dataset, epoch after epoch, from a resumable position.

    data: any sequence (len and integer indexing), e.g. a list or an array_record source.
    Each epoch reshuffles (host_shard with seed and epoch) and yields batches of
    batch_size examples (per host), collated by collate (default: the list of examples).
    Every host yields the same number of batches an epoch, (len(data) // process_count)
    // batch_size, so multi-host steps stay in step; the remainder is dropped.
    state_dict() is the position of the next batch, (epoch, index), plus the settings
    it is only valid for; BatchIterator.from_state(state, data) continues from there.
    """

    def __init__(
        self,
        data: Sequence,
        batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        collate: Callable[[list], Any] | None = None,
        epoch: int = 0,
        index: int = 0,
    ):
        self.data, self.batch_size, self.seed, self.shuffle = data, batch_size, seed, shuffle
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self.collate = collate if collate is not None else list
        self.batches_per_epoch = (len(data) // process_count) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"BatchIterator: {len(data)} examples over {process_count} hosts give no full batch of "
                f"batch_size={batch_size}"
            )
        self.epoch, self.index = epoch, index
        self._shard_epoch, self._shard = None, None

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from, and the settings that position is valid for."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "num_examples": len(self.data),
            "batch_size": self.batch_size,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        data: Sequence,
        num_epochs: int | None = None,
        collate: Callable[[list], Any] | None = None,
    ) -> "BatchIterator":
        """An iterator over data that continues where the one that saved state stopped."""
        if state.get("num_examples") != len(data):
            raise ValueError(
                f"BatchIterator.from_state: state['num_examples']={state.get('num_examples')} but the "
                f"data has {len(data)} examples; the saved position is only valid for the same data"
            )
        keys = ("batch_size", "process_index", "process_count", "seed", "shuffle", "epoch", "index")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"BatchIterator.from_state: state lacks keys {missing}")
        return cls(data, num_epochs=num_epochs, collate=collate, **{k: state[k] for k in keys})

    def __next__(self):
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        if self._shard_epoch != self.epoch:
            self._shard = host_shard(
                len(self.data), self.process_index, self.process_count, self.seed, self.epoch, self.shuffle
            )
            self._shard_epoch = self.epoch
        rows = self._shard[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return self.collate([self.data[int(i)] for i in rows])

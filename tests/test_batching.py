"""Padding, prompt + response inputs, packing, host sharding, resumable iteration."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlr.data.batching import (
    BatchIterator,
    bucket_length,
    concat_prompt_response,
    host_shard,
    left_pad,
    pack_sequences,
    positions_from_mask,
    right_pad,
)


def test_bucket_length():
    assert bucket_length(5, None) == 5
    assert bucket_length(5, 64) == 64
    assert bucket_length(64, 64) == 64
    assert bucket_length(65, 64) == 128
    assert bucket_length(0, 8) == 8
    assert bucket_length(9, [32, 8, 16]) == 16
    assert bucket_length(16, [8, 16, 32]) == 16
    with pytest.raises(ValueError, match="above the largest bucket 32"):
        bucket_length(33, [8, 16, 32])


def test_left_and_right_pad_hand_checked():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0, bucket=4)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert tokens.dtype == np.int32 and mask.dtype == bool
    tokens, mask = right_pad([[5, 6, 7], [8]], pad_id=-1, length=5)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, -1, -1], [8, -1, -1, -1, -1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="sequence 0 has 3 tokens, more than length=2"):
        right_pad([[1, 2, 3]], pad_id=0, length=2)


def test_concat_prompt_response_hand_checked():
    prompt_tokens, prompt_mask = left_pad([[11, 12, 13], [21]], pad_id=0)
    response_tokens, response_mask = right_pad([[14, 15], [22, 23, 24]], pad_id=0)
    inputs = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask)
    np.testing.assert_array_equal(inputs["tokens"], [[11, 12, 13, 14, 15, 0], [0, 0, 21, 22, 23, 24]])
    np.testing.assert_array_equal(inputs["positions"], [[0, 1, 2, 3, 4, 0], [0, 0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(inputs["attention_mask"], [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(inputs["loss_mask"], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="differ in shape"):
        concat_prompt_response(prompt_tokens, prompt_mask[:, :2], response_tokens, response_mask)


def test_positions_from_mask_float_mask():
    np.testing.assert_array_equal(positions_from_mask(np.array([[0.0, 1.0, 1.0, 0.0]])), [[0, 0, 1, 0]])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=25), st.integers(9, 16))
def test_packing_keeps_every_token(lengths, seq_len):
    rng = np.random.default_rng(len(lengths))
    examples = [
        {"tokens": list(rng.integers(1, 100, n)), "loss_mask": list(rng.integers(0, 2, n))} for n in lengths
    ]
    packed = pack_sequences(examples, seq_len)
    assert packed["tokens"].shape[1] == seq_len
    assert packed["tokens"].shape[0] <= len(examples)
    recovered = []
    for r in range(packed["tokens"].shape[0]):
        seg = packed["segment_ids"][r]
        # segments are contiguous runs 1, 2, ... followed by padding: none crosses another
        ids = seg[seg > 0]
        assert list(ids) == sorted(ids) and set(ids) == set(range(1, ids.max() + 1))
        assert (seg[len(ids):] == 0).all()
        for s in range(1, ids.max() + 1):
            cols = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(packed["positions"][r, cols], np.arange(len(cols)))
            recovered.append((packed["tokens"][r, cols].tolist(), packed["loss_mask"][r, cols].tolist()))
        assert (packed["tokens"][r, seg == 0] == 0).all() and not packed["loss_mask"][r, seg == 0].any()
    np.testing.assert_array_equal(packed["attention_mask"], packed["segment_ids"] > 0)
    expected = [(e["tokens"], [False] + [bool(m) for m in e["loss_mask"][1:]]) for e in examples]
    assert sorted(recovered) == sorted([(list(map(int, t)), m) for t, m in expected])


def test_packing_hand_checked():
    examples = [
        {"tokens": [1, 2, 3], "loss_mask": [0, 1, 1]},
        {"tokens": [4, 5, 6, 7], "loss_mask": [1, 1, 1, 1]},
        {"tokens": [8, 9], "loss_mask": [0, 1]},
    ]
    packed = pack_sequences(examples, seq_len=5, pad_id=-1)
    np.testing.assert_array_equal(packed["tokens"], [[1, 2, 3, 8, 9], [4, 5, 6, 7, -1]])
    np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    np.testing.assert_array_equal(packed["loss_mask"], [[0, 1, 1, 0, 1], [0, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="example 0 has 6 tokens"):
        pack_sequences([{"tokens": [1] * 6, "loss_mask": [1] * 6}], seq_len=5)


@pytest.mark.parametrize("split", ["strided", "contiguous"])
@pytest.mark.parametrize("n", [10, 11])
def test_two_hosts_disjoint_cover(split, n):
    a = host_shard(n, 0, 2, seed=3, epoch=1, split=split)
    b = host_shard(n, 1, 2, seed=3, epoch=1, split=split)
    assert not set(a) & set(b)
    assert sorted(np.concatenate([a, b])) == list(range(n))
    assert abs(len(a) - len(b)) <= 1
    np.testing.assert_array_equal(a, host_shard(n, 0, 2, seed=3, epoch=1, split=split))
    assert not np.array_equal(a, host_shard(n, 0, 2, seed=3, epoch=2, split=split))
    np.testing.assert_array_equal(host_shard(6, 1, 3, seed=0, shuffle=False), [1, 4])
    np.testing.assert_array_equal(host_shard(6, 1, 3, seed=0, shuffle=False, split="contiguous"), [2, 3])
    with pytest.raises(ValueError, match="process_index=2"):
        host_shard(n, 2, 2, seed=0)


def test_iterator_hosts_cover_an_epoch():
    data = list(range(23))
    hosts = [BatchIterator(data, batch_size=3, process_index=p, process_count=2, seed=1, num_epochs=1) for p in (0, 1)]
    streams = [[x for batch in it for x in batch] for it in hosts]
    assert len(streams[0]) == len(streams[1]) == 3 * 3  # (23 // 2) // 3 batches of 3 on each host
    assert not set(streams[0]) & set(streams[1])


def test_iterator_resume_equals_uninterrupted():
    data = [{"x": i} for i in range(20)]

    def collate(examples):
        return np.array([e["x"] for e in examples])

    def make(**kwargs):
        return BatchIterator(data, batch_size=4, process_index=1, process_count=2, seed=9, collate=collate, **kwargs)

    uninterrupted = [b.tolist() for b in make(num_epochs=3)]
    assert len(uninterrupted) == 3 * 2
    assert uninterrupted[:2] != uninterrupted[2:4]  # every epoch reshuffles
    for stop in range(len(uninterrupted)):
        first = make(num_epochs=3)
        head = [next(first).tolist() for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))  # through a JSON checkpoint
        rest = [b.tolist() for b in BatchIterator.from_state(state, data, num_epochs=3, collate=collate)]
        assert head + rest == uninterrupted
    with pytest.raises(ValueError, match="num_examples"):
        BatchIterator.from_state(make().state_dict(), data[:10])
    with pytest.raises(ValueError, match="no full batch"):
        BatchIterator(data[:5], batch_size=4, process_count=2)

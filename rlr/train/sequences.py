"""Prompt + response sequences: text encoded to left-padded prompts and right-padded responses,
the model inputs of both (SequenceBatch), and what a model reads off them: response log-probs
and entropies (policy), scores (reward model, critic), ORM verdicts and PRM step scores.

Axes: B batch, P prompt slots (left-padded), R response slots (right-padded), K steps.

A response token y_r sits at column P + r of the concatenated [B, P + R] sequence and is
predicted from column P + r - 1; prompts are left-padded, so column P - 1 always holds the
last prompt token and the response's log-probs come from hidden states [P - 1, P + R - 1).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlr.data.batching import left_pad, right_pad
from rlr.data.tokenizer import Tokenizer
from rlr.losses.reward_model import gather_at, last_token_scores
from rlr.models import Transformer, lm_head_weight, token_logprobs
from rlr.rewards.segment import split_steps, step_arrays, step_end_tokens

log = logging.getLogger(__name__)


DIALOGUE_TEMPLATE = "{dialogue}"  # config.data.prompt_template of HH-RLHF prompts kept as turns


def prompt_text(tokenizer: Tokenizer, question: str, template: str = "{question}") -> str:
    """The prompt of a question in the tokenizer's chat format: the user message
    template.format(question=...) (plain: the message and a newline, i.e. Problem.prompt); or,
    with template DIALOGUE_TEMPLATE, the question is an HH-RLHF dialogue and each of its turns
    one message (rlr.data.builders.hh_rlhf.dialogue_messages; plain: the dialogue verbatim,
    ending in "Assistant:", as the DPO reference code reads it)."""
    if template != DIALOGUE_TEMPLATE:
        message = template.replace("{question}", question)
        return tokenizer.apply_chat_template([{"role": "user", "content": message}])
    from rlr.data.builders.hh_rlhf import dialogue_messages

    messages = dialogue_messages(question)  # checks the format in every chat format
    return question if tokenizer.chat_format == "plain" else tokenizer.apply_chat_template(messages)


def reply_text(tokenizer: Tokenizer, reply: str) -> str:
    """A dataset's reply as the policy would write it after prompt_text's prompt: in a chat
    format the reply is the content of the assistant message the prompt opens, so it starts
    without whitespace (HH-RLHF's replies keep the space that follows "Assistant:", which a chat
    model does not write); plain: verbatim."""
    return reply if tokenizer.chat_format == "plain" else reply.lstrip()


def encode_prompts(tokenizer: Tokenizer, texts: Sequence[str], bucket: int,
                   length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids and mask, int32 / bool [B, P]: bos_id first (when the tokenizer
    has one and the text does not already start with it), P = the longest prompt rounded up
    to a multiple of `bucket` (or `length`)."""
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text)
        if tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
            ids = [tokenizer.bos_id] + ids
        seqs.append(ids)
    return left_pad(seqs, tokenizer.pad_id, length=length, bucket=bucket)


def keep_last_tokens(tokens: np.ndarray, mask: np.ndarray, max_len: int,
                     key: str) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [B, P] cut to their last `max_len` slots when 0 < max_len < P (a long
    prompt keeps its end, next to the response); logs how many prompts lose tokens, naming the
    config `key` that set max_len."""
    if not max_len or tokens.shape[1] <= max_len:
        return tokens, mask
    cut = int(np.sum(mask[:, :-max_len].any(axis=1)))
    if cut:
        log.warning("%d of %d prompts are longer than %s=%d tokens; they keep their last %d",
                    cut, len(tokens), key, max_len, max_len)
    return tokens[:, -max_len:], mask[:, -max_len:]


def encode_responses(tokenizer: Tokenizer, texts: Sequence[str], bucket: int,
                     max_len: Optional[int] = None, add_eos: bool = True,
                     length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded response ids and mask, int32 / bool [B, R]: each text's ids then eos_id
    (add_eos), cut to `max_len` tokens (None: never), R = the longest rounded up to a multiple
    of `bucket` (or `length`)."""
    seqs = []
    for text in texts:
        ids = tokenizer.encode(text) + ([tokenizer.eos_id] if add_eos else [])
        seqs.append(ids if max_len is None else ids[:max_len])
    return right_pad(seqs, tokenizer.pad_id, length=length, bucket=bucket)


def decode_responses(tokenizer: Tokenizer, tokens: Any, mask: Any) -> list[str]:
    """The text of each row's valid response tokens (host numpy; eos / pad decode to '' for the
    char tokenizer, to their text for others: they are dropped when not in the mask)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    eos = tokenizer.eos_id
    return [tokenizer.decode([int(t) for t in row[m] if int(t) != eos]) for row, m in zip(tokens, mask)]


class SequenceBatch(NamedTuple):
    """A prompt + response batch as the model reads it; a pytree (passes through jit).

    tokens, positions [B, P+R] int32; attention_mask [B, P+R] bool (valid prompt or response
    token); response_tokens [B, R] int32; response_mask [B, R] bool. P (static) =
    tokens.shape[1] - response_tokens.shape[1].
    """

    tokens: jax.Array
    positions: jax.Array
    attention_mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[1] - self.response_tokens.shape[1]


def map_row_slices(fn: Callable[[Any], Any], rows: Any, num_slices: int) -> Any:
    """fn(rows) computed on `num_slices` slices of the rows in turn (lax.map), the outputs joined
    back in row order: the peak memory of one slice, for a row-wise fn (every output row depends
    on its input row only). Slice k holds rows k, k + num_slices, k + 2 num_slices, ..., so on a
    mesh whose devices hold blocks of rows each slice keeps rows on every device (no transfer).
    Every leaf of `rows` and of the outputs has the row axis first; it must divide by num_slices."""
    if num_slices == 1:
        return fn(rows)

    def split(x):  # [N, ...] -> [num_slices, N / num_slices, ...], slice k = rows k::num_slices
        return x.reshape(x.shape[0] // num_slices, num_slices, *x.shape[1:]).swapaxes(0, 1)

    def join(y):  # the inverse of split
        return y.swapaxes(0, 1).reshape(-1, *y.shape[2:])

    return jax.tree.map(join, jax.lax.map(fn, jax.tree.map(split, rows)))


def sequence_inputs(prompt_tokens, prompt_mask, response_tokens, response_mask) -> SequenceBatch:
    """The SequenceBatch of left-padded prompts [B, P] and right-padded responses [B, R]
    (jnp; usable inside jit): tokens = [prompt, response], attention_mask = [prompt_mask,
    response_mask], positions = cumsum(attention_mask) - 1 on valid tokens (0 on padding)."""
    chex.assert_rank([prompt_tokens, prompt_mask, response_tokens, response_mask], 2)
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    chex.assert_equal_shape([response_tokens, response_mask])
    prompt_mask, response_mask = prompt_mask.astype(bool), response_mask.astype(bool)
    attention_mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    positions = jnp.where(attention_mask, jnp.cumsum(attention_mask, axis=1) - 1, 0).astype(jnp.int32)
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1).astype(jnp.int32)
    return SequenceBatch(tokens, positions, attention_mask, response_tokens.astype(jnp.int32),
                         response_mask)


def response_logprobs_and_entropy(model: Transformer, params: Any, batch: SequenceBatch,
                                  chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
    """(log pi(y_r | x, y_<r), entropy of pi(. | x, y_<r)), float32 [B, R] each, for every
    response slot (padding slots included: mask them). The vocabulary projection runs on the
    R positions that predict the response only, in chunks (never [B, T, V] logits)."""
    hidden, _ = model.apply({"params": params}, batch.tokens, batch.positions, batch.attention_mask)
    p, r = batch.prompt_length, batch.response_tokens.shape[1]
    return token_logprobs(hidden[:, p - 1:p + r - 1], lm_head_weight(params, model.config),
                          batch.response_tokens, chunk_size)


def response_logprobs(model: Transformer, params: Any, batch: SequenceBatch,
                      chunk_size: int = 128) -> jax.Array:
    """log pi(y_r | x, y_<r) float32 [B, R] (see response_logprobs_and_entropy)."""
    return response_logprobs_and_entropy(model, params, batch, chunk_size)[0]


def score_sequences(model: Transformer, params: Any, batch: SequenceBatch) -> jax.Array:
    """The score head's output at every token, float32 [B, P+R] (a "score" Transformer: reward
    model or critic)."""
    scores, _ = model.apply({"params": params}, batch.tokens, batch.positions, batch.attention_mask)
    return scores.astype(jnp.float32)


def response_scores(model: Transformer, params: Any, batch: SequenceBatch) -> jax.Array:
    """Scores at the response tokens, float32 [B, R]: entry r is read at token y_r (having
    seen x and y_<=r)."""
    return score_sequences(model, params, batch)[:, batch.prompt_length:]


def outcome_scores(scores: jax.Array, response_mask: jax.Array) -> jax.Array:
    """ORM verdicts [B]: the response score [B, R] at each row's last valid token (its eos, or
    the last token of a truncated response); 0 for an empty response."""
    return last_token_scores(scores, response_mask)


def step_scores(scores: jax.Array, step_positions: jax.Array) -> jax.Array:
    """PRM step scores [B, K]: the response score [B, R] at each step's end token
    (step_positions [B, K], response-relative, from step_end_positions; mask the padding)."""
    return gather_at(scores, step_positions)


def step_end_positions(tokenizer: Tokenizer, response_tokens: Any, response_mask: Any,
                       max_steps: int, delimiter: str = "\n",
                       tag: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the steps of each response end, in response tokens (host numpy):
    (positions int32 [B, K], step_mask bool [B, K], n_dropped int32 [B]), K = max_steps.

    Each row's valid tokens (eos excluded) are decoded with offsets, split into steps
    (rlr.rewards.segment.split_steps: a step ends with `delimiter`, or `tag`), and each step
    is mapped to the token holding its last character (step_end_tokens); see step_arrays for
    rows of more than K steps.
    """
    tokens, mask = np.asarray(response_tokens), np.asarray(response_mask).astype(bool)
    ends = []
    for row, m in zip(tokens, mask):
        ids = [int(t) for t in row[m]]
        while ids and ids[-1] == tokenizer.eos_id:
            ids.pop()
        text, char_ends = tokenizer.decode_with_offsets(ids)
        ends.append(step_end_tokens(split_steps(text, delimiter, tag=tag), char_ends))
    return step_arrays(ends, max_steps)

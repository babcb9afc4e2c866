"""What every training loop shares, as functions (no base class): run setup, parameter loading
and export between stages, the synthetic task's data, prompt + response model inputs, log-probs
and scores of responses, and the loop driver (resume, checkpoints, metrics, SIGTERM, progress).

Axes: B batch, P prompt slots (left-padded), R response slots (right-padded), K steps.

A response token y_r sits at column P + r of the concatenated [B, P + R] sequence and is
predicted from column P + r - 1; prompts are left-padded, so column P - 1 always holds the
last prompt token and the response's log-probs come from hidden states [P - 1, P + R - 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import threading
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from rlr.config import ConfigError, make_model_config, to_config_dict, to_dataclass
from rlr.data import synthetic
from rlr.data.batching import left_pad, right_pad
from rlr.data.tokenizer import Tokenizer, load_tokenizer
from rlr.losses.reward_model import gather_at, last_token_scores
from rlr.models import ModelConfig, Transformer, lm_head_weight, token_logprobs
from rlr.parallel import (DEFAULT_RULES, gather_rows, init_model_params, make_mesh,
                          param_shardings, process_rows)
from rlr.parallel.memory import MemoryEstimate, device_memory_limit, format_bytes
from rlr.rewards.segment import split_steps, step_arrays, step_end_tokens
from rlr.sampling import Sampler, SamplingConfig
from rlr.train.checkpoint import (CheckpointError, Checkpointer, abstract_like,
                                  install_preemption_handler, restore_from, should_stop)
from rlr.train.metrics import MetricsWriter, Progress, Timer

log = logging.getLogger(__name__)

PARAMS_DIR, PARAMS_INFO = "params", "params_info.json"  # what export_params writes in a workdir
SPLITS = ("train", "eval")  # the splits of synthetic_problems


# ----------------------------------------------------------------------------- data config


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data group of an experiment (config.data); `data_group()` makes its ConfigDict."""

    task: str = "synthetic"  # "synthetic" or a rlr.data.datasets.load_split name (gsm8k, math, ...)
    tokenizer: str = "char"  # "char", a tokenizer file / directory; "" = config.model.hf_checkpoint
    seed: int = 0  # synthetic: seed of the train problems (eval problems use seed + 1)
    num_train: int = 2000  # synthetic: number of train problems
    num_eval: int = 64  # synthetic: number of held-out problems (never among the train ones)
    num_ops: tuple = (2, 3)  # synthetic: (min, max) operations a question
    operand_range: tuple = (1, 9)  # synthetic: (min, max) literal values
    ops: tuple = ("+", "-", "*")  # synthetic: operators used
    value_range: tuple = (-99, 999)  # synthetic: every intermediate value lies in this range
    needless_fraction: float = 0.0  # synthetic: share of train solutions with one needless correct step
    data_dir: str = ""  # real tasks: where load_split prepares its array_record files
    manual_dir: str = ""  # real tasks: the upstream files ("" = data_dir/downloads/manual)
    train_split: str = "train"  # real tasks: load_split split of the training data
    eval_split: str = "test"  # real tasks: load_split split of the held-out data
    prompt_template: str = "{question}"  # the user message; {question} is replaced
    prompt_bucket: int = 16  # prompts are left-padded to a multiple of this many tokens
    response_bucket: int = 16  # responses are right-padded to a multiple of this many tokens
    max_response_len: int = 64  # longest response (tokens, eos included) trained on / sampled

    def __post_init__(self):
        if self.task != "synthetic" and not self.data_dir:
            raise ConfigError(f"config.data.task={self.task!r}: set config.data.data_dir (where "
                              f"load_split prepares the dataset)")
        if "{question}" not in self.prompt_template:
            raise ConfigError(f"config.data.prompt_template={self.prompt_template!r}: expected a "
                              f"'{{question}}' field")
        if not 0.0 <= self.needless_fraction <= 1.0:
            raise ConfigError(f"config.data.needless_fraction={self.needless_fraction}: expected a "
                              f"share in [0, 1]")
        for name in ("prompt_bucket", "response_bucket", "max_response_len", "num_train", "num_eval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config.data.{name}={getattr(self, name)}: expected >= 1")


def data_group(**changes) -> ml_collections.ConfigDict:
    """The config.data group: the fields (and defaults) of DataConfig, with `changes`."""
    return to_config_dict(DataConfig(**changes))


def as_data_config(values: Any) -> DataConfig:
    """A DataConfig from config.data (a ConfigDict or dict); an unknown key is an error naming it."""
    if isinstance(values, DataConfig):
        return values
    return to_dataclass(DataConfig, values, where="data")


def synthetic_task(data: Any) -> synthetic.SyntheticConfig:
    """The rlr.data.synthetic.SyntheticConfig of a data group."""
    d = as_data_config(data)
    return synthetic.SyntheticConfig(num_ops=tuple(d.num_ops), operand_range=tuple(d.operand_range),
                                     ops=tuple(d.ops), value_range=tuple(d.value_range))


def synthetic_problems(data: Any, split: str) -> list[synthetic.Problem]:
    """The problems of a split of the synthetic task, as the `synthetic` dataset builder splits it:
    train = generate_problems(seed, num_train); eval = the first num_eval problems of the
    seed + 1 stream whose question is not a train question."""
    from rlr.data.builders.synthetic import held_out_problems

    d = as_data_config(data)
    if split not in SPLITS:
        raise ValueError(f"synthetic_problems: split={split!r}, expected one of {SPLITS}")
    task = synthetic_task(d)
    train = synthetic.generate_problems(d.seed, d.num_train, task)
    if split == "train":
        return train
    return held_out_problems(synthetic.generate_problems, d.seed + 1, d.num_eval, task,
                             {p.question for p in train})


class TaskExample(NamedTuple):
    """One problem of a task: the question, a reference solution (the SFT target) and its final
    answer (what a response's answer is checked against)."""

    question: str
    solution: str
    answer: str


_GSM8K_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations "<<48/2=24>>"


def _record_example(task: str, record: Mapping[str, Any]) -> TaskExample:
    if task == "gsm8k":
        solution = _GSM8K_CALCULATOR.sub("", record["answer"])
        return TaskExample(record["question"], solution, record["final_answer"])
    if task == "math":
        return TaskExample(record["problem"], record["solution"], record["final_answer"])
    return TaskExample(record["question"], record["answer"], record["final_answer"])  # synthetic


TASKS = ("synthetic", "gsm8k", "math")  # the tasks task_examples reads


def task_examples(data: Any, split: str, limit: Optional[int] = None) -> list[TaskExample]:
    """The problems of a split ("train" | "eval") of config.data.task: the synthetic task's
    problems (synthetic_problems), or the GSM8K / MATH records of config.data.train_split /
    eval_split read with rlr.data.datasets.load_split (GSM8K calculator annotations removed
    from the solutions). `limit`: the first `limit` problems only."""
    d = as_data_config(data)
    if split not in SPLITS:
        raise ValueError(f"task_examples: split={split!r}, expected one of {SPLITS}")
    if d.task not in TASKS:
        raise ConfigError(f"config.data.task={d.task!r}: expected one of {TASKS}")
    if d.task == "synthetic":
        problems = synthetic_problems(d, split)[:limit]
        fraction = d.needless_fraction if split == "train" else 0.0
        return [TaskExample(p.question, solution, str(p.answer))
                for p, solution in zip(problems, synthetic.with_needless_steps(problems, fraction, d.seed))]
    from rlr.data.datasets import load_split

    name = d.train_split if split == "train" else d.eval_split
    source = load_split(d.task, name, d.data_dir, d.manual_dir or None)
    count = len(source) if limit is None else min(limit, len(source))
    return [_record_example(d.task, source[i]) for i in range(count)]


def answer_correct(data: Any, example: TaskExample, response: str) -> bool:
    """Whether a response's final answer is right: synthetic.final_answer_correct for the
    synthetic task, rlr.rewards.verify(response, answer) == 1 for the others."""
    if as_data_config(data).task == "synthetic":
        return synthetic.final_answer_correct(example.question, response)
    from rlr.rewards.verifier import verify

    return verify(response, example.answer) > 0.5


# ----------------------------------------------------------------------------- setup


class Setup(NamedTuple):
    """What a loop starts from: the device mesh, the tokenizer, the decoder shape, a PRNG key."""

    mesh: jax.sharding.Mesh
    tokenizer: Tokenizer
    model_config: ModelConfig
    rng: jax.Array


def tokenizer_path(config: ml_collections.ConfigDict) -> str:
    """config.data.tokenizer, or the model's checkpoint directory when it is ""."""
    path = config.data.tokenizer or config.model.hf_checkpoint
    if not path:
        raise ConfigError("config.data.tokenizer: empty and config.model.hf_checkpoint is unset; "
                          "expected 'char', a tokenizer file or a checkpoint directory")
    return path


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Setup(mesh from config.mesh, tokenizer from config.data.tokenizer, ModelConfig from
    config.model, jax.random.key(config.seed)). The tokenizer's ids must fit the model's
    vocabulary (an error naming both keys otherwise)."""
    for group in ("mesh", "model", "data"):
        if group not in config:
            raise ConfigError(f"config.{group}: missing group (see experiments/base.py)")
    as_data_config(config.data)  # unknown keys / bad values fail here, naming the key
    try:
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    model_config = make_model_config(config.model)
    tokenizer = load_tokenizer(tokenizer_path(config))
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(f"config.data.tokenizer={tokenizer_path(config)!r} has {tokenizer.vocab_size} "
                          f"ids, more than config.model's vocab_size={model_config.vocab_size}")
    return Setup(mesh, tokenizer, model_config, jax.random.key(config.seed))


def log_memory_estimate(trainer: str, estimate: MemoryEstimate, mesh: jax.sharding.Mesh) -> None:
    """Logs `estimate` (rlr.parallel.memory.estimate_memory: bytes a device) before a step
    compiles, beside the device's memory where the backend gives it (GPU, TPU); a warning when
    the estimated peak is above it, so that a plan that cannot fit is known before a long
    compile ends in an out-of-memory error."""
    limit = device_memory_limit(mesh.local_devices[0])
    text = f"{trainer}: estimated memory a device: {estimate.brief()}"
    if limit is None:
        log.info("%s", text)
    elif estimate.total <= limit:
        log.info("%s; the device has %s", text, format_bytes(limit))
    else:
        log.warning("%s: above the device's %s, expect an out-of-memory error; activations "
                    "shrink with fewer rows a step or config.model.remat='full', params and "
                    "optimizer state with a larger config.mesh.fsdp", text, format_bytes(limit))


@contextlib.contextmanager
def model_context(mesh: jax.sharding.Mesh):
    """The mesh and logical-axis rules the model's sharding constraints need: call (and so
    trace) every jitted function that applies a model inside it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        yield


# ----------------------------------------------------------------------------- params between stages


def _flat_shapes(tree: Any) -> dict[str, list[int]]:
    return {"/".join(k): list(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _head_of(params: Any) -> str:
    return "score" if "score_head" in params else "lm"


def export_params(workdir: str, params: Any) -> str:
    """Write `params` to WORKDIR/params (orbax) and WORKDIR/params_info.json (head and shapes):
    what `load_params(model, WORKDIR, ...)` of the next stage reads. Every process calls it
    (the save is collective). Returns the params directory."""
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, PARAMS_DIR)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        info = {"head": _head_of(params), "shapes": _flat_shapes(params)}
        with open(os.path.join(workdir, PARAMS_INFO), "w") as f:
            json.dump(info, f, indent=1)
    return path


def _read_params_info(source: str) -> dict:
    file = os.path.join(source, PARAMS_INFO)
    try:
        with open(file) as f:
            info = json.load(f)
        if info.get("head") not in ("lm", "score") or not isinstance(info.get("shapes"), dict):
            raise ValueError("expected keys 'head' (lm | score) and 'shapes'")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read the params export ({e})") from None
    return info


def _abstract(model: Transformer, mesh) -> Any:
    """ShapeDtypeStruct params of `model` carrying their shardings on `mesh`."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), tokens, tokens, jnp.ones((1, 8), bool))["params"]))
    shardings = param_shardings(model, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def _fresh_score_head(model: Transformer, mesh, rng: jax.Array) -> dict:
    """A new score head (kernel ~ N(0, 0.02^2) as the decoder initialises it, bias 0), sharded."""
    target = _abstract(model, mesh)["score_head"]
    kernel = 0.02 * jax.random.normal(rng, target["kernel"].shape, jnp.float32)
    return {"kernel": jax.device_put(kernel.astype(target["kernel"].dtype), target["kernel"].sharding),
            "bias": jax.device_put(jnp.zeros(target["bias"].shape, target["bias"].dtype),
                                   target["bias"].sharding)}


def _load_export(model: Transformer, source: str, mesh, rng: jax.Array) -> Any:
    """Params of `model` from the export of an rlr run (see export_params)."""
    import orbax.checkpoint as ocp

    info = _read_params_info(source)
    exported = Transformer(model.config, head=info["head"])
    if info["head"] == "score" and model.head == "lm":
        raise CheckpointError(f"{source}: exported a score-head model; a policy (head 'lm') cannot "
                              f"be loaded from it")
    target = _abstract(exported, mesh)
    expected = _flat_shapes(target)
    if expected != info["shapes"]:
        diff = sorted(k for k in set(expected) | set(info["shapes"])
                      if expected.get(k) != info["shapes"].get(k))
        raise CheckpointError(f"{source}: exported params do not fit config.model (first difference "
                              f"at {diff[0]}: export {info['shapes'].get(diff[0])}, model "
                              f"{expected.get(diff[0])})")
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(os.path.join(source, PARAMS_DIR), target)
    except Exception as e:  # orbax raises many kinds; the user needs the path and the cause
        first = (str(e).strip().splitlines() or ["no message"])[0]
        raise CheckpointError(f"{os.path.join(source, PARAMS_DIR)}: cannot restore params "
                              f"({type(e).__name__}: {first})") from e
    finally:
        checkpointer.close()
    if info["head"] == "lm" and model.head == "score":
        params = {k: v for k, v in params.items() if k != "lm_head"}
        params["score_head"] = _fresh_score_head(model, mesh, rng)
    return params


def load_params(model: Transformer, source: Optional[str], mesh: jax.sharding.Mesh, rng: jax.Array,
                tokenizer: Optional[Tokenizer] = None) -> Any:
    """Sharded params of `model` from `source`:
    - None or "": a random init (rlr.parallel.init_model_params with `rng`);
    - an rlr run directory (holding params_info.json): the params it exported with
      export_params, restored into the target shardings. An "lm" export loaded into a
      "score" model keeps the decoder (embedding, layers, final norm), drops lm_head and
      initialises a fresh score head from `rng` (a critic / reward model initialised from the
      SFT policy); "score" into "score" keeps everything;
    - a Hugging Face checkpoint directory (holding config.json): hf_io.load_hf_checkpoint
      (its shape must match model.config).
    `tokenizer`, when given, must fit the vocabulary. Errors name the source.
    """
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"load_params: the tokenizer has {tokenizer.vocab_size} ids, more than the "
                         f"model's vocab_size={model.config.vocab_size}")
    if not source:
        return init_model_params(model, rng, mesh)
    source = os.path.abspath(source)
    if not os.path.isdir(source):
        raise CheckpointError(f"{source}: no such directory (expected the workdir of an earlier rlr "
                              f"run, holding {PARAMS_INFO}, or a Hugging Face checkpoint directory)")
    if os.path.isfile(os.path.join(source, PARAMS_INFO)):
        return _load_export(model, source, mesh, rng)
    run_folder = any(os.path.exists(os.path.join(source, name))  # what `rlr` writes first
                     for name in ("checkpoints", "config.txt"))
    if os.path.isfile(os.path.join(source, "config.json")) and not run_folder:
        return _load_hf(model, source, mesh, rng)
    raise CheckpointError(f"{source}: holds neither {PARAMS_INFO} (an rlr run's export: did that "
                          f"run finish?) nor a Hugging Face config.json")


def _load_hf(model: Transformer, source: str, mesh, rng: jax.Array) -> Any:
    from rlr.models.hf_io import load_hf_checkpoint

    c = model.config
    overrides = dict(param_dtype=c.param_dtype, dtype=c.dtype, remat=c.remat, attention=c.attention)
    config, params = load_hf_checkpoint(source, mesh, config_overrides=overrides, head=model.head,
                                        rng=rng)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
             "num_kv_heads", "head_dim", "tie_embeddings", "qkv_bias")
    for field in shape:
        if getattr(config, field) != getattr(c, field):
            raise CheckpointError(f"{source}/config.json: {field}={getattr(config, field)}, but the "
                                  f"model has {field}={getattr(c, field)} (config.model)")
    return params


# ----------------------------------------------------------------------------- encoding


def prompt_text(tokenizer: Tokenizer, question: str, template: str = "{question}") -> str:
    """The prompt of a question: the user message template.format(question=...) in the
    tokenizer's chat format (plain: the message and a newline, i.e. Problem.prompt)."""
    message = template.replace("{question}", question)
    return tokenizer.apply_chat_template([{"role": "user", "content": message}])


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


def sampling_config(tokenizer: Tokenizer, data: Any, temperature: float = 0.0,
                    num_samples: int = 1, top_k: int = 0, top_p: float = 1.0,
                    unstack_layers: bool = True, prefill_chunk: int = 0) -> SamplingConfig:
    """The SamplingConfig of a task: responses of up to config.data.max_response_len tokens
    that end at the tokenizer's eos (temperature 0: greedy), drawn from the tokenizer's ids only."""
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                          max_new_tokens=as_data_config(data).max_response_len,
                          num_samples=num_samples, eos_ids=(tokenizer.eos_id,),
                          pad_id=tokenizer.pad_id, num_tokens=tokenizer.vocab_size,
                          unstack_layers=unstack_layers, prefill_chunk=prefill_chunk)


def global_batches(num_rows: int, batch_size: int,
                   mesh: Optional[jax.sharding.Mesh]) -> Iterator[tuple[np.ndarray, int]]:
    """Calls over `num_rows` rows that every process holds, `batch_size` rows a call across all
    processes: for each call, (the indices of the rows this process feeds, `process_rows`; how
    many of the call's rows are real). The last call is filled with repeats of the last row, so
    every call has one shape (one compilation); its outputs, gathered (`gather_rows`), keep
    their first `kept` rows."""
    mine = process_rows(batch_size, mesh)
    for start in range(0, num_rows, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), num_rows - 1)
        yield index[mine], min(batch_size, num_rows - start)


def generate_texts(sampler: Sampler, params: Any, tokenizer: Tokenizer, prompts: Sequence[str],
                   rng: jax.Array, batch_size: int, bucket: int = 16) -> list[list[str]]:
    """Responses [len(prompts)][n] (n = sampler.config.num_samples) to prompt texts, generated
    `batch_size` prompts a call (all prompts padded to one length, `global_batches`, so the
    sampler compiles once). Each call uses its own fold of `rng`. With several processes, each
    passes the same prompts, generates its share of every call and gets every response."""
    if not prompts:
        return []
    tokens, mask = encode_prompts(tokenizer, prompts, bucket)
    n, out = sampler.config.num_samples, []
    for b, (rows, kept) in enumerate(global_batches(len(prompts), batch_size, sampler.mesh)):
        rollout = sampler(params, tokens[rows], mask[rows], jax.random.fold_in(rng, b))
        texts = decode_responses(tokenizer, gather_rows(rollout.response_tokens),
                                 gather_rows(rollout.response_mask))
        out.extend(texts[i * n:(i + 1) * n] for i in range(kept))
    return out


def task_accuracy(sampler: Sampler, params: Any, tokenizer: Tokenizer, data: Any,
                  examples: Sequence[TaskExample], rng: jax.Array,
                  batch_size: int) -> tuple[float, list[str]]:
    """(share of examples whose first sampled response has the right answer (answer_correct),
    those responses): with a greedy sampler, the held-out greedy accuracy the studies report."""
    d = as_data_config(data)
    prompts = [prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
    responses = [r[0] for r in generate_texts(sampler, params, tokenizer, prompts, rng, batch_size,
                                               d.prompt_bucket)]
    correct = [answer_correct(d, e, r) for e, r in zip(examples, responses)]
    return (float(np.mean(correct)) if correct else 0.0), responses


# ----------------------------------------------------------------------------- the loop driver


def _restore(config: ml_collections.ConfigDict, checkpointer: Checkpointer,
             state: Any) -> tuple[Any, dict, int]:
    """(state, extra, step) from the newest checkpoint of this run (config.checkpoint.resume),
    else from config.checkpoint.restore_path, else (state, {}, 0)."""
    abstract = abstract_like(state)
    if config.checkpoint.resume:
        restored = checkpointer.restore_latest(abstract)
        if restored is not None:
            return restored[0], restored[1], int(checkpointer.latest_step())
    if config.checkpoint.restore_path:
        state, extra = restore_from(config.checkpoint.restore_path, abstract)
        return state, extra, int(extra.get("step", 0))
    return state, {}, 0


StepFn = Callable[[Any, int], tuple[Any, Mapping[str, Any]]]


def run_loop(config: ml_collections.ConfigDict, workdir: str, state: Any, step_fn: StepFn,
             num_steps: int, *, on_restore: Optional[Callable[[dict], None]] = None,
             extra_fn: Optional[Callable[[], dict]] = None,
             eval_fn: Optional[Callable[[Any, int], Mapping[str, Any]]] = None,
             eval_every: int = 0, progress_keys: Sequence[str] = ("loss",),
             writer: Optional[MetricsWriter] = None) -> tuple[Any, dict]:
    """Drive a training loop: resume, step, log, evaluate, checkpoint, stop on SIGTERM.

    state: a pytree of arrays (a TrainState, or a dict of several) -- the initial one, replaced
    by the newest checkpoint of WORKDIR (config.checkpoint.resume) or config.checkpoint.
    restore_path when there is one. on_restore(extra) is then called with the restored extra
    dict ({} on a fresh start) so the loop can put its data where the checkpoint left it.
    step_fn(state, step) -> (state, metrics) runs update `step` (0-based); metrics are scalars.
    Every config.logging.every_steps updates (and the last) the metrics go to metrics.jsonl /
    TensorBoard with the per-phase times; every `eval_every` updates (and the last) eval_fn(
    state, step) -> metrics is logged with an "eval/" prefix. Checkpoints every
    config.checkpoint.every_steps with extra = extra_fn() plus {"step"}, and at the end or
    on SIGTERM (then the loop stops early). Returns (state, final metrics: the last logged
    train metrics and the last eval metrics).
    """
    checkpointer = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
    own_writer = writer is None
    writer = writer or MetricsWriter(workdir)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = install_preemption_handler()
    try:
        state, extra, start = _restore(config, checkpointer, state)
        if on_restore is not None:
            on_restore(extra)
        progress = Progress(total=num_steps, initial=start, keys=progress_keys)
        timer, final = Timer(), {}
        step = start
        while step < num_steps:
            with timer.phase("step"):
                state, metrics = step_fn(state, step)
            step += 1
            last, stopping = step == num_steps, should_stop()
            if step % config.logging.every_steps == 0 or last or stopping:
                with timer.phase("log"):
                    line = writer.write(step, {**metrics, **timer.split()})
                final.update({k: v for k, v in line.items() if k not in ("step", "wall_time")})
                timer.reset()
            progress.update(step, metrics)
            if eval_fn is not None and ((eval_every and step % eval_every == 0) or last):
                with timer.phase("eval"):
                    evals = {f"eval/{k}": v for k, v in eval_fn(state, step).items()}
                final.update(writer.write(step, evals))
                final.pop("wall_time", None)
            extra_now = {**(extra_fn() if extra_fn else {}), "step": step}
            checkpointer.save(step, state, extra_now, force=last or stopping)
            if stopping:
                log.warning("stopping at step %d on a preemption signal", step)
                break
        progress.close()
        final.pop("step", None)
        return state, final
    finally:
        checkpointer.close()
        if own_writer:
            writer.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

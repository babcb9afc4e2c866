"""What every training loop shares, as functions (no base class): run setup, the mesh context of
a model, sampling texts and scoring them with a reward model, the greedy held-out evaluation,
and the loop driver (resume, checkpoints, metrics, SIGTERM, progress). The task's data is in
rlr.train.tasks, params between stages in rlr.train.params_io, prompt + response model inputs
and scores in rlr.train.sequences.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from rlr.config import ConfigError, make_model_config
from rlr.data.batching import bucket_length
from rlr.data.tokenizer import Tokenizer, load_tokenizer
from rlr.models import ModelConfig, Transformer
from rlr.parallel import DEFAULT_RULES, gather_rows, make_mesh, process_rows, shard_batch
from rlr.parallel.memory import MemoryEstimate, device_memory_limit, format_bytes
from rlr.sampling import Sampler, SamplingConfig
from rlr.train.checkpoint import (Checkpointer, abstract_like, install_preemption_handler,
                                  restore_from, should_stop)
from rlr.train.metrics import MetricsWriter, Progress, Timer
from rlr.train import params_io
from rlr.train.sequences import (decode_responses, encode_prompts, encode_responses, outcome_scores,
                                 prompt_text, response_scores, sequence_inputs)
from rlr.train.tasks import TASKS, TaskExample, answer_correct, as_data_config

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- sampling texts


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


TextScoreFn = Callable[[Sequence[str], Sequence[Sequence[str]]], list[list[float]]]
ExampleScoreFn = Callable[[Sequence[TaskExample], Sequence[Sequence[str]]], list[list[float]]]


def reward_model_scorer(s: Setup, rm_params: Any, data: Any, prompt_length: int,
                        response_length: int, rows_per_call: int) -> TextScoreFn:
    """score(prompts, responses) -> the outcome reward model's score of each response,
    [len(prompts)][n] (sequences.outcome_scores: the score head at the last response token;
    responses cut at config.data.max_response_len tokens), `rows_per_call` responses a call, all
    at one compiled shape ([rows, prompt_length + response_length])."""
    d = as_data_config(data)
    rm_model = Transformer(s.model_config, head="score")

    @jax.jit
    def scores(params, prompt_tokens, prompt_mask, response_tokens, response_mask):
        batch = sequence_inputs(prompt_tokens, prompt_mask, response_tokens, response_mask)
        return outcome_scores(response_scores(rm_model, params, batch), response_mask)

    def score(prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> list[list[float]]:
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat = [r for rs in responses for r in rs]
        if not flat:
            return [[] for _ in responses]
        pt, pm = encode_prompts(s.tokenizer, flat_prompts, d.prompt_bucket, length=prompt_length)
        rt, rmask = encode_responses(s.tokenizer, flat, d.response_bucket, max_len=d.max_response_len,
                                     length=response_length)
        out = []
        with model_context(s.mesh):
            for index, kept in global_batches(len(flat), rows_per_call, s.mesh):
                arrays = shard_batch((pt[index], pm[index], rt[index], rmask[index]), s.mesh)
                out.extend(gather_rows(scores(rm_params, *arrays))[:kept])
        it = iter(float(v) for v in out)
        return [[next(it) for _ in rs] for rs in responses]

    return score


def reward_model_setup(s: Setup, source: str, tokenizer: str, where: str) -> Setup:
    """The Setup the reward model of config.{where}.rm_source reads text with: its shape
    (params_io.source_shape) and the tokenizer config.{where}.rm_tokenizer names ("" = the
    policy's), whose chat format its prompts take."""
    rm_tokenizer = s.tokenizer
    if tokenizer:
        try:
            rm_tokenizer = load_tokenizer(tokenizer)
        except (OSError, ValueError) as e:
            raise ConfigError(f"config.{where}.rm_tokenizer={tokenizer!r}: {e}") from None
    model_config = params_io.source_shape(source, s.model_config, key=f"{where}.rm_source")
    if model_config != s.model_config:
        log.info("config.%s.rm_source=%r: a reward model of its own shape (%d layers, hidden %d, "
                 "vocabulary %d) reading text with %s", where, source, model_config.num_layers,
                 model_config.hidden_size, model_config.vocab_size,
                 f"config.{where}.rm_tokenizer={tokenizer!r}" if tokenizer else "the policy's tokenizer")
    return s._replace(model_config=model_config, tokenizer=rm_tokenizer)


def judge_scorer(s: Setup, source: str, tokenizer: str, where: str, data: Any,
                 examples: Sequence[TaskExample], rows_per_call: int, rng: jax.Array,
                 loaded: Optional[Mapping[str, Any]] = None) -> ExampleScoreFn:
    """score(examples, responses) -> the score the outcome reward model of
    config.{where}.rm_source (tokenizer: config.{where}.rm_tokenizer; reward_model_setup) gives
    each response, [len(examples)][n]: reward_model_scorer on the example's prompt in that
    tokenizer's chat format and the response's text, so the judge need not share the policy's
    shape or tokenizer. One compiled shape: the prompts of `examples` (every example it will
    score) at their bucketed width, config.data.max_response_len, `rows_per_call` rows.
    `loaded`: params already on the mesh by source path (a PPO run's ORM), used instead of a
    second copy."""
    judge = reward_model_setup(s, source, tokenizer, where)
    params = (loaded or {}).get(os.path.abspath(source))
    if params is None:
        params = params_io.load_params(Transformer(judge.model_config, head="score"), source, s.mesh,
                                       rng, judge.tokenizer, key=f"{where}.rm_source", reward_model=True)
    d = as_data_config(data)

    def prompts(chosen: Sequence[TaskExample]) -> list[str]:
        return [prompt_text(judge.tokenizer, e.question, d.prompt_template) for e in chosen]

    prompt_length = encode_prompts(judge.tokenizer, prompts(examples), d.prompt_bucket)[0].shape[1]
    scorer = reward_model_scorer(judge, params, d, prompt_length,
                                 bucket_length(d.max_response_len, d.response_bucket), rows_per_call)

    def score(chosen: Sequence[TaskExample], responses: Sequence[Sequence[str]]) -> list[list[float]]:
        if judge.tokenizer is not s.tokenizer:  # the policy's replies fit its own tokens only
            cut = sum(len(judge.tokenizer.encode(r)) >= d.max_response_len for rs in responses for r in rs)
            if cut:
                log.warning("config.%s.rm_source: %d of %d replies take more than "
                            "config.data.max_response_len=%d tokens of config.%s.rm_tokenizer "
                            "(eos included); it scores their first %d", where, cut,
                            sum(map(len, responses)), d.max_response_len, where, d.max_response_len)
        return scorer(prompts(chosen), responses)

    return score


def eval_scorer(config: ml_collections.ConfigDict, s: Setup, examples: Sequence[TaskExample],
                rng: jax.Array, loaded: Optional[Mapping[str, Any]] = None) -> Optional[ExampleScoreFn]:
    """The judge_scorer of config.eval.rm_source for greedy responses to the held-out `examples`
    (config.eval.batch_size rows a call), or None when it is ""."""
    if not config.eval.rm_source:
        return None
    return judge_scorer(s, config.eval.rm_source, config.eval.rm_tokenizer, "eval", config.data,
                        examples, config.eval.batch_size, rng, loaded)


def eval_reward_models(config: ml_collections.ConfigDict, model_config: ModelConfig,
                       loaded: Sequence[str] = ()) -> list[ModelConfig]:
    """[the shape of config.eval.rm_source] when the greedy evaluation keeps its own copy of it
    on the mesh for the whole run (eval_scorer), else []: the reward model a trainer's memory
    estimate adds (estimate_memory's `scorers`). `loaded`: the run's reward-model sources whose
    params eval_scorer reuses instead."""
    source = config.eval.rm_source
    if not source or not config.eval.num_problems:
        return []
    if os.path.abspath(source) in {os.path.abspath(p) for p in loaded if p}:
        return []
    return [params_io.source_shape(source, model_config, key="eval.rm_source")]


def greedy_eval(sampler: Sampler, params: Any, tokenizer: Tokenizer, data: Any,
                examples: Sequence[TaskExample], rng: jax.Array, batch_size: int,
                score_fn: Optional[ExampleScoreFn] = None) -> tuple[dict, list[dict]]:
    """A policy's responses to held-out examples (with a greedy sampler: the responses the
    studies report) and their metrics: response_length (mean tokens), accuracy (the share whose
    final answer is right, answer_correct; tasks with an answer checker only) and rm_score (the
    mean reward-model score, with score_fn). Returns (metrics, one samples.jsonl record a
    response: prompt (the question), response, reference answer, correct, rm_score)."""
    d = as_data_config(data)
    prompts = [prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
    responses = [r[0] for r in generate_texts(sampler, params, tokenizer, prompts, rng, batch_size,
                                               d.prompt_bucket)]
    records = [{"prompt": e.question, "response": r, "reference": e.answer}
               for e, r in zip(examples, responses)]
    metrics = {"response_length": float(np.mean([len(tokenizer.encode(r)) for r in responses]))}
    if d.task in TASKS:
        correct = [answer_correct(d, e, r) for e, r in zip(examples, responses)]
        metrics["accuracy"] = float(np.mean(correct))
        for record, c in zip(records, correct):
            record["correct"] = c
    if score_fn is not None:
        scores = [row[0] for row in score_fn(examples, [[r] for r in responses])]
        metrics["rm_score"] = float(np.mean(scores))
        for record, v in zip(records, scores):
            record["rm_score"] = v
    return metrics, records


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

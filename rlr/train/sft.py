"""Supervised fine-tuning: masked cross-entropy on the responses of prompt / response pairs.

    rlr --config experiments/sft.py --workdir runs/sft

Data: the problems of config.data.task (rlr.train.tasks.task_examples), prompt = the question
in the tokenizer's chat format, response = the reference solution + eos; optionally packed
into rows of config.sft.pack_length tokens. Every config.eval.every_steps updates: held-out
loss and greedy accuracy on config.eval.num_problems held-out problems, and the mean score of
the reward model of config.eval.rm_source (samples to samples.jsonl). At the end the params are
exported (WORKDIR/params) for the next stage: reward models and PPO / DPO load them with
rlr.train.params_io.load_params.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from rlr.config import ConfigError
from rlr.data.batching import BatchIterator, concat_prompt_response, pack_sequences
from rlr.data.tokenizer import Tokenizer
from rlr.losses import aggregation_count
from rlr.models import Transformer
from rlr.parallel import BATCH_AXES, process_rows, shard_batch
from rlr.parallel.memory import estimate_memory
from rlr.sampling import Sampler
from rlr.train import common, params_io, sequences, sft_step, tasks
from rlr.train.accumulate import combine_metrics
from rlr.train.metrics import MetricsWriter
from rlr.train.optim import as_optim_config, make_optimizer
from rlr.train.state import create_train_state

Rows = dict[str, np.ndarray]  # [N, T] arrays: tokens, positions, attention_mask, loss_mask(, segment_ids)


def sft_rows(tokenizer: Tokenizer, examples: Sequence[tasks.TaskExample], data: Any,
             pack_length: int = 0) -> Rows:
    """Training rows of prompt / response pairs: left-padded prompts then right-padded responses
    (concat_prompt_response; loss on the response tokens, eos included, cut to
    data.max_response_len), or with pack_length > 0 the valid tokens of each pair packed into
    rows of pack_length tokens (pack_sequences: segment_ids, positions restarting)."""
    d = tasks.as_data_config(data)
    prompts = [sequences.prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
    prompt_tokens, prompt_mask = sequences.encode_prompts(tokenizer, prompts, d.prompt_bucket)
    response_tokens, response_mask = sequences.encode_responses(
        tokenizer, [e.solution for e in examples], d.response_bucket, max_len=d.max_response_len)
    rows = concat_prompt_response(prompt_tokens, prompt_mask, response_tokens, response_mask)
    if not pack_length:
        return rows
    unpacked = [{"tokens": t[m], "loss_mask": l[m]}
                for t, m, l in zip(rows["tokens"], rows["attention_mask"], rows["loss_mask"])]
    return pack_sequences(unpacked, pack_length, tokenizer.pad_id)


def _take(rows: Rows) -> Callable[[list], Rows]:
    """collate for a BatchIterator over row indices: the rows' arrays."""
    return lambda indices: {k: v[np.asarray(indices)] for k, v in rows.items()}


def _shards(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_size(batch_size: int, mesh, key: str, grad_accum_steps: int = 1) -> int:
    """The per-host batch of a global `batch_size` (config key `key`); it must divide by the
    mesh's data x fsdp devices times `grad_accum_steps` (config.optim.grad_accum_steps: each
    device splits its rows into that many micro-batches, rlr.train.accumulate)."""
    multiple = _shards(mesh) * grad_accum_steps
    if batch_size < 1 or batch_size % multiple or batch_size % jax.process_count():
        accum = (f" x optim.grad_accum_steps = {grad_accum_steps}, i.e. of {multiple}"
                 if grad_accum_steps > 1 else "")
        raise ConfigError(f"config.{key}={batch_size}: expected a positive multiple of the mesh's "
                          f"data x fsdp = {_shards(mesh)} devices{accum}")
    return batch_size // jax.process_count()


def batch_iterator(rows: Rows, global_batch: int, seed: int, state: dict | None = None) -> BatchIterator:
    """This host's shuffled batches of `rows`, epoch after epoch (from a saved position `state`)."""
    indices = np.arange(len(rows["tokens"]))
    if state:
        return BatchIterator.from_state(state, indices, collate=_take(rows))
    return BatchIterator(indices, global_batch // jax.process_count(), jax.process_index(),
                         jax.process_count(), seed=seed, collate=_take(rows))


def _eval_batches(rows: Rows, batch_size: int) -> list[Rows]:
    """Rows in batches of batch_size; the last batch filled with copies whose loss_mask is off."""
    n = len(rows["tokens"])
    batches = []
    for start in range(0, n, batch_size):
        index = np.minimum(np.arange(start, start + batch_size), n - 1)
        batch = {k: v[index] for k, v in rows.items()}
        batch["loss_mask"] = batch["loss_mask"] & (np.arange(start, start + batch_size) < n)[:, None]
        batches.append(batch)
    return batches


def make_evaluate(config: ml_collections.ConfigDict, s: common.Setup, model: Transformer,
                  writer: MetricsWriter, rng: jax.Array):
    """evaluate(state, step) -> {loss, perplexity, and common.greedy_eval's accuracy,
    response_length (and rm_score with config.eval.rm_source)} on the held-out problems (None
    when config.eval.num_problems is 0); writes every greedy reply to samples.jsonl. The loss and
    perplexity are those of all the held-out rows at once, under config.sft.aggregation: the
    batches' values combined as micro-batches' are (rlr.train.accumulate.combine_metrics)."""
    num = config.eval.num_problems
    if num == 0:
        return None
    data = tasks.as_data_config(config.data)
    batch_size = config.eval.batch_size
    check_batch_size(batch_size, s.mesh, "eval.batch_size")
    examples = tasks.task_examples(data, "eval", limit=num)
    mine = process_rows(batch_size, s.mesh)  # the rows of each batch this process feeds
    whole = _eval_batches(sft_rows(s.tokenizer, examples, data), batch_size)
    batches = [{k: v[mine] for k, v in batch.items()} for batch in whole]
    counts = np.array([aggregation_count(batch["loss_mask"][:, 1:], config.sft.aggregation)
                       for batch in whole])
    weights = counts / max(counts.sum(), 1.0)  # C_b / C: the loss of all held-out rows at once
    sampler = Sampler(model, common.sampling_config(s.tokenizer, data, temperature=0.0), s.mesh)
    score_fn = common.eval_scorer(config, s, examples, jax.random.fold_in(rng, 1))
    loss_fn = jax.jit(functools.partial(sft_step.eval_step, model=model,
                                        chunk_size=config.sft.chunk_size,
                                        aggregation=config.sft.aggregation))

    def evaluate(state, step: int) -> dict:
        with common.model_context(s.mesh):
            per_batch = jax.device_get([loss_fn(state.params, shard_batch(batch, s.mesh))
                                        for batch in batches])
        losses = combine_metrics({k: np.array([m[k] for m in per_batch])
                                  for k in ("loss", "perplexity", "num_tokens")}, weights)
        metrics, records = common.greedy_eval(sampler, state.params, s.tokenizer, data, examples,
                                              rng, batch_size, score_fn)
        writer.write_samples(step, records)
        return {"loss": float(losses["loss"]), "perplexity": float(losses["perplexity"]), **metrics}

    return evaluate


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run SFT (config.sft, config.data, config.optim, config.eval) in `workdir`; resumes from
    its newest checkpoint; exports the final params. Returns the final metrics."""
    s = common.setup(config)
    c = config.sft
    data = tasks.as_data_config(config.data)
    optim = as_optim_config(config.optim)
    check_batch_size(c.batch_size, s.mesh, "sft.batch_size", optim.grad_accum_steps)
    model = Transformer(s.model_config)
    init_rng, state_rng, eval_rng = jax.random.split(s.rng, 3)
    source, key = params_io.config_source(config, "sft.init_source", "model.hf_checkpoint")
    params = params_io.load_params(model, source, s.mesh, init_rng, s.tokenizer, key=key)
    optimizer = make_optimizer(optim)
    state = create_train_state(params, optimizer, state_rng)
    rows = sft_rows(s.tokenizer, tasks.task_examples(data, "train"), data, c.pack_length)
    batches = [batch_iterator(rows, c.batch_size, config.seed)]  # replaced on restore
    common.log_memory_estimate("sft", estimate_memory(
        s.model_config, s.mesh, c.batch_size, rows["tokens"].shape[1], optimizer=optimizer,
        scorers=common.eval_reward_models(config, s.model_config), chunk_size=c.chunk_size,
        grad_accum_steps=optim.grad_accum_steps), s.mesh)
    step = jax.jit(functools.partial(sft_step.train_step, model=model, optimizer=optimizer,
                                     chunk_size=c.chunk_size, aggregation=c.aggregation,
                                     grad_accum_steps=optim.grad_accum_steps),
                   donate_argnums=0)

    def on_restore(extra: dict) -> None:
        if "data" in extra:
            batches[0] = batch_iterator(rows, c.batch_size, config.seed, extra["data"])

    def step_fn(state, _):
        batch = shard_batch(next(batches[0]), s.mesh)
        with common.model_context(s.mesh):
            return step(state, batch)

    writer = MetricsWriter(workdir)
    try:
        state, final = common.run_loop(
            config, workdir, state, step_fn, c.num_steps, on_restore=on_restore,
            extra_fn=lambda: {"data": batches[0].state_dict()},
            eval_fn=make_evaluate(config, s, model, writer, eval_rng),
            eval_every=config.eval.every_steps, progress_keys=("loss", "grad_norm"), writer=writer)
    finally:
        writer.close()
    params_io.export_params(workdir, state.params, s.model_config, s.tokenizer)
    return final

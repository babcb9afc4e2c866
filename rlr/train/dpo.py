"""Direct preference optimisation: offline DPO (and its variants) on fixed preference pairs, and
iterative (online) DPO on pairs sampled from the policy being trained.

    rlr --config experiments/dpo.py --workdir runs/dpo               # synthetic pairs, from runs/sft, CPU
    rlr --config experiments/dpo.py:hh_rlhf --workdir runs/dpo-hh    # HH-RLHF on a local checkpoint
    rlr --config experiments/iterative_dpo.py --workdir runs/idpo    # rounds of sample -> rank -> DPO

Where pairs come from (config.dpo.pairs; rlr/train/preferences.py builds them):
- corrupt: per train problem of the synthetic task, its reference solution over a flawed one
  (rlr.data.synthetic.corrupt with a mode of config.dpo.corruptions); held out: the same from
  the held-out problems.
- labelled: the responses of a label run (config.dpo.data_path: its labelled.jsonl or run dir):
  a correct response over an incorrect one to the same question; held out: the pairs of some
  questions of the file (never trained on).
- hh_rlhf | preference_pairs: the chosen / rejected replies of rlr.data.datasets.load_split
  (upstream files in config.dpo.data_path or config.data.manual_dir, prepared under
  config.data.data_dir; builder config config.data.dataset_config, splits
  config.data.train_split / eval_split); a record's prompt (HH's
  "\\n\\nHuman: ... Assistant:") is sequences.prompt_text of config.data.prompt_template
  (HH: its turns as the chat's messages) and its replies sequences.reply_text, as the
  Bradley-Terry RM (rlr/train/rm.py) and PPO read them.
- sampled: iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human Feedback";
  Pang et al. 2024, "Iterative Reasoning Preference Optimization"). config.dpo.iterations rounds;
  each samples config.dpo.num_samples responses to config.dpo.prompts_per_iteration train
  problems from the current policy, scores them (the task's answer checker, or the outcome
  reward model of config.dpo.rm_source), pairs each prompt's best response with its worst
  (none when all score alike), writes them to WORKDIR/pairs/round_<r>.jsonl and runs
  num_steps / iterations updates on them; config.dpo.refresh_reference makes the policy at the
  start of each round the reference. config.dpo.reference_chosen: a problem none of whose
  samples the checker accepts pairs its reference solution (chosen) with a sample instead
  (the pairs of SPIN, Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models
  to Strong Language Models"), so a policy that rarely solves a problem still gets pairs.
  Held out: pairs sampled the same way from the initial policy on the held-out problems.

The reference model is the initial policy (config.dpo.policy_source); its log-probs are computed
once per batch without gradient inside the jitted step (rlr/train/dpo_step.py). Metrics every
update: loss, rewards/{chosen, rejected, margin, accuracy}, logps/*, grad_norm (and round/* for
sampled pairs); every config.eval.every_steps: eval/pair_{loss, accuracy, margin, chosen, rejected}
on the held-out pairs (implicit rewards against the initial policy), eval/accuracy (greedy, on
config.eval.num_problems held-out problems; tasks with answers), eval/response_length and, with
config.eval.rm_source, eval/rm_score (that reward model's mean score of the greedy responses:
HH-RLHF's measure, comparable with a PPO run's on the same prompts). Resumes from WORKDIR's
newest checkpoint (policy, reference when refreshed, data position, round); exports the final
policy (WORKDIR/params).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlr.config import ConfigError, to_config_dict, to_dataclass
from rlr.data import synthetic
from rlr.data.batching import bucket_length
from rlr.data.tokenizer import Tokenizer
from rlr.models import Transformer
from rlr.parallel import process_rows, shard_batch
from rlr.parallel.memory import estimate_memory
from rlr.sampling import Sampler, bucket_length as sampler_bucket
from rlr.train import common, dpo_step, label, params_io, sequences, tasks
from rlr.train.accumulate import combine_metrics
from rlr.train.metrics import MetricsWriter
from rlr.train.optim import as_optim_config, make_optimizer
from rlr.train.preferences import (FLAWED_MODES, Pair, PairRows, best_worst_pairs, corrupt_pairs,
                                   dataset_pairs, encode_pairs, eval_batches, hold_out,
                                   labelled_pairs, pair_iterator, read_pairs, write_pairs)
from rlr.train.sft import check_batch_size
from rlr.train.state import create_train_state

log = logging.getLogger(__name__)

PAIR_SOURCES = ("corrupt", "labelled", "hh_rlhf", "preference_pairs", "sampled")
PAIRS_DIR = "pairs"  # WORKDIR/pairs/round_<r>.jsonl: the pairs of each sampled round


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """The dpo group of an experiment (config.dpo); `dpo_group()` makes its ConfigDict."""

    policy_source: str = ""  # initial policy = reference: rlr run dir, HF dir; "" = config.model.hf_checkpoint
    pairs: str = "corrupt"  # where pairs come from: corrupt | labelled | hh_rlhf | preference_pairs | sampled
    data_path: str = ""  # labelled: labelled.jsonl or its run dir; hh_rlhf / preference_pairs: upstream files ("" = config.data.manual_dir)
    corruptions: tuple = FLAWED_MODES  # corrupt: the rlr.data.synthetic.corrupt modes of rejected solutions
    pairs_per_prompt: int = 1  # corrupt / labelled: the most pairs made of one question
    max_prompt_len: int = 0  # > 0: a longer prompt keeps its last this many tokens; 0: no limit
    eval_pairs: int = 64  # held-out pairs evaluated (loss, reward accuracy, margin); 0: none
    num_steps: int = 400  # optimizer updates, all rounds together
    batch_size: int = 32  # pairs an update, all hosts; a multiple of the mesh's data x fsdp
    loss: str = "sigmoid"  # sigmoid | cdpo | robust | ipo | hinge (rlr.losses.dpo) | simpo (no reference)
    beta: float = 0.1  # KL coefficient (DPO kinds) / reward scale (SimPO)
    label_smoothing: float = 0.0  # cdpo / robust: the assumed label-flip rate eps in [0, 0.5)
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    average_logps: bool = False  # DPO kinds: score a response by its mean token log-prob (IPO as stated)
    logprob_chunk: int = 128  # time chunk of the log-prob computation
    iterations: int = 1  # sampled: rounds of sample -> rank -> update (num_steps / iterations updates each)
    prompts_per_iteration: int = 64  # sampled: train problems sampled a round
    num_samples: int = 4  # sampled: responses a problem, the best and the worst become a pair
    temperature: float = 1.0  # sampled: sampling temperature
    # sampled: prefill prompts this many tokens at a time (SamplingConfig.prefill_chunk; the
    # sampler's prompt buckets are powers of two): the prefill's memory falls from ~P^2 to ~C P
    prefill_chunk: int = 0
    sample_batch_size: int = 32  # sampled: prompts a sampling / scoring call; a multiple of data x fsdp
    rm_source: str = ""  # sampled: an outcome RM (rlr run, or HF checkpoint of its own shape) that ranks the samples; "" = the answer checker
    rm_tokenizer: str = ""  # the tokenizer (and chat format) rm_source reads samples with: a tokenizer file or checkpoint dir; "" = the policy's
    refresh_reference: bool = False  # sampled: the policy at the start of each round becomes the reference
    reference_chosen: bool = False  # sampled, checker-ranked: no correct sample -> reference solution over a sample

    def __post_init__(self):
        object.__setattr__(self, "corruptions", tuple(self.corruptions))
        checks = [
            (self.pairs in PAIR_SOURCES, "pairs", f"one of {PAIR_SOURCES}"),
            (self.pairs != "labelled" or bool(self.data_path), "data_path",
             "a labelled.jsonl or a label run directory (config.dpo.pairs='labelled')"),
            (bool(self.corruptions) and set(self.corruptions) <= set(synthetic.CORRUPTION_MODES),
             "corruptions", f"a non-empty subset of {synthetic.CORRUPTION_MODES}"),
            (self.iterations >= 1, "iterations", ">= 1"),
            (self.iterations == 1 or self.pairs == "sampled", "iterations",
             "1 unless config.dpo.pairs='sampled' (offline pairs do not change between rounds)"),
            (self.num_steps >= 1 and self.num_steps % self.iterations == 0, "num_steps",
             f"a positive multiple of config.dpo.iterations={self.iterations}"),
            (self.num_samples >= 2, "num_samples", ">= 2 (a pair needs two responses)"),
            (self.prefill_chunk >= 0 and not self.prefill_chunk & (self.prefill_chunk - 1),
             "prefill_chunk", "0 (one pass) or a power of two (it must divide the sampler's "
             "power-of-two prompt buckets)"),
            (not self.rm_source or self.pairs == "sampled", "rm_source",
             "'' unless config.dpo.pairs='sampled' (it ranks sampled responses)"),
            (not self.rm_tokenizer or self.rm_source, "rm_tokenizer",
             "'' unless config.dpo.rm_source is set (the tokenizer that reward model reads)"),
            (not self.refresh_reference or self.pairs == "sampled", "refresh_reference",
             "False unless config.dpo.pairs='sampled' (the reference is refreshed each round)"),
            (not self.reference_chosen or (self.pairs == "sampled" and not self.rm_source),
             "reference_chosen", "False unless config.dpo.pairs='sampled' with the answer checker "
             "(rm_source='': 'no correct sample' needs its 1 / 0 verdicts)"),
            (self.label_smoothing == 0 or self.loss in ("cdpo", "robust"), "label_smoothing",
             "0 unless config.dpo.loss is cdpo or robust"),
        ]
        checks += [(getattr(self, name) >= 1, name, ">= 1") for name in
                   ("pairs_per_prompt", "batch_size", "prompts_per_iteration", "sample_batch_size")]
        checks += [(getattr(self, name) >= 0, name, ">= 0") for name in ("max_prompt_len", "eval_pairs")]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"config.dpo.{name}={getattr(self, name)!r}: expected {expected}")
        try:
            self.preference()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def preference(self) -> dpo_step.PreferenceConfig:
        """The objective's static settings (the jitted step's)."""
        return dpo_step.PreferenceConfig(loss=self.loss, beta=self.beta,
                                         label_smoothing=self.label_smoothing,
                                         simpo_gamma=self.simpo_gamma,
                                         average_logps=self.average_logps,
                                         logprob_chunk=self.logprob_chunk)

    @property
    def steps_per_round(self) -> int:
        return self.num_steps // self.iterations


def dpo_group(**changes) -> ml_collections.ConfigDict:
    """The config.dpo group: the fields (and defaults) of DPOConfig, with `changes`."""
    return to_config_dict(DPOConfig(**changes))


def as_dpo_config(values: Any) -> DPOConfig:
    """A DPOConfig from config.dpo (a ConfigDict or dict); an unknown key is an error naming it."""
    return values if isinstance(values, DPOConfig) else to_dataclass(DPOConfig, values, where="dpo")


# ----------------------------------------------------------------------------- sampled pairs


def checker_scores(data: Any) -> common.ExampleScoreFn:
    """score(examples, responses) -> 1 / 0 per response: tasks.answer_correct."""
    def score(examples, responses):
        return [[float(tasks.answer_correct(data, e, r)) for r in rs] for e, rs in zip(examples, responses)]

    return score


def sample_pairs(sampler: Sampler, params: Any, tokenizer: Tokenizer, data: Any,
                 examples: Sequence[tasks.TaskExample], score_fn: common.ExampleScoreFn, rng: jax.Array,
                 batch_size: int, seed: Any, reference_chosen: bool = False
                 ) -> tuple[list[Pair], dict[str, float]]:
    """Sample sampler.config.num_samples responses to each example's prompt with `params`, score
    them with score_fn and pair the best with the worst (best_worst_pairs; ties broken by
    numpy's default_rng(seed)); reference_chosen: the example's reference solution is the chosen
    one where no sample is correct. Returns (pairs, stats: round/score (mean score of the
    samples), round/pairs, round/reference_pairs (those with the reference chosen), round/prompts)."""
    d = tasks.as_data_config(data)
    prompts = [sequences.prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
    responses = common.generate_texts(sampler, params, tokenizer, prompts, rng, batch_size, d.prompt_bucket)
    scores = score_fn(examples, responses)
    references = [e.solution for e in examples] if reference_chosen else None
    pairs = best_worst_pairs(prompts, responses, scores, seed, references)
    mean = float(np.mean([v for row in scores for v in row])) if scores else 0.0
    num_reference = sum(reference_chosen and max(row, default=0.0) <= 0 for row in scores)
    return pairs, {"round/score": mean, "round/pairs": float(len(pairs)),
                   "round/reference_pairs": float(num_reference), "round/prompts": float(len(prompts))}


def round_examples(examples: Sequence[tasks.TaskExample], round_index: int, count: int,
                   seed: int) -> list[tasks.TaskExample]:
    """The `count` train problems of round `round_index`: consecutive slices of one seeded
    permutation of the problems, wrapping around."""
    order = np.random.default_rng(seed).permutation(len(examples))
    start = round_index * count
    return [examples[order[(start + i) % len(examples)]] for i in range(count)]


def round_file(workdir: str, round_index: int) -> str:
    return os.path.join(workdir, PAIRS_DIR, f"round_{round_index:03d}.jsonl")


# ----------------------------------------------------------------------------- the loop


class _Data(NamedTuple):
    """What the loop reads: train pairs (None for sampled rounds), held-out pairs, held-out
    problems of the greedy accuracy, train problems of the sampled rounds."""

    train: Optional[list[Pair]]
    held_out: list[Pair]
    eval_examples: list[tasks.TaskExample]
    train_examples: list[tasks.TaskExample]


def _offline_pairs(config: ml_collections.ConfigDict, c: DPOConfig, tokenizer: Tokenizer,
                   data: tasks.DataConfig) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs of the offline sources."""
    if c.pairs == "corrupt":
        if data.task != "synthetic":
            raise ConfigError(f"config.dpo.pairs='corrupt' corrupts synthetic-task solutions; "
                              f"config.data.task={data.task!r}")
        train = corrupt_pairs(tasks.synthetic_problems(data, "train"), tokenizer, data,
                              c.corruptions, c.pairs_per_prompt, config.seed)
        held = corrupt_pairs(tasks.synthetic_problems(data, "eval"), tokenizer, data,
                             c.corruptions, 1, config.seed + 1)[:c.eval_pairs]
        return train, held
    if c.pairs == "labelled":
        records = label.read_labelled(c.data_path, "dpo.data_path")
        grouped = labelled_pairs(records, tokenizer, data, c.pairs_per_prompt, config.seed)
        return hold_out(grouped, c.eval_pairs, config.seed)
    train = dataset_pairs(c.pairs, data.train_split, tokenizer, data, c.data_path)
    held = dataset_pairs(c.pairs, data.eval_split, tokenizer, data, c.data_path,
                         limit=c.eval_pairs) if c.eval_pairs else []
    return train, held


def _task_examples(config: ml_collections.ConfigDict, data: tasks.DataConfig,
                   sampled: bool) -> tuple[list[tasks.TaskExample], list[tasks.TaskExample]]:
    """(train problems (sampled rounds only), the held-out examples of the greedy evaluation:
    tasks.prompt_examples, so HH-RLHF's test dialogues too)."""
    if sampled and data.task not in tasks.TASKS:
        raise ConfigError(f"config.dpo.pairs='sampled' samples answers to problems; "
                          f"config.data.task={data.task!r} is not one of {tasks.TASKS}")
    num = config.eval.num_problems
    held = tasks.prompt_examples(data, "eval", limit=num) \
        if num and data.task in tasks.PROMPT_TASKS else []
    return (tasks.task_examples(data, "train") if sampled else []), held


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run DPO (config.dpo, config.data, config.optim, config.eval) in `workdir`: offline on the
    pairs of config.dpo.pairs, or iteratively on sampled ones; resumes from the newest
    checkpoint; exports the final policy. Returns the final metrics."""
    s = common.setup(config)
    c = as_dpo_config(config.dpo)
    data = tasks.as_data_config(config.data)
    pref = c.preference()
    sampled = c.pairs == "sampled"
    optim = as_optim_config(config.optim)
    check_batch_size(c.batch_size, s.mesh, "dpo.batch_size", optim.grad_accum_steps)
    check_batch_size(config.eval.batch_size, s.mesh, "eval.batch_size")
    if sampled:
        check_batch_size(c.sample_batch_size, s.mesh, "dpo.sample_batch_size")
    train_examples, eval_examples = _task_examples(config, data, sampled)
    train_pairs, held_out = (None, []) if sampled else _offline_pairs(config, c, s.tokenizer, data)
    if train_pairs is not None and not train_pairs:
        raise ConfigError(f"config.dpo.pairs={c.pairs!r}: no training pairs ({len(held_out)} held out "
                          f"by config.dpo.eval_pairs={c.eval_pairs}; a labelled question gives pairs "
                          f"only when it has a correct and an incorrect response)")

    model = Transformer(s.model_config)
    init_rng, state_rng, sample_rng, eval_rng, rm_rng = jax.random.split(s.rng, 5)
    source, key = params_io.config_source(config, "dpo.policy_source", "model.hf_checkpoint")
    params = params_io.load_params(model, source, s.mesh, init_rng, s.tokenizer, key=key)
    # A copy: the train step donates the policy's buffers.
    reference = jax.tree.map(jnp.copy, params) if pref.uses_reference else None
    optimizer = make_optimizer(optim)
    state = {"policy": create_train_state(params, optimizer, state_rng)}
    if sampled and c.refresh_reference and pref.uses_reference:
        state["reference"] = reference

    references = (reference is not None) + ("reference" in state)  # the initial one stays too
    # the sampled rounds' ranking RM, and the greedy evaluation's own copy of eval.rm_source
    scorers = ([params_io.source_shape(c.rm_source, s.model_config, key="dpo.rm_source")]
               if sampled and c.rm_source else [])
    scorers += common.eval_reward_models(config, s.model_config) if eval_examples else []

    @functools.cache
    def log_memory(seq_len: int, rollout: Optional[tuple[int, int, int, int]] = None) -> None:
        """The memory estimate of a step on pairs of seq_len tokens (once a shape: when it
        compiles), and of the rounds' sampling."""
        common.log_memory_estimate("dpo", estimate_memory(
            s.model_config, s.mesh, 2 * c.batch_size, seq_len, optimizer=optimizer,
            references=references, scorers=scorers, rollout=rollout,
            prefill_chunk=c.prefill_chunk, chunk_size=c.logprob_chunk,
            grad_accum_steps=optim.grad_accum_steps), s.mesh)

    prompt_length = response_length = None
    if sampled:
        sampling = _sampled_rounds(config, c, s, model, data, train_examples, eval_examples, params,
                                   sample_rng, rm_rng)
        make_round, prompt_length, response_length = sampling[:3]
        held_out = sampling.held_out
        log_memory(prompt_length + response_length,
                   (c.sample_batch_size, sampler_bucket(prompt_length), response_length,
                    c.num_samples))
    else:
        def make_round(r: int, policy_params: Any) -> tuple[list[Pair], dict]:
            return train_pairs, {}
    log.info("DPO on %s pairs: %s train, %d held out", c.pairs,
             "sampled" if sampled else len(train_pairs), len(held_out))

    def encode(pairs: Sequence[Pair]) -> PairRows:
        return encode_pairs(s.tokenizer, pairs, data, c.max_prompt_len, prompt_length, response_length,
                            max_prompt_key="config.dpo.max_prompt_len")

    step = jax.jit(functools.partial(dpo_step.train_step, model=model, optimizer=optimizer, config=pref,
                                     grad_accum_steps=optim.grad_accum_steps), donate_argnums=0)
    writer = MetricsWriter(workdir)
    rounds = _Rounds(c, config.seed, workdir, make_round, encode, writer, config.logging.num_samples)

    def step_fn(state, i):
        if "reference" in state and i > 0 and i % c.steps_per_round == 0:  # a round starts
            state = {**state, "reference": jax.tree.map(jnp.copy, state["policy"].params)}
        batch, stats = rounds.batch(i, state["policy"].params)
        if batch is None:  # a sampled round without a single pair: nothing to learn from
            return state, {**stats, "pairs": 0.0}
        if not sampled:
            log_memory(batch.prompt_tokens.shape[1] + batch.chosen_tokens.shape[1])
        with common.model_context(s.mesh):
            policy, metrics = step(state["policy"], state.get("reference", reference),
                                   shard_batch(batch, s.mesh))
        return {**state, "policy": policy}, {**metrics, **stats}

    evaluate = _make_evaluate(config, s, model, pref, encode(held_out) if held_out else None,
                              eval_examples, reference, writer, eval_rng)
    try:
        state, final = common.run_loop(
            config, workdir, state, step_fn, c.num_steps, on_restore=rounds.restore,
            extra_fn=rounds.state_dict, eval_fn=evaluate, eval_every=config.eval.every_steps,
            progress_keys=("loss", "rewards/accuracy", "rewards/margin"), writer=writer)
    finally:
        writer.close()
    params_io.export_params(workdir, state["policy"].params, s.model_config, s.tokenizer)
    return final


class _Sampling(NamedTuple):
    """What the sampled rounds need: make_round(r, policy params) -> (pairs, stats), the fixed
    prompt / response lengths of their arrays, and the held-out pairs."""

    make_round: Callable[[int, Any], tuple[list[Pair], dict]]
    prompt_length: int
    response_length: int
    held_out: list[Pair]


def _sampled_rounds(config: ml_collections.ConfigDict, c: DPOConfig, s: common.Setup,
                    model: Transformer, data: tasks.DataConfig,
                    train_examples: Sequence[tasks.TaskExample],
                    eval_examples: Sequence[tasks.TaskExample], initial_params: Any,
                    sample_rng: jax.Array, rm_rng: jax.Array) -> _Sampling:
    """The sampler and scorer of iterative DPO (the answer checker, or common.judge_scorer of the
    outcome reward model of config.dpo.rm_source), and the held-out pairs: sampled once from the
    initial policy on the held-out problems, sample_batch_size problems at a time until there
    are eval_pairs (deterministic, so a resumed run gets the same ones)."""
    all_prompts = [sequences.prompt_text(s.tokenizer, e.question, data.prompt_template)
                   for e in list(train_examples) + list(eval_examples)]
    # One shape for every round: the longest prompt (cut pairs are padded back to it).
    prompt_length = sequences.encode_prompts(s.tokenizer, all_prompts, data.prompt_bucket)[0].shape[1]
    response_length = bucket_length(data.max_response_len, data.response_bucket)
    sampler = Sampler(model, common.sampling_config(s.tokenizer, data, c.temperature, c.num_samples,
                                                    prefill_chunk=c.prefill_chunk), s.mesh)
    score_fn = (common.judge_scorer(s, c.rm_source, c.rm_tokenizer, "dpo", data,
                                    list(train_examples) + list(eval_examples),
                                    c.sample_batch_size * c.num_samples, rm_rng)
                if c.rm_source else checker_scores(data))

    def make_round(r: int, policy_params: Any) -> tuple[list[Pair], dict]:
        examples = round_examples(train_examples, r, c.prompts_per_iteration, config.seed)
        pairs, stats = sample_pairs(sampler, policy_params, s.tokenizer, data, examples, score_fn,
                                    jax.random.fold_in(sample_rng, r + 1), c.sample_batch_size,
                                    (config.seed, r + 1), c.reference_chosen)
        if not pairs:
            log.warning("round %d: no pair among %d prompts (every response scored alike); its "
                        "updates are skipped", r, len(examples))
        return pairs, stats

    held_out: list[Pair] = []  # sampled a call at a time until there are eval_pairs
    for start in range(0, len(eval_examples) if c.eval_pairs else 0, c.sample_batch_size):
        if len(held_out) >= c.eval_pairs:
            break
        pairs, _ = sample_pairs(sampler, initial_params, s.tokenizer, data,
                                eval_examples[start:start + c.sample_batch_size], score_fn,
                                jax.random.fold_in(jax.random.fold_in(sample_rng, 0), start),
                                c.sample_batch_size, (config.seed, 0, start), c.reference_chosen)
        held_out.extend(pairs)
    return _Sampling(make_round, prompt_length, response_length, held_out[:c.eval_pairs])


class _Rounds:
    """The pairs of the current round and this host's batches over them: round r covers updates
    [r * steps_per_round, (r + 1) * steps_per_round). A new round's pairs come from make_round(r,
    policy params) (sampled rounds also write them to WORKDIR/pairs/round_<r>.jsonl, which a
    resume in the middle of the round reads back); state_dict / restore carry the position."""

    def __init__(self, c: DPOConfig, seed: int, workdir: str,
                 make_round: Callable[[int, Any], tuple[list[Pair], dict]],
                 encode: Callable[[Sequence[Pair]], PairRows], writer: MetricsWriter, num_samples: int):
        self.c, self.seed, self.workdir = c, seed, workdir
        self.make_round, self.encode, self.writer, self.num_samples = make_round, encode, writer, num_samples
        self.index, self.rows, self.iterator, self.stats = -1, None, None, {}
        self.saved: Optional[dict] = None  # a restored position, used by the next batch

    def _start(self, r: int, params: Any, step: int) -> None:
        sampled = self.c.pairs == "sampled"
        resume = self.saved is not None and self.saved.get("round") == r
        if resume and sampled:
            pairs, self.stats = read_pairs(round_file(self.workdir, r)), dict(self.saved["stats"])
        else:
            pairs, self.stats = self.make_round(r, params)
            if sampled:
                write_pairs(round_file(self.workdir, r), pairs)
                self.writer.write_samples(step, [{"round": r, **p._asdict()}
                                                 for p in pairs[:self.num_samples]])
        self.index, self.rows, self.iterator = r, (self.encode(pairs) if pairs else None), None
        if self.rows is not None:
            self.iterator = pair_iterator(self.rows, self.c.batch_size, self.seed + r,
                                          self.saved["data"] if resume and self.saved.get("data") else None)
        self.saved = None

    def batch(self, step: int, params: Any) -> tuple[Optional[dpo_step.PairBatch], dict]:
        """The next batch of update `step` (None when its round has no pair) and the round's stats."""
        r = step // self.c.steps_per_round
        if r != self.index:
            self._start(r, params, step)
        return (next(self.iterator) if self.iterator is not None else None), self.stats

    def state_dict(self) -> dict:
        return {"round": self.index, "stats": self.stats,
                "data": self.iterator.state_dict() if self.iterator is not None else None}

    def restore(self, extra: dict) -> None:
        """Continue from a checkpoint's extra (nothing on a fresh start). A checkpoint at a round's
        end leaves the next round to be made afresh from the restored policy."""
        if "round" in extra:
            self.saved = extra


def _make_evaluate(config: ml_collections.ConfigDict, s: common.Setup, model: Transformer,
                   pref: dpo_step.PreferenceConfig, held_out: Optional[PairRows],
                   examples: Sequence[tasks.TaskExample], initial_reference: Any,
                   writer: MetricsWriter, rng: jax.Array):
    """evaluate(state, step) -> held-out pair metrics (pair_loss, pair_accuracy (implicit reward
    accuracy), pair_margin, pair_chosen, pair_rejected; always against the initial policy, so
    rounds with a refreshed reference stay comparable) and common.greedy_eval's accuracy,
    response_length and rm_score (config.eval.rm_source) on `examples`; every greedy reply to
    samples.jsonl. None when there is nothing to evaluate."""
    if held_out is None and not examples:
        return None
    data = tasks.as_data_config(config.data)
    batch_size = config.eval.batch_size
    batches = eval_batches(held_out, batch_size) if held_out is not None else []
    rows = process_rows(batch_size, s.mesh)  # the pairs of each batch this process feeds
    # Each whole batch's pairs weigh its pair means: the means over all held-out pairs at once.
    pairs = np.array([np.sum(batch.pair_mask) for batch in batches], np.float32)
    weights = pairs / max(pairs.sum(), 1.0)
    metrics_fn = jax.jit(functools.partial(dpo_step.eval_step, model=model, config=pref))
    sampler = score_fn = None
    if examples:
        sampler = Sampler(model, common.sampling_config(s.tokenizer, data, temperature=0.0), s.mesh)
        score_fn = common.eval_scorer(config, s, examples, jax.random.fold_in(rng, 1))
    names = {"loss": "pair_loss", "rewards/accuracy": "pair_accuracy", "rewards/margin": "pair_margin",
             "rewards/chosen": "pair_chosen", "rewards/rejected": "pair_rejected"}

    def evaluate(state: dict, step: int) -> dict:
        params = state["policy"].params
        out: dict[str, float] = {}
        if batches:
            with common.model_context(s.mesh):
                per_batch = jax.device_get([
                    metrics_fn(params, initial_reference,
                               shard_batch(jax.tree.map(lambda x: x[rows], batch), s.mesh))
                    for batch in batches])
            combined = combine_metrics({key: np.array([m[key] for m in per_batch]) for key in names},
                                       weights)
            out.update({name: float(combined[key]) for key, name in names.items()})
        if examples:
            metrics, records = common.greedy_eval(sampler, params, s.tokenizer, data, examples, rng,
                                                  batch_size, score_fn)
            writer.write_samples(step, records)
            out.update(metrics)
        return out

    return evaluate

"""Reward-model training: an outcome RM (BCE on correctness, or Bradley-Terry on pairs) or a process RM.

    rlr --config experiments/orm.py --config.rm.data_path=runs/label --workdir runs/orm
    rlr --config experiments/prm.py --config.rm.data_path=runs/label --workdir runs/prm

The model is a Transformer with a score head (one logit a token), initialised from
config.rm.init_source (an SFT run's "lm" export keeps the decoder and gets a fresh score head).
Objectives (config.rm.kind, config.rm.orm_loss; rlr/train/rm_step.py):

- ORM, "bce" (Cobbe et al. 2021): BCE of the logit at the response's last token (its eos)
  against the final answer's correctness.
- ORM, "bradley_terry" (Ouyang et al. 2022): -log sigmoid(r_w - r_l) on (right, wrong) response
  pairs of one question (from labelled data), or on the chosen / rejected replies of a
  preference dataset (hh_rlhf, preference_pairs).
- PRM (Lightman et al. 2023): BCE of the logit at each step's end token against the step label.
  Steps are the response's lines (rlr.rewards.segment.split_steps at "\\n", as PPO reads the PRM,
  rlr/train/rollout_scoring.py); see `segment_labels` for how labels meet lines.

Data: config.rm.data_path, a labelled.jsonl (or a label run's workdir, rlr/train/label.py), or a
rlr.data.datasets.load_split set config.rm.dataset (math_shepherd / prm800k for a PRM, hh_rlhf /
preference_pairs for a Bradley-Terry RM) read from config.data.data_dir and config.rm.manual_dir
(builder config config.data.dataset_config).
config.rm.eval_fraction of the questions (never split across the two sides) is held out:
eval/accuracy (ORM: the verdict's sign matches the label; Bradley-Terry: pairs ranked right; PRM:
steps right), eval/loss, and for a PRM eval/first_error_accuracy. At the end the params are
exported (WORKDIR/params) for PPO (config.rewards.orm_source / prm_source), and with
config.rm.best_of_n = N > 0 the best-of-N accuracy on config.eval.num_problems held-out problems
is logged (best_of_n).

Axes: N rows, E problems, n samples a problem, P prompt slots, R response slots, K steps.
"""
from __future__ import annotations

import collections
import functools
import logging
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlr.config import ConfigError
from rlr.data.batching import BatchIterator
from rlr.data.tokenizer import Tokenizer
from rlr.losses.reward_model import bradley_terry_loss, outcome_bce_loss, process_bce_loss
from rlr.models import Transformer
from rlr.parallel import gather_rows, shard_batch
from rlr.parallel.memory import MemoryEstimate, estimate_memory
from rlr.rewards.segment import split_steps
from rlr.rewards.verifier import extract_answer, normalize_answer
from rlr.sampling import Sampler
from rlr.train import common, params_io, rm_step, sequences, tasks
from rlr.train import preferences
from rlr.train.label import Labelled, read_labelled
from rlr.train.metrics import MetricsWriter
from rlr.train.optim import as_optim_config, make_optimizer
from rlr.train.sft import check_batch_size
from rlr.train.state import create_train_state

log = logging.getLogger(__name__)

KINDS = ("orm", "prm")
ORM_LOSSES = ("bce", "bradley_terry")
DATASETS = {"math_shepherd": "process_bce", "prm800k": "process_bce",  # load_split name -> objective
            "hh_rlhf": "bradley_terry", "preference_pairs": "bradley_terry"}
PRM_AGGREGATES = ("min", "product")
STEP_DELIMITER = "\n"  # a step is a line, as PPO reads the PRM
Rows = dict[str, np.ndarray]  # arrays with a leading row axis N


# ----------------------------------------------------------------------------- config


def objective(rm: Any) -> str:
    """The rm_step objective of config.rm: kind "orm" -> orm_loss "bce" -> outcome_bce,
    "bradley_terry" -> bradley_terry; kind "prm" -> process_bce."""
    if rm.kind not in KINDS:
        raise ConfigError(f"config.rm.kind={rm.kind!r}: expected one of {KINDS}")
    if rm.kind == "prm":
        return "process_bce"
    if rm.orm_loss not in ORM_LOSSES:
        raise ConfigError(f"config.rm.orm_loss={rm.orm_loss!r}: expected one of {ORM_LOSSES}")
    return "outcome_bce" if rm.orm_loss == "bce" else "bradley_terry"


# ----------------------------------------------------------------------------- records


class Pair(NamedTuple):
    """Two responses to a question, the first preferred."""

    question: str
    chosen: str
    rejected: str


def _process_record(record: dict) -> tuple[Labelled, int]:
    """A math_shepherd / prm800k record as a Labelled response: one line a step (a newline
    inside a step becomes a space, so lines and labels match; empty steps are left out, and
    counted); correct = every step right."""
    kept = [(" ".join(text.split("\n")).strip(), int(label))
            for text, label in zip(record["steps"], np.asarray(record["step_labels"]).tolist())]
    steps = [(text, label) for text, label in kept if text]
    labels = tuple(label for _, label in steps)
    response = STEP_DELIMITER.join(text for text, _ in steps)
    return Labelled(record["prompt"], response, all(labels), labels), len(kept) - len(steps)


def read_dataset(rm: Any, data: Any) -> tuple[list, dict]:
    """The records of config.rm.dataset (split config.rm.split; config.rm.max_examples of them
    spread evenly over it when > 0, rlr.data.datasets.spread_indices): Labelled responses (PRM
    sets) or Pairs (preference sets), and counts to log."""
    from rlr.data.datasets import load_split, spread_indices

    d = tasks.as_data_config(data)
    if not d.data_dir:
        raise ConfigError(f"config.rm.dataset={rm.dataset!r}: set config.data.data_dir (where "
                          f"load_split prepares it)")
    source = load_split(rm.dataset, rm.split, d.data_dir, rm.manual_dir or d.manual_dir or None,
                        config=d.dataset_config or None)
    raw = source.__getitems__(spread_indices(len(source), rm.max_examples if rm.max_examples > 0 else None))
    if DATASETS[rm.dataset] == "bradley_terry":
        return [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in raw], {}
    converted = [_process_record(r) for r in raw]
    dropped = sum(n for _, n in converted)
    if dropped:
        log.warning("%s: left out %d empty steps", rm.dataset, dropped)
    return [r for r, _ in converted], {"data/empty_steps": dropped}


def outcome_pairs(records: Sequence[Labelled]) -> list[Pair]:
    """(right, wrong) pairs of responses to one question, for a Bradley-Terry ORM: with c right
    and w wrong responses (c, w > 0), the max(c, w) pairs (right[i mod c], wrong[i mod w]), so
    every response is used; questions with only right or only wrong responses give none."""
    groups: dict[str, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
    for r in records:
        groups[r.question][0 if r.correct else 1].append(r.response)
    pairs = []
    for question, (right, wrong) in groups.items():
        if right and wrong:
            pairs += [Pair(question, right[i % len(right)], wrong[i % len(wrong)])
                      for i in range(max(len(right), len(wrong)))]
    return pairs


def split_by_question(questions: Sequence[str], fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) row indices: round(fraction * U) of the U distinct questions (at least one
    when fraction > 0 and U > 1), drawn with `seed`, are held out with all their rows."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"config.rm.eval_fraction={fraction}: expected 0 <= fraction < 1")
    unique = list(dict.fromkeys(questions))
    num_eval = int(round(fraction * len(unique)))
    if fraction > 0 and len(unique) > 1:
        num_eval = min(max(num_eval, 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    held_out = {unique[i] for i in order[:num_eval]}
    is_eval = np.array([q in held_out for q in questions], bool)
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def segment_labels(response: str, step_labels: Sequence[int], correct: bool) -> list[Optional[int]]:
    """The label of each line-step of a response (split_steps at "\\n", what PPO scores with the
    PRM): step_labels for the first len(step_labels) lines (the steps before the answer line, as
    rlr.data.synthetic.check_steps counts them); the next line, the answer line when there is
    one, gets the final answer's correctness; lines after it are unlabelled (None)."""
    n = len(split_steps(response, STEP_DELIMITER))
    labels: list[Optional[int]] = [int(x) for x in step_labels[:n]]
    if n > len(labels):
        labels.append(int(correct))
    return labels + [None] * (n - len(labels))


# ----------------------------------------------------------------------------- rows


def response_rows(tokenizer: Tokenizer, data: Any, questions: Sequence[str],
                  responses: Sequence[str], max_prompt_len: int = 0) -> Rows:
    """Model inputs of (question, response) rows: prompt_tokens / prompt_mask [N, P] (the
    question in the prompt format of config.data, left-padded; cut to its last max_prompt_len
    tokens when > 0), response_tokens / response_mask [N, R] (the response + eos, right-padded,
    cut to config.data.max_response_len)."""
    d = tasks.as_data_config(data)
    texts = [sequences.prompt_text(tokenizer, q, d.prompt_template) for q in questions]
    prompt_tokens, prompt_mask = sequences.keep_last_tokens(
        *sequences.encode_prompts(tokenizer, texts, d.prompt_bucket), max_prompt_len,
        "config.rm.max_prompt_len")
    response_tokens, response_mask = sequences.encode_responses(tokenizer, responses, d.response_bucket,
                                                                max_len=d.max_response_len)
    return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
            "response_tokens": response_tokens, "response_mask": response_mask}


def outcome_rows(tokenizer: Tokenizer, data: Any, records: Sequence[Labelled],
                 max_prompt_len: int = 0) -> Rows:
    """response_rows plus labels [N] float32 (correct) and row_mask [N] (all True)."""
    rows = response_rows(tokenizer, data, [r.question for r in records],
                         [r.response for r in records], max_prompt_len)
    rows["labels"] = np.array([r.correct for r in records], np.float32)
    rows["row_mask"] = np.ones(len(records), bool)
    return rows


def step_positions(tokenizer: Tokenizer, rows: Rows, max_steps: int) -> tuple[Rows, np.ndarray]:
    """rows plus step_positions [N, K] and step_mask [N, K] (sequences.step_end_positions of the
    encoded responses), and the number of line-steps of each encoded response [N] (dropped
    middle steps included, see rlr.rewards.segment.step_arrays)."""
    positions, mask, dropped = sequences.step_end_positions(tokenizer, rows["response_tokens"],
                                                            rows["response_mask"], max_steps,
                                                            STEP_DELIMITER)
    return {**rows, "step_positions": positions, "step_mask": mask}, mask.sum(axis=1) + dropped


def process_rows(tokenizer: Tokenizer, data: Any, records: Sequence[Labelled], max_steps: int,
                 max_prompt_len: int = 0) -> Rows:
    """response_rows plus step_positions [N, K], step_labels [N, K] float32 (segment_labels of
    each response, kept for the steps its encoding keeps) and step_mask [N, K] (labelled steps)."""
    rows = response_rows(tokenizer, data, [r.question for r in records],
                         [r.response for r in records], max_prompt_len)
    rows, num_steps = step_positions(tokenizer, rows, max_steps)
    labels = np.zeros(rows["step_mask"].shape, np.float32)
    labelled = np.zeros(rows["step_mask"].shape, bool)
    for i, (r, n) in enumerate(zip(records, num_steps)):
        row = segment_labels(r.response, r.step_labels, r.correct)[:n]  # the encoded steps
        if len(row) > max_steps:  # as step_arrays keeps them: the first K - 1 and the last
            row = row[:max_steps - 1] + row[-1:]
        for k, label in enumerate(row):
            labels[i, k], labelled[i, k] = label or 0, label is not None
    rows["step_labels"] = labels
    rows["step_mask"] = rows["step_mask"] & labelled
    return rows


def pair_rows(tokenizer: Tokenizer, data: Any, pairs: Sequence[Pair], max_prompt_len: int = 0) -> Rows:
    """The fields of rlr.train.dpo_step.PairBatch for pairs (rlr.train.preferences.encode_pairs of
    their preferences.prompted_pair): prompt_tokens / prompt_mask [N, P],
    chosen_* and rejected_* [N, R] (one R for both), pair_mask [N] (all True)."""
    d = tasks.as_data_config(data)
    prompted = [preferences.prompted_pair(tokenizer, d.prompt_template, *p) for p in pairs]
    return preferences.encode_pairs(tokenizer, prompted, d, max_prompt_len,
                                    max_prompt_key="config.rm.max_prompt_len")


def _take(rows: Rows, index: np.ndarray) -> Rows:
    return {k: v[index] for k, v in rows.items()}


def _num_rows(rows: Rows) -> int:
    return len(next(iter(rows.values())))


def row_batches(rows: Rows, global_batch: int, seed: int, state: Optional[dict] = None) -> BatchIterator:
    """This host's shuffled batches of `rows` (any fields), epoch after epoch, from a saved
    position `state` (BatchIterator.state_dict) when given."""
    indices = np.arange(_num_rows(rows))

    def collate(chosen: list) -> Rows:
        return _take(rows, np.asarray(chosen))

    if state:
        return BatchIterator.from_state(state, indices, collate=collate)
    return BatchIterator(indices, global_batch // jax.process_count(), jax.process_index(),
                         jax.process_count(), seed=seed, collate=collate)


class RMData(NamedTuple):
    """The encoded train and held-out rows of a reward model run, and counts to log."""

    train: Rows
    eval: Optional[Rows]
    stats: dict


def rm_data(config: ml_collections.ConfigDict, tokenizer: Tokenizer, objective_name: str) -> RMData:
    """Read config.rm's data (data_path or dataset), split it by question (eval_fraction, seed)
    and encode both sides for `objective_name`."""
    c, data = config.rm, tasks.as_data_config(config.data)
    if bool(c.data_path) == bool(c.dataset):
        raise ConfigError(f"config.rm.data_path={c.data_path!r}, config.rm.dataset={c.dataset!r}: "
                          f"set exactly one (a labelled.jsonl / label run, or a load_split name)")
    stats: dict = {}
    if c.dataset:
        if c.dataset not in DATASETS:
            raise ConfigError(f"config.rm.dataset={c.dataset!r}: expected one of {sorted(DATASETS)}")
        if DATASETS[c.dataset] != objective_name:
            raise ConfigError(f"config.rm.dataset={c.dataset!r} trains the {DATASETS[c.dataset]} "
                              f"objective, but config.rm.kind / orm_loss ask for {objective_name}")
        records, stats = read_dataset(c, data)
    else:
        records = read_labelled(c.data_path, "rm.data_path")
        if objective_name == "process_bce" and not any(r.step_labels for r in records):
            raise ConfigError(f"config.rm.data_path={c.data_path!r}: no step labels (a label run of a "
                              f"real task labels outcomes only); a PRM needs config.rm.dataset")
        if objective_name == "bradley_terry":
            records = outcome_pairs(records)
            if not records:
                raise ConfigError(f"config.rm.data_path={c.data_path!r}: no question has both a right "
                                  f"and a wrong response, so there are no Bradley-Terry pairs")
    if objective_name == "outcome_bce":
        rows = outcome_rows(tokenizer, data, records, c.max_prompt_len)
    elif objective_name == "bradley_terry":
        rows = pair_rows(tokenizer, data, records, c.max_prompt_len)
    else:
        rows = process_rows(tokenizer, data, records, c.max_steps, c.max_prompt_len)
    train_index, eval_index = split_by_question([r.question for r in records], c.eval_fraction,
                                                config.seed)
    stats.update({"data/train_rows": len(train_index), "data/eval_rows": len(eval_index)})
    if objective_name == "outcome_bce":
        stats["data/positive_rate"] = float(rows["labels"].mean())
    if objective_name == "process_bce":
        stats["data/step_positive_rate"] = float(rows["step_labels"][rows["step_mask"]].mean())
    return RMData(_take(rows, train_index), _take(rows, eval_index) if len(eval_index) else None,
                  stats)


# ----------------------------------------------------------------------------- scoring


def score_rows(score_fn, params: Any, rows: Rows, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """score_fn(params, batch) -> dict of [B, ...] arrays over all rows, batch_size rows a call
    (common.global_batches: one compilation, the rows split between processes), concatenated
    on the host of every process."""
    outputs = collections.defaultdict(list)
    with common.model_context(mesh):
        for index, kept in common.global_batches(_num_rows(rows), batch_size, mesh):
            result = score_fn(params, shard_batch(_take(rows, index), mesh))
            for key, value in result.items():
                outputs[key].append(gather_rows(value)[:kept])
    return {k: np.concatenate(v) for k, v in outputs.items()}


def first_error_accuracy(step_scores: np.ndarray, step_labels: np.ndarray,
                         step_mask: np.ndarray) -> float:
    """Share of rows (with a labelled step) where the first step the PRM calls wrong (logit < 0)
    is the first step labelled wrong, "none" counting as an index of its own (Lightman et al.
    2023 judge a PRM by where it finds the first mistake)."""
    hits = []
    for scores, labels, mask in zip(step_scores, step_labels, np.asarray(step_mask, bool)):
        if not mask.any():
            continue
        predicted = [k for k in np.flatnonzero(mask) if scores[k] < 0][:1]
        actual = [k for k in np.flatnonzero(mask) if labels[k] < 0.5][:1]
        hits.append(predicted == actual)
    return float(np.mean(hits)) if hits else 0.0


def heldout_metrics(objective_name: str, scores: dict[str, np.ndarray], rows: Rows) -> dict:
    """Held-out metrics from the reward model's logits: the objective's loss and accuracy
    (rlr.losses.reward_model on all held-out rows at once), and for a PRM first_error_accuracy."""
    if objective_name == "outcome_bce":
        _, m = outcome_bce_loss(jnp.asarray(scores["verdict"]), jnp.asarray(rows["labels"]))
        return {"loss": m["loss"], "accuracy": m["accuracy"], "positive_rate": m["positive_rate"]}
    if objective_name == "bradley_terry":
        _, m = bradley_terry_loss(jnp.asarray(scores["chosen"]), jnp.asarray(scores["rejected"]))
        return {"loss": m["loss"], "accuracy": m["accuracy"], "margin": m["margin"]}
    step_scores = scores["step_scores"]
    positions = np.broadcast_to(np.arange(step_scores.shape[1]), step_scores.shape)
    _, m = process_bce_loss(jnp.asarray(step_scores), jnp.asarray(positions),
                            jnp.asarray(rows["step_labels"]), jnp.asarray(rows["step_mask"]))
    return {"loss": m["loss"], "accuracy": m["step_accuracy"],
            "first_error_accuracy": first_error_accuracy(step_scores, rows["step_labels"],
                                                         rows["step_mask"])}


def aggregate_steps(step_probs: np.ndarray, step_mask: np.ndarray, how: str = "min") -> np.ndarray:
    """A response's PRM score from its step scores [N, K] (probabilities): the min (the weakest
    step) or the product (Lightman et al. 2023: the probability that every step is right) over
    the valid steps; 0 for a response without steps."""
    if how not in PRM_AGGREGATES:
        raise ValueError(f"aggregate_steps: how={how!r}, expected one of {PRM_AGGREGATES}")
    mask = np.asarray(step_mask, bool)
    if how == "min":
        score = np.where(mask, step_probs, np.inf).min(axis=1)
    else:
        score = np.where(mask, step_probs, 1.0).prod(axis=1)
    return np.where(mask.any(axis=1), score, 0.0)


def response_rewards(scorer: Transformer, params: Any, tokenizer: Tokenizer, data: Any,
                     questions: Sequence[str], responses: Sequence[str], *, kind: str, mesh,
                     batch_size: int, max_steps: int = 16, prm_aggregate: str = "min",
                     max_prompt_len: int = 0) -> np.ndarray:
    """The reward model's score of each (question, response), float [N]: ORM sigmoid(verdict);
    PRM aggregate_steps (min or product) of sigmoid(step logits)."""
    if prm_aggregate not in PRM_AGGREGATES:
        raise ValueError(f"response_rewards: prm_aggregate={prm_aggregate!r}, expected one of "
                         f"{PRM_AGGREGATES}")
    name = "process_bce" if kind == "prm" else "outcome_bce"
    rows = response_rows(tokenizer, data, questions, responses, max_prompt_len)
    if kind == "prm":
        rows, _ = step_positions(tokenizer, rows, max_steps)
    score_fn = jax.jit(functools.partial(rm_step.eval_scores, model=scorer, objective=name))
    scores = score_rows(score_fn, params, rows, batch_size, mesh)
    if kind != "prm":
        return _sigmoid(scores["verdict"])
    return aggregate_steps(_sigmoid(scores["step_scores"]), rows["step_mask"], prm_aggregate)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def answer_key(response: str) -> Optional[str]:
    """The normalised final answer of a response (rlr.rewards.verifier), the ballot of a
    majority vote; None when it has none."""
    answer = extract_answer(response)
    return normalize_answer(answer) if answer is not None else None


def select_best(scores: np.ndarray, correct: np.ndarray,
                answers: Sequence[Sequence[Optional[str]]]) -> dict:
    """Accuracies of E problems with n scored responses each (scores, correct [E, n]; answers
    [E][n] their final answers, None for none):
    best_of_n: the highest-scored response is right (first one on ties);
    first_sample: the first response is right; majority: a response holding the most frequent
    answer (None never wins; ties go to the answer seen first) is right (Wang et al. 2023,
    self-consistency); pass_at_n: some response is right."""
    scores, correct = np.asarray(scores), np.asarray(correct, bool)
    if scores.shape != correct.shape or scores.ndim != 2 or len(answers) != len(scores):
        raise ValueError(f"select_best: scores {scores.shape}, correct {correct.shape} and "
                         f"{len(answers)} answer lists must all be [E, n]")
    best = correct[np.arange(len(scores)), np.argmax(scores, axis=1)]
    majority = []
    for row_answers, row_correct in zip(answers, correct):
        votes = collections.Counter(a for a in row_answers if a is not None)
        if not votes:
            majority.append(False)
            continue
        top = max(votes.values())
        winner = next(a for a in row_answers if a is not None and votes[a] == top)
        majority.append(bool(row_correct[list(row_answers).index(winner)]))
    return {"best_of_n": float(best.mean()), "first_sample": float(correct[:, 0].mean()),
            "majority": float(np.mean(majority)), "pass_at_n": float(correct.any(axis=1).mean())}


def rerank(scorer: Transformer, scorer_params: Any, tokenizer: Tokenizer, data: Any,
           examples: Sequence[tasks.TaskExample], responses: Sequence[Sequence[str]], *, kind: str,
           mesh, batch_size: int, prm_aggregate: str = "min", max_steps: int = 16) -> dict:
    """select_best of n responses to each of E problems (responses [E][n]) scored by the reward
    model (response_rewards), checked with tasks.answer_correct."""
    d = tasks.as_data_config(data)
    n = len(responses[0]) if responses else 0
    if len(responses) != len(examples) or any(len(rs) != n for rs in responses):
        raise ValueError(f"rerank: expected {len(examples)} lists of n responses, one a problem")
    questions = [e.question for e, rs in zip(examples, responses) for _ in rs]
    scores = response_rewards(scorer, scorer_params, tokenizer, d, questions,
                              [r for rs in responses for r in rs], kind=kind, mesh=mesh,
                              batch_size=batch_size, max_steps=max_steps, prm_aggregate=prm_aggregate)
    correct = np.array([[tasks.answer_correct(d, e, r) for r in rs]
                        for e, rs in zip(examples, responses)], bool)
    answers = [[answer_key(r) for r in rs] for rs in responses]
    return select_best(scores.reshape(len(examples), n), correct, answers)


def best_of_n(policy: Transformer, policy_params: Any, scorer: Transformer, scorer_params: Any,
              tokenizer: Tokenizer, data: Any, examples: Sequence[tasks.TaskExample], *, n: int,
              kind: str, rng: jax.Array, mesh, batch_size: int, temperature: float = 1.0,
              prm_aggregate: str = "min", max_steps: int = 16) -> dict:
    """Best-of-N reranking with a reward model (Cobbe et al. 2021; Lightman et al. 2023): the
    policy samples n responses a problem (temperature; batch_size prompts a call), the reward
    model scores each (ORM verdict, or PRM min / product of step scores) and rerank reports the
    accuracy of the top-scored response against the first sample, the majority vote and pass@n."""
    d = tasks.as_data_config(data)
    sampler = Sampler(policy, common.sampling_config(tokenizer, d, temperature=temperature,
                                                     num_samples=n), mesh)
    prompts = [sequences.prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
    responses = common.generate_texts(sampler, policy_params, tokenizer, prompts, rng, batch_size,
                                      d.prompt_bucket)
    return rerank(scorer, scorer_params, tokenizer, d, examples, responses, kind=kind, mesh=mesh,
                  batch_size=batch_size * n, prm_aggregate=prm_aggregate, max_steps=max_steps)


# ----------------------------------------------------------------------------- the loop


def make_evaluate(config: ml_collections.ConfigDict, s: common.Setup, model: Transformer,
                  objective_name: str, rows: Optional[Rows]):
    """evaluate(state, step) -> heldout_metrics on the held-out rows (None without any)."""
    if rows is None:
        return None
    check_batch_size(config.eval.batch_size, s.mesh, "eval.batch_size")
    score_fn = jax.jit(functools.partial(rm_step.eval_scores, model=model, objective=objective_name))

    def evaluate(state, step: int) -> dict:
        scores = score_rows(score_fn, state.params, rows, config.eval.batch_size, s.mesh)
        return heldout_metrics(objective_name, scores, rows)

    return evaluate


def _best_of_n_eval(config: ml_collections.ConfigDict, s: common.Setup, scorer: Transformer,
                    scorer_params: Any, rng: jax.Array) -> dict:
    """best_of_n with the policy config.rm.policy_source ("" = config.rm.init_source) on the
    first config.eval.num_problems held-out problems of config.data.task."""
    c = config.rm
    policy = Transformer(s.model_config)
    load_rng, sample_rng = jax.random.split(rng)
    source, key = params_io.config_source(config, "rm.policy_source", "rm.init_source",
                                          "model.hf_checkpoint")
    params = params_io.load_params(policy, source, s.mesh, load_rng, s.tokenizer, key=key)
    examples = tasks.task_examples(config.data, "eval", limit=config.eval.num_problems)
    return best_of_n(policy, params, scorer, scorer_params, s.tokenizer, config.data, examples,
                     n=c.best_of_n, kind=c.kind, rng=sample_rng, mesh=s.mesh,
                     batch_size=config.eval.batch_size, temperature=c.best_of_n_temperature,
                     prm_aggregate=c.prm_aggregate, max_steps=c.max_steps)


def memory_estimate(s: common.Setup, batch_size: int, objective_name: str, rows: Rows,
                    optimizer: Any, grad_accum_steps: int = 1) -> MemoryEstimate:
    """rlr.parallel.memory's bytes a device of a step of the score-head model on `batch_size`
    rows of `rows`' width (Bradley-Terry: two sequences a pair, chosen and rejected), in
    `grad_accum_steps` micro-batches."""
    responses = rows["chosen_tokens" if objective_name == "bradley_terry" else "response_tokens"]
    num_sequences = batch_size * (2 if objective_name == "bradley_terry" else 1)
    return estimate_memory(s.model_config, s.mesh, num_sequences,
                           rows["prompt_tokens"].shape[1] + responses.shape[1],
                           optimizer=optimizer, head="score", grad_accum_steps=grad_accum_steps)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train the reward model of config.rm on its data in `workdir` (resuming from its newest
    checkpoint), evaluate on the held-out questions, export the params; returns the final
    metrics (train, eval/*, and the best-of-N ones when config.rm.best_of_n > 0)."""
    s = common.setup(config)
    c = config.rm
    name = objective(c)
    optim = as_optim_config(config.optim)
    check_batch_size(c.batch_size, s.mesh, "rm.batch_size", optim.grad_accum_steps)
    model = Transformer(s.model_config, head="score")
    init_rng, state_rng, bon_rng = jax.random.split(s.rng, 3)
    source, key = params_io.config_source(config, "rm.init_source", "model.hf_checkpoint")
    params = params_io.load_params(model, source, s.mesh, init_rng, s.tokenizer, key=key)
    data = rm_data(config, s.tokenizer, name)
    if _num_rows(data.train) < c.batch_size:
        raise ConfigError(f"config.rm.batch_size={c.batch_size}: more than the "
                          f"{_num_rows(data.train)} training rows")
    optimizer = make_optimizer(optim)
    state = create_train_state(params, optimizer, state_rng)
    common.log_memory_estimate("rm", memory_estimate(s, c.batch_size, name, data.train, optimizer,
                                                     optim.grad_accum_steps), s.mesh)
    batches = [row_batches(data.train, c.batch_size, config.seed)]  # replaced on restore
    step = jax.jit(functools.partial(rm_step.train_step, model=model, optimizer=optimizer,
                                     objective=name, grad_accum_steps=optim.grad_accum_steps),
                   donate_argnums=0)
    writer = MetricsWriter(workdir)

    def on_restore(extra: dict) -> None:
        if "data" in extra:
            batches[0] = row_batches(data.train, c.batch_size, config.seed, extra["data"])
        else:
            writer.write(0, data.stats)

    def step_fn(state, _):
        batch = shard_batch(next(batches[0]), s.mesh)
        with common.model_context(s.mesh):
            return step(state, batch)

    try:
        state, final = common.run_loop(
            config, workdir, state, step_fn, c.num_steps, on_restore=on_restore,
            extra_fn=lambda: {"data": batches[0].state_dict()},
            eval_fn=make_evaluate(config, s, model, name, data.eval),
            eval_every=config.eval.every_steps, writer=writer,
            progress_keys=("loss", "accuracy", "step_accuracy"))
        params_io.export_params(workdir, state.params, s.model_config, s.tokenizer)
        if c.best_of_n > 0 and config.eval.num_problems > 0:
            bon = {f"eval/{k}": v for k, v in
                   _best_of_n_eval(config, s, model, state.params, bon_rng).items()}
            writer.write(c.num_steps, bon)
            final.update(bon)
    finally:
        writer.close()
    return final

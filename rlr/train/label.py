"""Label sampled solutions of a policy: the training data of the outcome and process reward models.

    rlr --config experiments/label.py --config.label.policy_source=runs/sft --workdir runs/label

For each of the first config.label.num_problems train problems of config.data.task, the policy
(config.label.policy_source, e.g. the SFT run) samples config.label.num_samples responses at
config.label.temperature. Each response is labelled and written as one JSON line of
WORKDIR/labelled.jsonl:

    {"question", "response", "answer" (the reference answer), "correct" (final answer right),
     "step_labels" (0/1 a step), "num_steps"}

- Synthetic task: step_labels = rlr.data.synthetic.check_steps(question, response).correct (a
  step that repeats an earlier correct step is correct: the "correct but needless" step a PRM
  gets hacked by, Gao et al. 2024), num_steps its number of steps (the lines before the answer
  line), correct = final_answer_correct.
- Real tasks (gsm8k, math): the outcome only, correct = the verifier's verdict
  (rlr.train.tasks.answer_correct); step_labels = [], num_steps = the response's lines
  (rlr.rewards.segment.split_steps).

Synthetic task, config.label.corruptions (modes of rlr.data.synthetic.corrupt): for each problem
also one flawed copy of its reference solution a mode, labelled the same way (a PRM800K-like mix of
policy samples and written solutions). "needless_step" adds a repeated or no-op step that the
checker labels correct: the data that makes a PRM pay for correct but needless steps, the
precondition of the reward hacking of Gao et al. (2024).

Responses are written a batch of problems at a time to labelled.jsonl.partial. A stopped run
continues from its last whole batch, each batch sampled with the key of a straight run
(fold_in(rng, its first problem)), so it writes the same file; a finished one is not sampled
again, and one rerun with a larger num_problems continues from its last whole batch too (its
samples can differ from a straight run's if a new prompt is longer than the old prompt bucket:
every batch is padded to the longest prompt's bucket). The corrupted references are added and the
file renamed to labelled.jsonl when every problem is done.
Returns (and writes to metrics.jsonl) the label statistics of the policy's samples.

read_labelled reads the file back for the later stages (reward models, DPO on labelled pairs,
the DPO-vs-PPO study).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import random
from typing import Any, NamedTuple, Optional, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np

from rlr.config import ConfigError
from rlr.data import synthetic
from rlr.data.batching import bucket_length
from rlr.data.builders._io import DataFormatError, RecordError, get_field, parse_jsonl
from rlr.models import Transformer
from rlr.rewards.segment import split_steps
from rlr.sampling import Sampler
from rlr.train import common, params_io, sequences, tasks
from rlr.train.metrics import MetricsWriter, read_jsonl
from rlr.train.sft import check_batch_size

log = logging.getLogger(__name__)

LABELLED_FILE = "labelled.jsonl"  # what a label run writes in its workdir (rlr.train.rm reads it)
FIELDS = ("question", "response", "answer", "correct", "step_labels", "num_steps")


class Labelled(NamedTuple):
    """A labelled response as the later stages read it: its question, its text, correct (the
    final answer is right) and step_labels (0/1 for the lines before the answer line; () when
    only the outcome is labelled)."""

    question: str
    response: str
    correct: bool
    step_labels: tuple[int, ...] = ()


def labelled_file(path: str, key: Optional[str] = None) -> str:
    """The labelled.jsonl that `path` names: the file, or LABELLED_FILE in a label run's workdir.
    `key` (e.g. "rm.data_path"), the config key that gave `path`, is named in the error."""
    file = os.path.join(path, LABELLED_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        given = f"config.{key}={path!r}" if key else repr(path)
        raise ConfigError(f"{given}: no such file {file!r} (expected a {LABELLED_FILE} or the "
                          f"workdir of a label run)")
    return file


def _parse_labelled(record: dict) -> Labelled:
    step_labels = get_field(record, "step_labels", list) if "step_labels" in record else []
    if any(type(x) is not int or x not in (0, 1) for x in step_labels):
        raise RecordError(f"key 'step_labels': expected a list of 0 / 1, got {step_labels!r}")
    return Labelled(get_field(record, "question", str), get_field(record, "response", str),
                    bool(get_field(record, "correct", (bool, int))), tuple(step_labels))


def read_labelled(path: str, key: Optional[str] = None) -> list[Labelled]:
    """The records of a labelled.jsonl (labelled_file(path, key)), in file order: one JSON object
    a line with question, response, correct and, optionally, step_labels; other keys (FIELDS) are
    ignored. A malformed line raises DataFormatError naming the file and line, and so does a
    file without records."""
    file = labelled_file(path, key)
    records = [record for _, record in parse_jsonl(pathlib.Path(file), _parse_labelled)]
    if not records:
        raise DataFormatError(f"{file}: no labelled responses")
    return records


def label_response(data: Any, example: tasks.TaskExample, response: str) -> dict:
    """The labelled record of one response to a problem (fields FIELDS, see the module docstring)."""
    correct = tasks.answer_correct(data, example, response)
    if tasks.as_data_config(data).task == "synthetic":
        check = synthetic.check_steps(example.question, response)
        step_labels, num_steps = [int(ok) for ok in check.correct], check.num_steps
    else:
        step_labels, num_steps = [], len(split_steps(response))
    return {"question": example.question, "response": response, "answer": example.answer,
            "correct": bool(correct), "step_labels": step_labels, "num_steps": num_steps}


def label_stats(records: Sequence[dict], num_samples: int) -> dict:
    """Statistics of labelled records (num_samples consecutive records a problem): accuracy (share
    of responses with the right final answer), pass_at_n (share of problems with at least one),
    mean_steps, wrong_step_rate (share of responses with a step labelled wrong; 0 without step
    labels), num_responses, num_problems."""
    if not records:
        return {"accuracy": 0.0, "pass_at_n": 0.0, "mean_steps": 0.0, "wrong_step_rate": 0.0,
                "num_responses": 0, "num_problems": 0}
    correct = np.array([r["correct"] for r in records], bool)
    by_problem = correct[: len(correct) // num_samples * num_samples].reshape(-1, num_samples)
    return {"accuracy": float(correct.mean()),
            "pass_at_n": float(by_problem.any(axis=1).mean()) if by_problem.size else 0.0,
            "mean_steps": float(np.mean([r["num_steps"] for r in records])),
            "wrong_step_rate": float(np.mean([0 in r["step_labels"] for r in records])),
            "num_responses": len(records), "num_problems": len(records) // num_samples}


def corrupted_references(data: Any, examples: Sequence[tasks.TaskExample], modes: Sequence[str],
                         seed: int) -> list[dict]:
    """Labelled records (label_response) of one synthetic.corrupt copy of each example's reference
    solution a mode, from one random.Random(seed) stream; a mode that cannot corrupt a problem
    (a one-step question has no step to skip) is left out for it."""
    rng, records = random.Random(seed), []
    for example in examples:
        problem = synthetic.solve(example.question)
        for mode in modes:
            try:
                text, _ = synthetic.corrupt(problem, mode, rng)
            except ValueError:
                continue
            records.append(label_response(data, example, text))
    return records


def completed_problems(path: str, questions: Sequence[str], num_samples: int,
                       batch_size: int) -> int:
    """How many of `questions` a partial labelled file holds, in order with num_samples records
    each, counted in whole batches of batch_size problems unless all are there; the file is cut
    back to those. So a resumed run samples each batch from its first problem with the key a
    straight run uses (fold_in(rng, first problem)), and writes the same file: a stopped run's
    incomplete batch and cut line go, and so do a finished run's corrupted references when
    config.label.num_problems was raised. 0, and the file removed, when it starts with other
    problems or holds another number of samples a problem. Only the questions are compared: a
    run continued with another policy or sampling setting mixes their samples (`rlr` logs each
    changed config key of a rerun workdir: rlr.config.write_config)."""
    if not os.path.exists(path):
        return 0
    records = read_jsonl(path)  # a cut last line is skipped
    expected = [q for q in questions for _ in range(num_samples)]
    matched = next((i for i, (r, q) in enumerate(zip(records, expected)) if r.get("question") != q),
                   min(len(records), len(expected)))
    done = matched // num_samples
    if done < len(questions):
        # Problem done - 1 with more than num_samples records: the file has another num_samples.
        longer = done and matched < len(records) and \
            records[matched].get("question") == questions[done - 1]
        done = 0 if longer else done // batch_size * batch_size
    if not done:
        if records:
            log.warning("%s: no whole batch of these problems with num_samples=%d; starting over",
                        path, num_samples)
        os.remove(path)
        return 0
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[:done * num_samples])
    return done


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample and label config.label.num_samples responses for each of the first
    config.label.num_problems train problems (see the module docstring); returns label_stats."""
    s = common.setup(config)
    c = config.label
    data = tasks.as_data_config(config.data)
    for key in ("num_problems", "num_samples"):
        if c[key] < 1:
            raise ConfigError(f"config.label.{key}={c[key]}: expected >= 1")
    modes = tuple(c.get("corruptions", ()))
    if modes and (data.task != "synthetic" or not set(modes) <= set(synthetic.CORRUPTION_MODES)):
        raise ConfigError(f"config.label.corruptions={modes}: expected modes of the synthetic task, "
                          f"a subset of {synthetic.CORRUPTION_MODES} (config.data.task={data.task!r})")
    check_batch_size(c.batch_size, s.mesh, "label.batch_size")
    model = Transformer(s.model_config)
    init_rng, sample_rng = jax.random.split(s.rng)
    source, key = params_io.config_source(config, "label.policy_source", "model.hf_checkpoint")
    params = params_io.load_params(model, source, s.mesh, init_rng, s.tokenizer, key=key)
    examples = tasks.task_examples(data, "train", limit=c.num_problems)
    prompts = [sequences.prompt_text(s.tokenizer, e.question, data.prompt_template) for e in examples]
    longest = sequences.encode_prompts(s.tokenizer, prompts, 1)[0].shape[1]
    sampling = common.sampling_config(s.tokenizer, data, temperature=c.temperature,
                                      num_samples=c.num_samples, top_k=c.top_k, top_p=c.top_p)
    # One prompt length for every batch: the sampler compiles once.
    sampler = Sampler(model, sampling, s.mesh, buckets=(bucket_length(longest, data.prompt_bucket),))
    os.makedirs(workdir, exist_ok=True)
    final_path = os.path.join(workdir, LABELLED_FILE)
    partial_path = final_path + ".partial"
    write = jax.process_index() == 0
    done = 0
    if write:  # process 0 owns the file; every process continues from the same problem
        if os.path.exists(final_path) and not os.path.exists(partial_path):
            os.replace(final_path, partial_path)  # a finished run: kept where it fits this config
        done = completed_problems(partial_path, [e.question for e in examples], c.num_samples,
                                  c.batch_size)
    done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
    for start in range(done, len(examples), c.batch_size):
        chunk = slice(start, start + c.batch_size)
        responses = common.generate_texts(sampler, params, s.tokenizer, prompts[chunk],
                                          jax.random.fold_in(sample_rng, start), c.batch_size,
                                          data.prompt_bucket)
        records = [label_response(data, e, r) for e, rs in zip(examples[chunk], responses) for r in rs]
        if write:
            with open(partial_path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        log.info("labelled %d / %d problems", min(start + c.batch_size, len(examples)), len(examples))
    stats = {}
    if write:
        samples = read_jsonl(partial_path)
        references = corrupted_references(data, examples, modes, config.seed)
        with open(partial_path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in references)
        os.replace(partial_path, final_path)
        stats = {**label_stats(samples, c.num_samples), "num_references": len(references)}
        writer = MetricsWriter(workdir)
        try:
            writer.write(0, stats)
        finally:
            writer.close()
    return stats

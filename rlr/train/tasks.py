"""The task of a run: config.data (DataConfig), the problems of its splits (the synthetic task's,
or GSM8K / MATH records) and the check of a response's final answer."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple, Optional

import ml_collections

from rlr.config import ConfigError, to_config_dict, to_dataclass
from rlr.data import synthetic
from rlr.train.sequences import DIALOGUE_TEMPLATE

SPLITS = ("train", "eval")  # the splits of synthetic_problems


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
    dataset_config: str = ""  # real tasks: the load_split builder config (hh_rlhf: all | helpful_base | ...); "" = its default
    train_split: str = "train"  # real tasks: load_split split of the training data
    eval_split: str = "test"  # real tasks: load_split split of the held-out data
    prompt_template: str = "{question}"  # the user message, {question} replaced; "{dialogue}": HH-RLHF turns as messages (sequences.prompt_text)
    prompt_bucket: int = 16  # prompts are left-padded to a multiple of this many tokens
    response_bucket: int = 16  # responses are right-padded to a multiple of this many tokens
    max_response_len: int = 64  # longest response (tokens, eos included) trained on / sampled

    def __post_init__(self):
        if self.task != "synthetic" and not self.data_dir:
            raise ConfigError(f"config.data.task={self.task!r}: set config.data.data_dir (where "
                              f"load_split prepares the dataset)")
        if "{question}" not in self.prompt_template and self.prompt_template != DIALOGUE_TEMPLATE:
            raise ConfigError(f"config.data.prompt_template={self.prompt_template!r}: expected a "
                              f"'{{question}}' field, or {DIALOGUE_TEMPLATE!r} (HH-RLHF turns)")
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


TASKS = ("synthetic", "gsm8k", "math")  # the tasks task_examples reads (each has an answer checker)
PROMPT_TASKS = TASKS + ("hh_rlhf",)  # the tasks prompt_examples reads


def task_examples(data: Any, split: str, limit: Optional[int] = None) -> list[TaskExample]:
    """The problems of a split ("train" | "eval") of config.data.task: the synthetic task's
    problems (synthetic_problems), or the GSM8K / MATH records of config.data.train_split /
    eval_split read with rlr.data.datasets.load_split (GSM8K calculator annotations removed
    from the solutions). `limit`: that many problems only, spread evenly over the split (the
    first `limit` of the synthetic task's, drawn at random)."""
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
    return [_record_example(d.task, r) for r in _split_records(d, split, limit)]


def _split_records(d: DataConfig, split: str, limit: Optional[int]) -> list[dict]:
    """`limit` records (None: all) spread evenly over config.data.train_split ("train") /
    eval_split ("eval") of config.data.task (rlr.data.datasets.spread_indices), read with
    load_split from data_dir, manual_dir and dataset_config."""
    from rlr.data.datasets import load_split, spread_indices

    if split not in SPLITS:
        raise ValueError(f"split={split!r}, expected one of {SPLITS}")
    source = load_split(d.task, d.train_split if split == "train" else d.eval_split, d.data_dir,
                        d.manual_dir or None, config=d.dataset_config or None)
    return source.__getitems__(spread_indices(len(source), limit))


def prompt_examples(data: Any, split: str, limit: Optional[int] = None) -> list[TaskExample]:
    """The examples of a split ("train" | "eval") that a policy is prompted with: task_examples
    for the tasks with answers; for task hh_rlhf, the HH-RLHF dialogues (the record's "prompt", up
    to the last "Assistant:", as the question; its chosen reply as the solution; no answer)."""
    d = as_data_config(data)
    if d.task in TASKS:
        return task_examples(d, split, limit)
    if d.task != "hh_rlhf":
        raise ConfigError(f"config.data.task={d.task!r}: expected one of {PROMPT_TASKS}")
    return [TaskExample(r["prompt"], r["chosen"], "") for r in _split_records(d, split, limit)]


def answer_correct(data: Any, example: TaskExample, response: str) -> bool:
    """Whether a response's final answer is right: synthetic.final_answer_correct for the
    synthetic task, rlr.rewards.verify(response, answer) == 1 for the others."""
    if as_data_config(data).task == "synthetic":
        return synthetic.final_answer_correct(example.question, response)
    from rlr.rewards.verifier import verify

    return verify(response, example.answer) > 0.5

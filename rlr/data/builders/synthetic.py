"""The synthetic reasoning task (rlr.data.synthetic) as a builder, so it runs through the same
pipeline as GSM8K.

Features use GSM8K's names: question, answer (the full canonical solution, steps then
"answer: N"), final_answer (str of the integer answer); plus id ("train/<i>"), prompt
(the text the model is given), steps (the canonical step lines).

Splits: train is `generate_problems(train_seed, n_train, task)`; test takes the problems
of the `test_seed` stream, in order, whose question is not in train, until it has n_test
(the question space is small enough that two seeds would otherwise share questions).
Nothing is read from manual_dir.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from rlr.data.builders._base import TEXT, TEXT_LIST, Example, ManualBuilder

_MAX_DRAW_FACTOR = 64


@dataclasses.dataclass
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
    """Split sizes, seeds, and SyntheticConfig overrides as sorted (field, value) pairs.

    Build it with `synthetic_builder_config`, which names it after its contents, so two
    different configs never share a prepared directory.
    """

    n_train: int = 10_000
    n_test: int = 1_000
    train_seed: int = 0
    test_seed: int = 1
    task: tuple[tuple[str, Any], ...] = ()


def synthetic_builder_config(n_train: int = 10_000, n_test: int = 1_000, train_seed: int = 0,
                             test_seed: int = 1, **task: Any) -> SyntheticBuilderConfig:
    """A SyntheticBuilderConfig named after its contents; `task` holds SyntheticConfig overrides.

    E.g. synthetic_builder_config(100, 20, num_ops=(1, 2)). The seeds must differ and
    the sizes be positive (ValueError naming the argument otherwise).
    """
    if train_seed == test_seed:
        raise ValueError(f"synthetic_builder_config: train_seed and test_seed must differ, both are {train_seed}")
    for arg, n in (("n_train", n_train), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"synthetic_builder_config: {arg}={n}, expected >= 1")
    overrides = tuple(sorted((key, tuple(v) if isinstance(v, list) else v) for key, v in task.items()))
    name = f"train{n_train}_test{n_test}_seeds{train_seed}_{test_seed}"
    if overrides:
        name += "_" + hashlib.sha1(repr(overrides).encode()).hexdigest()[:10]
    return SyntheticBuilderConfig(name=name, n_train=n_train, n_test=n_test, train_seed=train_seed,
                                  test_seed=test_seed, task=overrides,
                                  description=f"task overrides {dict(overrides)}")


def problem_example(problem: Any, key: str) -> Example:
    """A rlr.data.synthetic.Problem -> the builder's features (GSM8K names plus prompt and steps)."""
    return {"id": key, "question": problem.question, "prompt": problem.prompt, "steps": list(problem.steps),
            "answer": problem.solution, "final_answer": str(problem.answer)}


def held_out_problems(generate: Any, seed: int, n: int, task: Any, exclude: set[str]) -> list:
    """The first n problems of generate(seed, ., task) whose question is not in `exclude`.

    Relies on generate's prefix property (the first m of n problems are generate(seed, m)).
    """
    count = n
    while count <= _MAX_DRAW_FACTOR * n:
        kept = [p for p in generate(seed, count, task) if p.question not in exclude]
        if len(kept) >= n:
            return kept[:n]
        count *= 2
    raise ValueError(f"synthetic task {task}: fewer than {n} questions outside the train split among "
                     f"{count // 2} draws of seed {seed}; use a smaller n_test or a larger task")


class Synthetic(ManualBuilder):
    """The synthetic multi-step arithmetic task (splits train, test); see the module docstring."""

    name = "rlr_synthetic"
    BUILDER_CONFIGS = [synthetic_builder_config()]
    DESCRIPTION = "Multi-step integer arithmetic with one step a line (rlr.data.synthetic)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing to download: the problems are generated."
    FEATURES = {"id": TEXT, "question": TEXT, "prompt": TEXT, "steps": TEXT_LIST, "answer": TEXT,
                "final_answer": TEXT}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        synthetic = importlib.import_module("rlr.data.synthetic")
        config = self.builder_config
        task = synthetic.SyntheticConfig(**dict(config.task))
        train = synthetic.generate_problems(config.train_seed, config.n_train, task)
        questions = {p.question for p in train}
        test = held_out_problems(synthetic.generate_problems, config.test_seed, config.n_test, task, questions)
        return {"train": self._generate_examples("train", train), "test": self._generate_examples("test", test)}

    def _generate_examples(self, split: str, problems: Sequence) -> Iterator[tuple[str, Example]]:
        for i, problem in enumerate(problems):
            key = f"{split}/{i}"
            yield key, problem_example(problem, key)

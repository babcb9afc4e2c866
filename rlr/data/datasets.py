"""The front door the trainers use: `load_split(name, split, data_dir, manual_dir)` -> a data source.

`load_split` prepares the dataset once (array_record shards under
`data_dir/rlr_<name>/<config>/<version>/`, from the upstream files in `manual_dir`) and
returns random access to one split, with records decoded to plain Python: text -> str,
lists of text -> list[str], integer lists -> np.ndarray (int32). A prepared dataset is
reused as it is: delete its directory to rebuild it after changing the upstream files.

Names: gsm8k, math, hh_rlhf, math_shepherd, prm800k, preference_pairs, synthetic (see
rlr.data.builders for each one's files, features and configs).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from rlr.data.builders import (
    Gsm8k, HhRlhf, ManualBuilder, Math, MathShepherd, PreferencePairs, Prm800k, Synthetic,
)

BUILDERS: dict[str, type[ManualBuilder]] = {
    "gsm8k": Gsm8k,
    "math": Math,
    "hh_rlhf": HhRlhf,
    "math_shepherd": MathShepherd,
    "prm800k": Prm800k,
    "preference_pairs": PreferencePairs,
    "synthetic": Synthetic,
}


def decode_value(value: Any) -> Any:
    """A record value as read by tfds, with bytes turned into str (recursively through lists and dicts)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: decode_value(v) for k, v in value.items()}
    return value


class DataSource(Sequence):
    """Random access to the records of one split: `len(source)`, `source[i]`, `source.__getitems__(indices)`.

    Wraps tfds's ArrayRecordDataSource (picklable, so it can be handed to data-loader
    worker processes) and decodes each record with `decode_value`.
    """

    def __init__(self, source: Sequence[dict]):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def _check_index(self, index: int) -> int:
        n = len(self._source)
        if not -n <= index < n:
            raise IndexError(f"record {index} out of range for a split of {n} records")
        return index % n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.__getitems__(range(len(self))[index])
        return decode_value(self._source[self._check_index(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Several records in one read (the protocol grain and torch data loaders use)."""
        checked = [self._check_index(i) for i in indices]
        return [decode_value(record) for record in self._source.__getitems__(checked)] if checked else []

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"DataSource({self._source!r})"


def get_builder(name: str, data_dir: str | os.PathLike, config: str | tfds.core.BuilderConfig | None = None
                ) -> ManualBuilder:
    """The builder registered as `name` (a key of BUILDERS), writing under `data_dir`.

    `config` is a config name (e.g. "helpful_base" for hh_rlhf) or a BuilderConfig
    (e.g. `synthetic_builder_config(...)`); None takes the builder's default.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    return BUILDERS[name](data_dir=os.fspath(data_dir), config=config)


def load_split(name: str, split: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
               config: str | tfds.core.BuilderConfig | None = None) -> DataSource:
    """Prepares dataset `name` from the upstream files in `manual_dir` (once) and returns split `split`.

    `split` is a split name or a tfds split expression ("train[:100]", "train+test").
    manual_dir None uses tfds's default `<data_dir>/downloads/manual`. Raises
    FileNotFoundError naming a missing upstream file, DataFormatError naming a malformed
    file and line, and ValueError naming an unknown dataset or split.
    """
    builder = get_builder(name, data_dir, config)
    download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    available = sorted(builder.info.splits)
    for part in split.split("+"):
        base = part.split("[", 1)[0].strip()
        if base not in available:
            raise ValueError(f"dataset {name!r} has no split {base!r}; its splits are {available}")
    return DataSource(builder.as_data_source(split))


def spread_indices(size: int, limit: int | None) -> list[int]:
    """`limit` record indices spread evenly over a split of `size` records, floor(i x size / limit)
    for i < limit (all of range(size) when `limit` is None or >= size). A split stored subset
    after subset (HH-RLHF's "all": harmless-base, then the three helpful ones) gives each subset
    its share of such a sample, where its first `limit` records would all be harmless-base."""
    if limit is None or limit >= size:
        return list(range(size))
    return [i * size // limit for i in range(limit)]

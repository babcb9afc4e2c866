"""The common part of rlr's tfds builders: files from manual_dir in, array_record out.

Every builder reads the real upstream files that a user downloaded into
`download_config.manual_dir` (builders never download), writes array_record shards
in file order (no shuffling, so record i of a split is stable), and is read back by
random access with `builder.as_data_source(split)`. None of this needs TensorFlow.
"""
from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from rlr.data.builders._io import parse_jsonl

TEXT = tfds.features.Text()
TEXT_LIST = tfds.features.Sequence(tfds.features.Text())
INT_LIST = tfds.features.Tensor(shape=(None,), dtype=np.int32)

Example = dict[str, Any]


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder over local upstream files, written as array_record.

    Subclasses set `name` (registered as "rlr_<dataset>"), FEATURES (feature name ->
    tfds feature), DESCRIPTION, HOMEPAGE, CITATION and MANUAL_DOWNLOAD_INSTRUCTIONS,
    and implement `_split_generators` / `_generate_examples`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    FEATURES: ClassVar[dict[str, tfds.features.FeatureConnector]]
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""

    def __init__(self, *, file_format: str = "array_record", **kwargs: Any):
        super().__init__(file_format=file_format, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: these builders download nothing, so they have no checksums file beside their code.

        (tfds 4.9 locates that file through the `importlib_resources` backport, which is
        not installed on Python >= 3.9, so its default fails for a builder in a package.)
        """
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(self.FEATURES),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            disable_shuffling=True,
        )

    def _manual_root(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
        """The manual directory; FileNotFoundError with the download instructions when absent or empty."""
        try:
            return pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds signals a missing or empty manual_dir this way
            raise FileNotFoundError(f"{self.name}: {e}") from None

    def _manual_path(self, dl_manager: tfds.download.DownloadManager, relpath: str) -> pathlib.Path:
        """`manual_dir / relpath`; FileNotFoundError naming that path and the download instructions."""
        path = self._manual_root(dl_manager) / relpath
        if not path.exists():
            raise FileNotFoundError(
                f"{self.name}: expected {path}, which does not exist.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return path


def jsonl_examples(
    path: pathlib.Path, parse: Callable[[dict], Example], id_prefix: str
) -> Iterator[tuple[str, Example]]:
    """Yields tfds `(key, example)` pairs, one a line of a JSONL file, the key "<id_prefix>:<line>".

    The key is also stored as the example's "id", so a record can be traced to its line.
    """
    for line, example in parse_jsonl(path, parse):
        key = f"{id_prefix}:{line}"
        yield key, {"id": key, **example}

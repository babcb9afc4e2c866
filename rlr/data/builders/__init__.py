"""tfds builders for the datasets rlr trains on, read from files a user downloaded (see rlr.data.datasets).

Each builder writes array_record shards and is read by random access with
`builder.as_data_source(split)`; none needs TensorFlow. Malformed records raise
DataFormatError naming the file and line; missing files raise FileNotFoundError naming
the path expected and where to download it.
"""
from rlr.data.builders._base import ManualBuilder
from rlr.data.builders._io import DataFormatError
from rlr.data.builders.gsm8k import Gsm8k
from rlr.data.builders.hh_rlhf import HhRlhf
from rlr.data.builders.math import Math
from rlr.data.builders.preference_pairs import PreferencePairs
from rlr.data.builders.process_steps import MathShepherd, Prm800k
from rlr.data.builders.synthetic import Synthetic, SyntheticBuilderConfig, synthetic_builder_config

__all__ = [
    "DataFormatError", "Gsm8k", "HhRlhf", "ManualBuilder", "Math", "MathShepherd", "PreferencePairs",
    "Prm800k", "Synthetic", "SyntheticBuilderConfig", "synthetic_builder_config",
]

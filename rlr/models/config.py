"""Decoder shapes: one frozen dataclass, and the named shapes of the models the studies use.

The real shapes are copied from each model's Hugging Face `config.json`; `from_hf_config` reads
such a file so that a local checkpoint and its named config cannot drift apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_KERNELS = ("xla", "cudnn")
NUMERICS = ("param_dtype", "dtype", "remat", "attention")  # how a model computes, not what it is


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 rotary frequency scaling (Llama 3.1/3.2 `rope_scaling` with rope_type "llama3")."""

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama / Qwen2 family decoder.

    Fields follow Hugging Face names where one exists. `param_dtype` is the storage dtype of the
    parameters and `dtype` the compute dtype (float32 params with bfloat16 compute is the
    common case for training).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2 has q/k/v biases; Llama has none.
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    param_dtype: Any = jnp.float32
    dtype: Any = jnp.float32
    remat: str = "none"  # none | full | dots: what each layer saves for the backward pass.
    # xla | cudnn: the attention kernel of cache-free forwards (training, scoring); cudnn is
    # cuDNN flash attention (GPU, bfloat16 / float16 compute). Sampling with a KV cache and
    # packed sequences (segment_ids) always use XLA's.
    attention: str = "xla"
    architecture: str = "qwen2"  # qwen2 | llama: the Hugging Face family (for checkpoint export).

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention={self.attention!r}: expected one of {ATTENTION_KERNELS}")
        if self.attention == "cudnn" and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attention='cudnn' needs dtype bfloat16 or float16 (cuDNN flash "
                             f"attention), got dtype={jnp.dtype(self.dtype).name}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def shape(self) -> dict:
        """The fields that say what the model is (all but NUMERICS), as JSON values: what an
        export records so that a later run can rebuild the model (ModelConfig.with_shape)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in NUMERICS}
        if self.rope_scaling is not None:
            fields["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
        return fields

    def with_shape(self, shape: dict) -> "ModelConfig":
        """The model `shape` (a ModelConfig.shape() dict) computing with this config's NUMERICS.
        ValueError names a missing or unknown field."""
        expected = {f.name for f in dataclasses.fields(self)} - set(NUMERICS)
        if set(shape) != expected:
            odd = sorted(set(shape) ^ expected)[0]
            raise ValueError(f"model shape field {odd!r} is {'unknown' if odd in shape else 'missing'}; "
                             f"expected {sorted(expected)}")
        scaling = shape["rope_scaling"]
        return self.replace(**{**shape, "rope_scaling": scaling and RopeScaling(**scaling)})

    def num_params(self) -> int:
        """Parameter count (embeddings included, an untied output matrix counted once more)."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim)
        attn = d * hd * (h + 2 * kv) + h * hd * d + (hd * (h + 2 * kv) if self.qkv_bias else 0)
        layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + embed + d


def tiny(**changes) -> ModelConfig:
    """A 2-layer test decoder (GQA 4/2 heads, q/k/v bias): compiles in seconds on a CPU."""
    base = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True,
                       tie_embeddings=False, max_position_embeddings=512)
    return base.replace(**changes)


def synthetic_1m(**changes) -> ModelConfig:
    """The ~1M-parameter policy of the synthetic-task studies (`make demo`): 4 layers, d=128,
    GQA 4/2 heads, vocabulary 64 (the character tokenizer's 51 ids fit)."""
    base = ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=512, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=32, qkv_bias=True,
                       tie_embeddings=False, max_position_embeddings=512)
    return base.replace(**changes)


_QWEN2 = dict(rms_norm_eps=1e-6, qkv_bias=True, architecture="qwen2")
_LLAMA = dict(rms_norm_eps=1e-5, qkv_bias=False, architecture="llama")

NAMED_CONFIGS = {
    "tiny": tiny(),
    "synthetic-1m": synthetic_1m(),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                                rope_theta=1e6, tie_embeddings=True,
                                max_position_embeddings=32768, **_QWEN2),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
                                rope_theta=1e6, tie_embeddings=True,
                                max_position_embeddings=32768, **_QWEN2),
    "qwen2.5-math-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                     num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
                                     rope_theta=1e4, tie_embeddings=True,
                                     max_position_embeddings=4096, **_QWEN2),
    "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                              rope_theta=1e6, tie_embeddings=False,
                              max_position_embeddings=32768, **_QWEN2),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                                rope_theta=5e5, rope_scaling=RopeScaling(), tie_embeddings=True,
                                max_position_embeddings=131072, **_LLAMA),
    "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                rope_theta=1e5, tie_embeddings=True,
                                max_position_embeddings=8192, **_LLAMA),
}


def get_config(name: str, **changes) -> ModelConfig:
    """The named shape `name` (see NAMED_CONFIGS), with field overrides."""
    if name not in NAMED_CONFIGS:
        raise KeyError(f"unknown model config {name!r}: expected one of {sorted(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name].replace(**changes)


def from_hf_config(hf: dict, **changes) -> ModelConfig:
    """A ModelConfig from a Hugging Face `config.json` dict (Qwen2ForCausalLM / LlamaForCausalLM)."""
    archs = hf.get("architectures") or [hf.get("model_type", "?")]
    arch = archs[0]
    families = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "qwen2": "qwen2",
                "llama": "llama"}
    if arch not in families:
        raise ValueError(f"config.json architectures={archs}: expected one of {sorted(families)}")
    family = families[arch]
    scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type in (None, "default"):
        rope_scaling = None
    elif rope_type == "llama3":
        rope_scaling = RopeScaling(
            factor=scaling["factor"], low_freq_factor=scaling["low_freq_factor"],
            high_freq_factor=scaling["high_freq_factor"],
            original_max_position_embeddings=scaling["original_max_position_embeddings"])
    else:
        raise ValueError(f"config.json rope_scaling type {rope_type!r}: only 'llama3' is supported")
    rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    num_heads = hf["num_attention_heads"]
    config = ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads", num_heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        rms_norm_eps=hf["rms_norm_eps"],
        qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        architecture=family,
    )
    return config.replace(**changes)


def to_hf_config(config: ModelConfig) -> dict:
    """The Hugging Face `config.json` dict of `config` (inverse of `from_hf_config`)."""
    hf = {
        "architectures": ["Qwen2ForCausalLM" if config.architecture == "qwen2" else "LlamaForCausalLM"],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if config.architecture == "llama":
        hf["attention_bias"] = config.qkv_bias
        hf["mlp_bias"] = False
    if config.rope_scaling is not None:
        s = config.rope_scaling
        hf["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor,
                              "low_freq_factor": s.low_freq_factor,
                              "high_freq_factor": s.high_freq_factor,
                              "original_max_position_embeddings": s.original_max_position_embeddings}
    return hf

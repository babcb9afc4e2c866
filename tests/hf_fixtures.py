"""Tiny random Hugging Face models (transformers on torch CPU) for checkpoint parity tests.

Every parameter is redrawn so that each one matters to the logits: weights N(0, 1/fan_in)
(attention scores of order one, so a RoPE or mask error shows), norm scales 1 + N(0, 0.1^2) and
biases N(0, 0.1^2) (Hugging Face initialises these to 1 and 0, which would hide a mapping error).
"""
from __future__ import annotations

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6)
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)
CLASSES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2-score": (transformers.Qwen2Config, transformers.Qwen2ForSequenceClassification),
}


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every parameter of `model` in place (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 2 and "embed_tokens" not in name:
                p.copy_(noise / p.shape[1] ** 0.5)
            else:
                p.copy_(noise)
    return model


def make_hf_model(kind: str, seed: int = 0, **config) -> torch.nn.Module:
    """A tiny random float32 model: kind "qwen2", "llama" (causal LMs) or "qwen2-score"
    (Qwen2ForSequenceClassification with one label); `config` overrides TINY."""
    config_cls, model_cls = CLASSES[kind]
    extra = dict(num_labels=1, pad_token_id=0) if kind.endswith("score") else {}
    hf_config = config_cls(**{**TINY, **extra, **config})
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return randomize_(model_cls(hf_config).eval(), seed)


def save_bpe_tokenizer(path, texts, vocab_size: int = 320) -> int:
    """Writes a byte-level BPE tokenizer.json trained on `texts` (ChatML special tokens: a
    Qwen2-style chat tokenizer) and its tokenizer_config.json to `path`; returns its vocabulary
    size."""
    import json
    import os

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts) * 10, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}, f)
    return tok.get_vocab_size()


def save_hf_model(model: torch.nn.Module, path, max_shard_size=None) -> None:
    """save_pretrained as safetensors; `max_shard_size` (e.g. "20KB") splits it with an index."""
    kwargs = {} if max_shard_size is None else dict(max_shard_size=max_shard_size)
    model.save_pretrained(str(path), safe_serialization=True, **kwargs)


def padded_batch(seed: int, batch: int, length: int, vocab: int, pads=(0, 3, 1, 5)):
    """tokens [B, T] int32, mask [B, T] bool (row b left-padded by pads[b % len(pads)]), and
    positions [B, T] = max(cumsum(mask) - 1, 0) (so padding does not shift RoPE positions)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for b in range(batch):
        mask[b, :pads[b % len(pads)]] = False
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def hf_outputs(model: torch.nn.Module, tokens, mask=None, positions=None) -> np.ndarray:
    """float32 logits [B, T, V] of a causal LM, or, for a sequence classifier, its per-token
    scores [B, T] = final hidden @ score.weight (before pooling)."""
    kwargs = dict(input_ids=torch.as_tensor(np.asarray(tokens, np.int64)))
    if mask is not None:
        kwargs["attention_mask"] = torch.as_tensor(np.asarray(mask, np.int64))
    if positions is not None:
        kwargs["position_ids"] = torch.as_tensor(np.asarray(positions, np.int64))
    with torch.no_grad():
        if hasattr(model, "score"):
            hidden = model.model(**kwargs).last_hidden_state
            return model.score(hidden)[..., 0].float().numpy()
        return model(**kwargs).logits.float().numpy()


def random_rlr_params(config, seed: int = 0) -> dict:
    """numpy params of rlr `Transformer(config)` drawn as `randomize_` draws HF ones (matrices
    N(0, 1/D), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2)); no array is made on a device."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from rlr.models import Transformer

    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: Transformer(config).init(
        jax.random.key(0), tokens, tokens, jnp.ones((1, 4), bool))["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if name.endswith("['scale']"):
            return 1 + 0.1 * noise
        if name.endswith("['bias']"):
            return 0.1 * noise
        return noise / config.hidden_size ** 0.5

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))

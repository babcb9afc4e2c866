"""GGUF import: a Llama-family llama.cpp model file -> rlr ModelConfig, params tree and tokenizer.

A GGUF file (llama.cpp's format; Gerganov et al., https://github.com/ggml-org/ggml
docs/gguf.md) holds metadata key/values (the architecture's shape, the tokenizer's vocabulary,
merges and chat template) and tensors, each in a storage type: F32, F16, BF16, or a block
quantisation (Q8_0, Q4_0, Q4_1: 32 values a block with an f16 scale (and minimum); Q4_K, Q6_K:
256-value super-blocks with 6/8-bit sub-block scales). Tensors are dequantised to float32 with
the `gguf` package (`gguf.quants.dequantize`, the Python port of ggml's reference code).

Layout: a GGUF tensor of shape ne = [in, out] reads as a numpy array [out, in], i.e. torch's
Linear.weight; names map onto the Hugging Face Llama names (GGUF_TENSOR_NAMES) and from there onto
rlr leaves through rlr.models.hf_io's table. llama.cpp's converter (convert_hf_to_gguf.py,
LlamaModel.permute) reorders the rows of the q / k projections of each head from Hugging Face's
rotate_half RoPE layout (the two halves of the head dimension rotate together) to adjacent pairs
(dims 2j, 2j+1 rotate together): GGUF row h*Dh + 2j + s holds HF row h*Dh + s*Dh/2 + j
(s in {0, 1}, j < Dh/2). Import undoes it with that row index map (`hf_rows_of_gguf`).

Import is sharded like hf_io.load_hf_checkpoint: every leaf is made by
`jax.make_array_from_callback`, and a device's callback dequantises only the rows of the
tensors it holds (quantised blocks run along a row, so rows can be read alone).

The tokenizer (`tokenizer.ggml.model` "gpt2": byte-level BPE, Radford et al. 2019) is rebuilt
with `tokenizers` from the vocabulary, merges and pre-tokenizer name; control tokens are special
tokens; the chat template's family (ChatML or Llama 3) and its default system message are
read from `tokenizer.chat_template`. `convert_gguf` writes the whole as a Hugging Face checkpoint
directory (float32 safetensors, tokenizer.json, tokenizer_config.json) that every rlr loader reads.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

import flax.traverse_util as traverse_util
import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from rlr.models.config import ModelConfig
from rlr.models.decoder import Transformer
from rlr.models.hf_io import _assemble, _bounds, save_hf_checkpoint

ARCHITECTURE = "llama"  # general.architecture values this importer reads
# Storage types read: the list plus Q6_K (llama.cpp's Q4_K_M / Q5_K_M files mix it in).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
# GGUF tensor name -> Hugging Face Llama tensor name ("{i}": the layer index).
GGUF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
# Byte-level BPE pre-tokenizers by `tokenizer.ggml.pre` (llama.cpp llama-vocab.cpp): "smollm"
# (and the StarCoder family) isolates every digit before the GPT-2 split; "gpt-2" is GPT-2's.
PRE_TOKENIZERS = {"gpt-2": False, "default": False, "smollm": True, "starcoder": True}
CONTROL_TOKEN = 3  # tokenizer.ggml.token_type of a control (special) token
SYSTEM_HEADERS = {"chatml": "<|im_start|>system\n", "llama3": "<|start_header_id|>system<|end_header_id|>\n\n"}
SYSTEM_ENDS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


class GGUFError(ValueError):
    """A GGUF file this importer cannot read; the message names the file and the key / tensor."""


# ----------------------------------------------------------------------------- reading


class GGUFFile:
    """The metadata and tensors of one GGUF file (memory-mapped through gguf.GGUFReader)."""

    def __init__(self, path: str):
        from gguf import GGUFReader

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self._reader = GGUFReader(self.path)
        except Exception as e:  # the reader raises ValueError / struct errors on a bad file
            raise GGUFError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        self.tensors = {t.name: t for t in self._reader.tensors}

    def value(self, key: str, default: Any = ...) -> Any:
        """The metadata value of `key` (a Python scalar, str or list); GGUFError when absent and
        no default is given."""
        field = self._reader.fields.get(key)
        if field is None:
            if default is ...:
                raise GGUFError(f"{self.path}: missing metadata key {key!r}")
            return default
        return field.contents()

    def shape(self, name: str) -> tuple[int, ...]:
        """numpy shape of tensor `name` (GGUF's ne reversed: [out, in] for a matrix)."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape))

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def read_rows(self, name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 rows `rows` (all when None) of tensor `name`, dequantised: [len(rows), in]
        for a matrix, the whole vector for a 1-D tensor."""
        from gguf import quants

        tensor = self.tensors[name]
        data = tensor.data if rows is None or len(self.shape(name)) == 1 else tensor.data[rows]
        return np.asarray(quants.dequantize(np.asarray(data), tensor.tensor_type), np.float32)


def hf_rows_of_gguf(num_rows: int, num_heads: int) -> np.ndarray:
    """index [num_rows]: entry r is the GGUF row holding Hugging Face row r of a q / k weight.

    llama.cpp permutes each head's Dh rows from the rotate_half layout to adjacent pairs:
    HF row h*Dh + s*Dh/2 + j is GGUF row h*Dh + 2j + s (s in {0, 1}, j < Dh/2).
    """
    head_dim = num_rows // num_heads
    if head_dim * num_heads != num_rows or head_dim % 2:
        raise ValueError(f"hf_rows_of_gguf: {num_rows} rows do not split into {num_heads} heads of "
                         f"an even size")
    r = np.arange(num_rows)
    head, within = r // head_dim, r % head_dim
    half, j = within // (head_dim // 2), within % (head_dim // 2)
    return head * head_dim + 2 * j + half


def read_gguf_config(gguf: GGUFFile, **changes) -> ModelConfig:
    """The ModelConfig of a Llama-family GGUF file from its metadata ({arch}.block_count,
    embedding_length, feed_forward_length, attention.head_count(_kv), rope.freq_base,
    attention.layer_norm_rms_epsilon, context_length); tied embeddings when it has no
    output.weight. RoPE scaling (rope.scaling.*, a rope_freqs tensor) is refused."""
    arch = gguf.value("general.architecture")
    if arch != ARCHITECTURE:
        raise GGUFError(f"{gguf.path}: general.architecture={arch!r}; only {ARCHITECTURE!r} "
                        f"(Llama family) files are read")
    key = lambda name: f"{arch}.{name}"
    scaling = gguf.value(key("rope.scaling.type"), "none")
    if scaling != "none" or "rope_freqs.weight" in gguf.tensors:
        raise GGUFError(f"{gguf.path}: RoPE scaling ({key('rope.scaling.type')}={scaling!r} or a "
                        f"rope_freqs.weight tensor) is not supported")
    num_heads = int(gguf.value(key("attention.head_count")))
    hidden = int(gguf.value(key("embedding_length")))
    head_dim = int(gguf.value(key("attention.key_length"), hidden // num_heads))
    rope_dims = int(gguf.value(key("rope.dimension_count"), head_dim))
    if rope_dims != head_dim:
        raise GGUFError(f"{gguf.path}: {key('rope.dimension_count')}={rope_dims} != head_dim "
                        f"{head_dim} (partial rotary embeddings are not supported)")
    vocab = gguf.value(key("vocab_size"), None)
    if vocab is None:
        vocab = gguf.shape("token_embd.weight")[0]
    config = ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(gguf.value(key("feed_forward_length"))),
        num_layers=int(gguf.value(key("block_count"))),
        num_heads=num_heads,
        num_kv_heads=int(gguf.value(key("attention.head_count_kv"), num_heads)),
        head_dim=head_dim,
        rope_theta=float(gguf.value(key("rope.freq_base"), 10000.0)),
        rms_norm_eps=float(gguf.value(key("attention.layer_norm_rms_epsilon"))),
        qkv_bias=False,
        tie_embeddings="output.weight" not in gguf.tensors,
        max_position_embeddings=int(gguf.value(key("context_length"), 4096)),
        architecture="llama",
    )
    return config.replace(**changes)


def hf_name(gguf_name: str) -> Optional[str]:
    """The Hugging Face Llama name of a GGUF tensor name, None when it has none."""
    match = _LAYER.match(gguf_name)
    if match:
        template = GGUF_TENSOR_NAMES.get("blk.{i}." + match.group(2))
        return None if template is None else template.format(i=int(match.group(1)))
    return GGUF_TENSOR_NAMES.get(gguf_name)


def _hf_tensors(gguf: GGUFFile) -> dict[str, str]:
    """{HF name: GGUF name} of every tensor; an unknown tensor or storage type is a GGUFError."""
    names = {}
    for name in gguf.tensors:
        target = hf_name(name)
        if target is None:
            raise GGUFError(f"{gguf.path}: tensor {name!r} is not part of a Llama model "
                            f"(expected names {sorted(GGUF_TENSOR_NAMES)})")
        kind = gguf.type_name(name)
        if kind not in SUPPORTED_TYPES:
            raise GGUFError(f"{gguf.path}: tensor {name!r} is stored as {kind}; supported types "
                            f"are {SUPPORTED_TYPES}")
        names[target] = name
    return names


def _row_maps(config: ModelConfig) -> dict[str, int]:
    """{HF name suffix: heads} of the tensors whose rows llama.cpp permuted."""
    return {"self_attn.q_proj.weight": config.num_heads, "self_attn.k_proj.weight": config.num_kv_heads}


def gguf_reader(gguf: GGUFFile, config: ModelConfig):
    """(shapes {HF name: numpy shape}, read(HF name, index) -> float32 block, {HF name: GGUF
    name}): the file's tensors as hf_io's assembly reads a checkpoint, q / k rows un-permuted."""
    names = _hf_tensors(gguf)
    shapes = {hf: gguf.shape(g) for hf, g in names.items()}
    permuted = _row_maps(config)

    def read(name: str, index: tuple) -> np.ndarray:
        source = names[name]
        if len(shapes[name]) == 1:
            return gguf.read_rows(source)[index]
        rows = np.arange(shapes[name][0])[index[0]]
        heads = next((h for suffix, h in permuted.items() if name.endswith(suffix)), None)
        if heads is not None:
            rows = hf_rows_of_gguf(shapes[name][0], heads)[rows]
        return gguf.read_rows(source, rows)[(slice(None),) + tuple(index[1:])]

    return shapes, read, names


def load_gguf(path: str, mesh: Optional[jax.sharding.Mesh] = None,
              config_overrides: Optional[Mapping[str, Any]] = None, head: str = "lm",
              rng: Optional[jax.Array] = None) -> tuple[ModelConfig, dict]:
    """(config, params) of the Llama-family GGUF file `path`, placed in their shards.

    As hf_io.load_hf_checkpoint: each leaf is made by `jax.make_array_from_callback` in the
    sharding `param_shardings(Transformer(config, head), mesh)` gives it (the first local device
    when mesh is None), each callback dequantising only the rows it needs; weights are cast to
    config.param_dtype. head "score" initialises a score head from `rng`. Missing, unexpected or
    misshapen tensors raise a ValueError naming the tensor and the file.
    """
    from rlr.parallel.mesh import param_shardings

    gguf = GGUFFile(path)
    config = read_gguf_config(gguf, **dict(config_overrides or {}))
    shapes, read, names = gguf_reader(gguf, config)
    if mesh is not None:
        shardings = traverse_util.flatten_dict(param_shardings(Transformer(config, head), mesh))
    device = SingleDeviceSharding(jax.local_devices()[0])

    def place(leaf_path, leaf, fill):
        sharding = device if mesh is None else shardings[leaf_path]
        blocks = {}  # replicas of a block read it once

        def callback(index):
            key = tuple(_bounds(index, leaf.shape))
            if key not in blocks:
                blocks[key] = np.asarray(fill(list(key)), dtype=leaf.dtype)
            return blocks[key]

        return jax.make_array_from_callback(tuple(leaf.shape), sharding, callback)

    where = lambda name: f"{gguf.path} (tensor {names.get(name, '?')})"
    params = _assemble(config, head, shapes, read, where, place, rng)
    return config, params


# ----------------------------------------------------------------------------- tokenizer


def chat_format_of(template: Optional[str]) -> str:
    """rlr.data.tokenizer's chat format of a Jinja chat template: "chatml" when it writes
    <|im_start|>, "llama3" when it writes <|start_header_id|>, "plain" without a template."""
    if not template:
        return "plain"
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    raise ValueError("chat template: neither ChatML (<|im_start|>) nor Llama 3 "
                     "(<|start_header_id|>); rlr formats only those (rlr.data.tokenizer)")


def default_system_prompt(template: Optional[str], chat_format: str) -> Optional[str]:
    """The system message a chat template inserts when a chat has none (SmolLM2: "You are a
    helpful AI assistant named SmolLM, trained by Hugging Face"), or None. Read as the literal
    text between the format's system header and its end-of-turn token."""
    if not template or chat_format not in SYSTEM_HEADERS:
        return None
    header, end = SYSTEM_HEADERS[chat_format], SYSTEM_ENDS[chat_format]
    match = re.search(re.escape(header) + r"([^{}'\"]*?)" + re.escape(end), template)
    return match.group(1) if match else None


def build_gguf_tokenizer(gguf: GGUFFile):
    """A `tokenizers.Tokenizer` from the file's byte-level BPE metadata: vocabulary
    (tokenizer.ggml.tokens, id = position), merges, the pre-tokenizer of tokenizer.ggml.pre
    (PRE_TOKENIZERS), the byte-level decoder; control tokens (token_type 3) are special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = gguf.value("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.model={kind!r}; only 'gpt2' (byte-level BPE) "
                        f"tokenizers are built")
    pre = gguf.value("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.pre={pre!r}; supported: {sorted(PRE_TOKENIZERS)}")
    tokens = list(gguf.value("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in gguf.value("tokenizer.ggml.merges")]
    types = list(gguf.value("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.tokens repeats a token")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                        byte_level])
                               if PRE_TOKENIZERS[pre] else byte_level)
    tokenizer.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind == CONTROL_TOKEN]
    tokenizer.add_special_tokens(special)
    return tokenizer


def tokenizer_config_of(gguf: GGUFFile) -> dict:
    """The tokenizer_config.json dict of the file: eos_token, pad_token, bos_token (None when
    tokenizer.ggml.add_bos_token is false: the model is not given one), chat_template."""
    tokens = gguf.value("tokenizer.ggml.tokens")

    def token(key):
        index = gguf.value(f"tokenizer.ggml.{key}", None)
        if index is not None and not 0 <= index < len(tokens):
            raise GGUFError(f"{gguf.path}: tokenizer.ggml.{key}={index} is not a token id")
        return None if index is None else tokens[index]

    eos = token("eos_token_id")
    if eos is None:
        raise GGUFError(f"{gguf.path}: missing metadata key 'tokenizer.ggml.eos_token_id'")
    add_bos = bool(gguf.value("tokenizer.ggml.add_bos_token", False))
    return {"eos_token": eos, "pad_token": token("padding_token_id"),
            "bos_token": token("bos_token_id") if add_bos else None,
            "chat_template": gguf.value("tokenizer.chat_template", None)}


def load_gguf_tokenizer(path: str):
    """The rlr.data.tokenizer.HFTokenizer of a GGUF file: its BPE tokenizer, special ids, chat
    format and default system message (see build_gguf_tokenizer, tokenizer_config_of)."""
    from rlr.data.tokenizer import HFTokenizer

    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)
    config = tokenizer_config_of(gguf)
    try:
        chat_format = chat_format_of(config["chat_template"])
    except ValueError as e:
        raise GGUFError(f"{gguf.path}: tokenizer.{e}") from None
    return HFTokenizer(build_gguf_tokenizer(gguf), gguf.path, eos=config["eos_token"],
                       pad=config["pad_token"], bos=config["bos_token"], chat_format=chat_format,
                       system_prompt=default_system_prompt(config["chat_template"], chat_format))


# ----------------------------------------------------------------------------- conversion


def convert_gguf(path: str, out_dir: str) -> ModelConfig:
    """Write the GGUF file `path` as a Hugging Face checkpoint directory `out_dir`: config.json
    and float32 model.safetensors (the dequantised, un-permuted weights), tokenizer.json and
    tokenizer_config.json (with the chat template and rlr's "system_prompt"). What
    rlr.models.hf_io.load_hf_checkpoint, transformers and rlr.data.tokenizer.load_tokenizer read.
    Returns the config."""
    gguf = GGUFFile(path)
    config, params = load_gguf(path)
    save_hf_checkpoint(params, config, out_dir)
    tokenizer = load_gguf_tokenizer(gguf)
    tokenizer._tok.save(os.path.join(out_dir, "tokenizer.json"))
    tok_config = {**tokenizer_config_of(gguf), "system_prompt": tokenizer.system_prompt,
                  "source": os.path.basename(gguf.path)}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=1)
    return config

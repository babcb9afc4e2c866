"""Hugging Face checkpoint import and export: Qwen2 / Llama safetensors <-> rlr parameter trees.

A checkpoint directory holds `config.json` and its weights, either one `model.safetensors` or
shards listed by `model.safetensors.index.json` (the layout `save_pretrained` writes). One table
(`tensor_maps`) says how each Hugging Face tensor lays out as an rlr leaf: torch `Linear.weight`
[out, in] becomes the kernel [in, *out] (x @ W), head axes are split out ([N*Dh] -> [N, Dh]),
and the per-layer tensors `model.layers.{i}.*` are stacked along a leading layer axis.

Import never builds the whole tree on one host: each leaf is created with
`jax.make_array_from_callback` in the sharding `param_shardings` gives it, and the callback reads
only the slice a device needs through safetensors' lazy `get_slice` (for a stacked leaf, that
slice of every layer in its range). Export streams the tree out one layer of one leaf at a time.

Tensor names: Hugging Face transformers `modeling_qwen2.py` / `modeling_llama.py`
(Qwen Team 2024; Touvron et al. 2023). A scalar head (critic, reward model) maps onto the
`score.weight` of `Qwen2ForSequenceClassification` / `LlamaForSequenceClassification`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors' numpy reader)
import numpy as np
from jax.sharding import SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from rlr.models.config import ModelConfig, from_hf_config, to_hf_config
from rlr.models.decoder import HEADS, Transformer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
SCORE_WEIGHT, SCORE_BIAS = "score.weight", "score.bias"
# Buffers some older checkpoints carry that are not parameters (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Sequence-classification (reward model) architectures and the decoder family they wrap.
SCORE_ARCHITECTURES = {"Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
                       "LlamaForSequenceClassification": "LlamaForCausalLM"}
DEFAULT_MAX_SHARD_BYTES = 4 * 2**30

# A reader returns the block of a named HF tensor at a tuple of slices (one per HF axis).
Reader = Callable[[str, tuple], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one Hugging Face tensor (one per layer when `stacked`) lays out as one rlr leaf.

    HF axis j is split into the sizes `groups[j]` (an empty group drops an axis of size 1); the
    split axes permuted by `perm` are the rlr axes (rlr axis a is split axis perm[a]). A stacked
    leaf has a leading layer axis; its HF name holds "{i}" for the layer index.
    """

    path: tuple[str, ...]
    hf_name: str
    groups: tuple[tuple[int, ...], ...]
    perm: tuple[int, ...]
    stacked: bool = False

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(g) for g in self.groups)

    @property
    def layer_shape(self) -> tuple[int, ...]:
        split = [s for g in self.groups for s in g]
        return tuple(split[p] for p in self.perm)

    def hf_names(self, num_layers: int) -> list[str]:
        if self.stacked:
            return [self.hf_name.format(i=i) for i in range(num_layers)]
        return [self.hf_name]

    def to_hf(self, block: np.ndarray) -> np.ndarray:
        """rlr block (one layer for a stacked leaf) -> HF tensor (the inverse of `_read_block`)."""
        hf = np.asarray(block).transpose(np.argsort(self.perm)).reshape(self.hf_shape)
        return np.ascontiguousarray(hf)


def _kernel(path, hf_name, out, inp, stacked=True) -> TensorMap:
    """torch Linear.weight [prod(out), prod(inp)] -> kernel [*inp, *out]."""
    perm = tuple(range(len(out), len(out) + len(inp))) + tuple(range(len(out)))
    return TensorMap(path, hf_name, (tuple(out), tuple(inp)), perm, stacked)


def _vector(path, hf_name, shape, stacked=True) -> TensorMap:
    """A tensor whose single HF axis splits into `shape` (norm scales, biases)."""
    return TensorMap(path, hf_name, (tuple(shape),), tuple(range(len(shape))), stacked)


def tensor_maps(config: ModelConfig, head: str = "lm", score_bias: bool = True) -> list[TensorMap]:
    """Every rlr leaf that a Hugging Face checkpoint of `config` holds, and how it maps.

    head "lm": the decoder and, when untied, lm_head.weight. head "score": the decoder and the
    score head (score.weight [1, D]; score.bias [1] when `score_bias`).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {HEADS}")
    c = config
    d, f, n, kv, hd = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    layer = "model.layers.{i}."
    maps = [TensorMap(("embed", "embedding"), "model.embed_tokens.weight",
                      ((c.vocab_size,), (d,)), (0, 1)),
            _vector(("layers", "attn_norm", "scale"), layer + "input_layernorm.weight", (d,))]
    for proj, heads in (("q_proj", n), ("k_proj", kv), ("v_proj", kv)):
        name = layer + f"self_attn.{proj}."
        maps.append(_kernel(("layers", "attn", proj, "kernel"), name + "weight", (heads, hd), (d,)))
        if c.qkv_bias:
            maps.append(_vector(("layers", "attn", proj, "bias"), name + "bias", (heads, hd)))
    maps += [
        _kernel(("layers", "attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight",
                (d,), (n, hd)),
        _vector(("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", (d,)),
    ]
    for proj, out, inp in (("gate_proj", f, d), ("up_proj", f, d), ("down_proj", d, f)):
        maps.append(_kernel(("layers", "mlp", proj, "kernel"), layer + f"mlp.{proj}.weight",
                            (out,), (inp,)))
    maps.append(_vector(("final_norm", "scale"), "model.norm.weight", (d,), stacked=False))
    if head == "lm" and not c.tie_embeddings:
        maps.append(_kernel(("lm_head",), LM_HEAD, (c.vocab_size,), (d,), stacked=False))
    if head == "score":
        maps.append(TensorMap(("score_head", "kernel"), SCORE_WEIGHT, ((), (d,)), (0,)))
        if score_bias:
            maps.append(TensorMap(("score_head", "bias"), SCORE_BIAS, ((),), ()))
    return maps


# ----------------------------------------------------------------------------- reading blocks


def _bounds(index: tuple, shape: tuple) -> list[tuple[int, int]]:
    """(start, stop) per axis of a tuple of unit-step slices into an array of `shape`."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    bounds = []
    for s, size in zip(index, shape):
        start, stop, step = s.indices(size)
        if step != 1:
            raise ValueError(f"shard index {index}: only unit-step slices are supported")
        bounds.append((start, stop))
    return bounds


def _read_block(tmap: TensorMap, read: Reader, name: str, bounds) -> np.ndarray:
    """The rlr block at `bounds` (per rlr axis of one layer) of HF tensor `name`.

    Along each HF axis only the range the block's outermost split axis needs is read (all of
    it is needed when the inner split axes are whole, as they are under the default rules);
    inner split axes are cut after the reshape.
    """
    split_bounds = [None] * len(tmap.perm)
    for axis, b in zip(tmap.perm, bounds):
        split_bounds[axis] = b
    hf_index, shape, inner_cut, k = [], [], [], 0
    for group in tmap.groups:
        if not group:  # an HF axis of size 1 that rlr drops
            hf_index.append(slice(0, 1))
            continue
        (start, stop), inner = split_bounds[k], math.prod(group[1:])
        hf_index.append(slice(start * inner, stop * inner))
        shape += [stop - start, *group[1:]]
        inner_cut += [slice(None)] + [slice(*split_bounds[k + j]) for j in range(1, len(group))]
        k += len(group)
    block = np.asarray(read(name, tuple(hf_index))).reshape(shape)
    return block[tuple(inner_cut)].transpose(tmap.perm)


def _read_leaf(tmap: TensorMap, read: Reader, bounds) -> np.ndarray:
    """The rlr leaf block at `bounds`; a stacked leaf reads the block of each layer in range."""
    if not tmap.stacked:
        return _read_block(tmap, read, tmap.hf_name, bounds)
    (first, last), rest = bounds[0], bounds[1:]
    return np.stack([_read_block(tmap, read, tmap.hf_name.format(i=i), rest)
                     for i in range(first, last)])


# ----------------------------------------------------------------------------- checks and assembly


def _ignored(name: str, config: ModelConfig, head: str) -> bool:
    """Tensors a checkpoint may hold that this model does not use: rotary buffers, and the
    output matrix when tied (it is the embedding) or when a score head replaces it."""
    if name.endswith(IGNORED_SUFFIXES):
        return True
    return name == LM_HEAD and (config.tie_embeddings or head == "score")


def _present_maps(config: ModelConfig, head: str, names) -> list[TensorMap]:
    """tensor_maps for a checkpoint holding tensors `names`: a score head that it lacks (a causal
    LM loaded as a critic) or a score.bias it lacks is initialised instead."""
    maps = tensor_maps(config, head, score_bias=SCORE_BIAS in names)
    if head == "score" and SCORE_WEIGHT not in names:
        maps = [m for m in maps if m.path[0] != "score_head"]
    return maps


def _check_tensors(maps, config: ModelConfig, head: str, shapes: Mapping[str, tuple],
                   where: Callable[[str], str]) -> None:
    """Every expected tensor present with its shape and nothing unexpected, else a ValueError
    naming the tensor and `where(tensor)` (its file)."""
    expected = {name: m.hf_shape for m in maps for name in m.hf_names(config.num_layers)}
    missing = [name for name in expected if name not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{where(missing[0])}: missing tensor {missing[0]!r} of shape "
                         f"{list(expected[missing[0]])}{more} for a {config.architecture} "
                         f"model with head {head!r}")
    extra = [n for n in shapes if n not in expected and not _ignored(n, config, head)]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ValueError(f"{where(extra[0])}: unexpected tensor {extra[0]!r}{more}: not a "
                         f"parameter of a {config.architecture} model with head {head!r}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{where(name)}: tensor {name!r} has shape {list(shapes[name])}, "
                             f"expected {list(shape)} from the config")


def _abstract_params(config: ModelConfig, head: str) -> dict:
    """Flat {path: ShapeDtypeStruct} of the params of Transformer(config, head), no arrays made."""
    model = Transformer(config, head=head)
    tokens = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda: model.init(jax.random.key(0), tokens, tokens, jnp.ones((1, 8), bool))["params"])
    return traverse_util.flatten_dict(nn.meta.unbox(boxed))


def _fresh_leaf(path: tuple, shape: tuple, rng: jax.Array) -> np.ndarray:
    """A score-head leaf the checkpoint lacks: kernel ~ N(0, 0.02^2) as the decoder's own
    initialiser draws it, bias 0."""
    if path == ("score_head", "kernel"):
        return np.asarray(0.02 * jax.random.normal(rng, shape, jnp.float32))
    if path == ("score_head", "bias"):
        return np.zeros(shape, np.float32)
    raise ValueError(f"parameter {'/'.join(path)} has no Hugging Face tensor (rlr/models/hf_io.py)")


def _assemble(config: ModelConfig, head: str, shapes: Mapping[str, tuple], read: Reader,
              where: Callable[[str], str], place: Callable, rng: Optional[jax.Array]) -> dict:
    """The rlr param tree of a checkpoint with tensor `shapes` read through `read`, each leaf
    made by place(path, ShapeDtypeStruct, fill), fill(bounds) -> the leaf's numpy block."""
    maps = _present_maps(config, head, shapes)
    _check_tensors(maps, config, head, shapes, where)
    by_path = {m.path: m for m in maps}
    rng = jax.random.key(0) if rng is None else rng
    flat = {}
    for path, leaf in _abstract_params(config, head).items():
        if path in by_path:
            tmap = by_path[path]
            layers = (config.num_layers,) if tmap.stacked else ()
            if layers + tmap.layer_shape != tuple(leaf.shape):  # the table and decoder.py disagree
                raise RuntimeError(f"rlr/models/hf_io.py maps {tmap.hf_name} to shape "
                                   f"{layers + tmap.layer_shape}, the model has {leaf.shape}")
            fill = lambda bounds, tmap=tmap: _read_leaf(tmap, read, bounds)
        else:
            value = _fresh_leaf(path, tuple(leaf.shape), rng)
            fill = lambda bounds, value=value: value[tuple(slice(*b) for b in bounds)]
        flat[path] = place(path, leaf, fill)
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------- import


def read_hf_config(path: str, **changes) -> ModelConfig:
    """The ModelConfig of the checkpoint directory `path` (its config.json), with overrides.

    Sequence-classification (reward model) architectures read as their decoder family.
    """
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found (a Hugging Face checkpoint directory holds "
                                f"{CONFIG_FILE} and its safetensors weights)")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise KeyError(f"config_overrides: unknown ModelConfig field {unknown[0]!r}; "
                       f"expected some of {sorted(fields)}")
    with open(file) as fh:
        hf = json.load(fh)
    if hf.get("architectures"):
        hf["architectures"] = [SCORE_ARCHITECTURES.get(a, a) for a in hf["architectures"]]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{file}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{file}: use_sliding_window=true is not supported (full attention only)")
    try:
        return from_hf_config(hf, **changes)
    except KeyError as e:
        raise ValueError(f"{file}: missing key {e}") from e
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def _weight_files(path: str) -> tuple[dict[str, str], str]:
    """({tensor name: safetensors file}, the file that lists them) of checkpoint dir `path`."""
    index, single = os.path.join(path, INDEX_FILE), os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object {{tensor: file}}")
        files = {name: os.path.join(path, f) for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{index} lists {os.path.basename(f)}, not found in {path}")
        return files, index
    if os.path.isfile(single):
        with safe_open(single, framework="numpy") as fh:
            return {name: single for name in fh.keys()}, single
    raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def has_score_head(path: str) -> bool:
    """Whether the Hugging Face checkpoint directory `path` holds a score head (score.weight, as a
    *ForSequenceClassification reward model does), read from its safetensors index or header."""
    return SCORE_WEIGHT in _weight_files(path)[0]


def load_hf_checkpoint(path: str, mesh: Optional[jax.sharding.Mesh] = None,
                       config_overrides: Optional[Mapping[str, Any]] = None, head: str = "lm",
                       rng: Optional[jax.Array] = None) -> tuple[ModelConfig, dict]:
    """(config, params) of the Hugging Face checkpoint directory `path`, placed in their shards.

    Every leaf is made by `jax.make_array_from_callback` in the sharding
    `param_shardings(Transformer(config, head), mesh)` gives it (all on the first local device
    when mesh is None); each device's callback reads only its slice of the safetensors file(s),
    so the tree is never whole on a host. Weights are cast to `config.param_dtype` (a bf16 / f16
    checkpoint loads into float32 unless `config_overrides` says otherwise). head "score" reads
    `score.weight` / `score.bias` when present (a sequence-classification reward model), else
    initialises the score head from `rng` (kernel N(0, 0.02^2), bias 0); lm_head.weight is then
    ignored. Missing, unexpected or misshapen tensors raise a ValueError naming tensor and file.
    """
    from rlr.parallel.mesh import param_shardings

    config = read_hf_config(path, **dict(config_overrides or {}))
    files, source = _weight_files(path)
    if mesh is not None:
        shardings = traverse_util.flatten_dict(param_shardings(Transformer(config, head), mesh))
    device = SingleDeviceSharding(jax.local_devices()[0])

    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(f, framework="numpy"))
                   for f in sorted(set(files.values()))}
        shapes = {}
        for name, file in files.items():
            try:
                shapes[name] = tuple(handles[file].get_slice(name).get_shape())
            except Exception as e:  # the index names a file that lacks the tensor
                raise ValueError(f"{source}: tensor {name!r} is listed in {file}, which lacks "
                                 f"it ({e})") from e

        def read(name, index):
            return handles[files[name]].get_slice(name)[index]

        def place(leaf_path, leaf, fill):
            sharding = device if mesh is None else shardings[leaf_path]
            blocks = {}  # devices holding the same block (replicas) read it once

            def callback(index):
                bounds = _bounds(index, leaf.shape)
                key = tuple(bounds)
                if key not in blocks:
                    blocks[key] = np.asarray(fill(bounds), dtype=leaf.dtype)
                return blocks[key]

            return jax.make_array_from_callback(tuple(leaf.shape), sharding, callback)

        params = _assemble(config, head, shapes, read, lambda name: files.get(name, source),
                           place, rng)
    return config, params


def params_from_hf_state_dict(tensors: Mapping[str, np.ndarray], config: ModelConfig,
                              head: str = "lm", rng: Optional[jax.Array] = None) -> dict:
    """The rlr param tree (numpy, config.param_dtype) of Hugging Face tensors {name: array}.

    Same mapping and checks as `load_hf_checkpoint` (missing / unexpected / misshapen tensors
    raise a ValueError naming the tensor), for importers that produce tensors in memory.
    """
    shapes = {name: tuple(np.shape(t)) for name, t in tensors.items()}

    def read(name, index):
        return np.asarray(tensors[name])[index]

    def place(_, leaf, fill):
        return np.asarray(fill([(0, s) for s in leaf.shape]), dtype=leaf.dtype)

    return _assemble(config, head, shapes, read, lambda name: "state dict", place, rng)


# ----------------------------------------------------------------------------- export


@jax.jit
def _take_layer(stacked: jax.Array, layer: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(stacked, layer, keepdims=False)


def _host_block(leaf, layer: Optional[int]) -> np.ndarray:
    """Layer `layer` of a stacked leaf (the leaf itself when None) as a host numpy array;
    a leaf spread over several hosts is gathered (every process must call this)."""
    if layer is not None:
        leaf = leaf[layer] if isinstance(leaf, np.ndarray) else _take_layer(leaf, layer)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.asarray(leaf)


def _export_plan(params, config: ModelConfig) -> list[tuple[str, TensorMap, Optional[int], Any]]:
    """(HF name, map, layer, leaf) of every tensor to write, in Hugging Face order."""
    head = "score" if "score_head" in params else "lm"
    flat = traverse_util.flatten_dict(params)
    # Hugging Face classifiers have no score.bias: a zero bias is left out (import restores it).
    bias = flat.get(("score_head", "bias"))
    write_bias = bias is not None and bool(np.any(_host_block(bias, None)))
    if bias is not None and not write_bias:
        del flat[("score_head", "bias")]
    maps = tensor_maps(config, head, score_bias=write_bias)
    wanted = {m.path for m in maps}
    mismatched = sorted(set(flat) ^ wanted)
    if mismatched:
        path = mismatched[0]
        state = "missing from" if path in wanted else "unexpected in"
        raise ValueError(f"params: leaf {'/'.join(path)} is {state} a {config.architecture} "
                         f"tree with head {head!r}")
    stacked = [m for m in maps if m.stacked]
    plan = [(m.hf_name, m, None, flat[m.path]) for m in maps[:1]]
    plan += [(m.hf_name.format(i=i), m, i, flat[m.path]) for i in range(config.num_layers)
             for m in stacked]
    plan += [(m.hf_name, m, None, flat[m.path]) for m in maps[1:] if not m.stacked]
    return plan


def hf_state_dict_from_params(params, config: ModelConfig) -> dict[str, np.ndarray]:
    """Hugging Face tensors {name: numpy array} of an rlr param tree (inverse of
    `params_from_hf_state_dict`); a tree with a score head gives score.weight and, when the
    bias is not zero, score.bias."""
    return {name: tmap.to_hf(_host_block(leaf, layer))
            for name, tmap, layer, leaf in _export_plan(params, config)}


def _hf_export_config(config: ModelConfig, head: str, dtype) -> dict:
    hf = to_hf_config(config)
    hf["torch_dtype"] = hf["dtype"] = np.dtype(dtype).name
    if head == "score":
        family = {v: k for k, v in SCORE_ARCHITECTURES.items()}
        hf["architectures"] = [family[a] for a in hf["architectures"]]
        hf["id2label"], hf["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    return hf


def save_hf_checkpoint(params, config: ModelConfig, path: str,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write `params` as a Hugging Face checkpoint: config.json and safetensors weights in the
    params' own dtype, one `model.safetensors` or, past `max_shard_bytes`, shards
    `model-0000k-of-0000n.safetensors` listed by `model.safetensors.index.json`.

    Tensors leave the devices one layer of one leaf at a time (gathered across hosts when
    sharded over several); only process 0 writes. Weight files of an earlier export in `path`
    are replaced. Returns the weight file names. `load_hf_checkpoint` of the result is exact.
    """
    plan = _export_plan(params, config)
    head = "score" if "score_head" in params else "lm"
    nbytes = [math.prod(tmap.hf_shape) * np.dtype(leaf.dtype).itemsize
              for _, tmap, _, leaf in plan]
    shards, size = [[]], 0
    for item, n in zip(plan, nbytes):
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(path, exist_ok=True)
        for old in os.listdir(path):
            if old in (SINGLE_FILE, INDEX_FILE) or (old.startswith("model-")
                                                    and old.endswith(".safetensors")):
                os.remove(os.path.join(path, old))
        embedding = traverse_util.flatten_dict(params)[("embed", "embedding")]
        with open(os.path.join(path, CONFIG_FILE), "w") as fh:
            json.dump(_hf_export_config(config, head, embedding.dtype), fh, indent=2)
    weight_map = {}
    for file, shard in zip(names, shards):
        tensors = {name: tmap.to_hf(_host_block(leaf, layer)) for name, tmap, layer, leaf in shard}
        weight_map.update({name: file for name in tensors})
        if writer:
            save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    if writer and len(shards) > 1:
        with open(os.path.join(path, INDEX_FILE), "w") as fh:
            json.dump({"metadata": {"total_size": sum(nbytes)}, "weight_map": weight_map}, fh,
                      indent=2)
    return names

"""Bytes per device of a training step or a sampler, before anything is compiled.

A plan for a mesh (data, fsdp, tensor) and a batch: will Qwen2.5-1.5B with AdamW, B=16, T=1024
and no rematerialisation fit in 80 GB? `estimate_memory` answers from the model config alone
(parameter shapes come from `jax.eval_shape` of the real model, so nothing is allocated), split
into the parts that a person can act on:

    params            the parameter trees (policy, plus critic / reference when asked)
    optimizer_state   Adam's two moments (or the state of any optax transformation)
    gradients         one params-shaped gradient tree (the largest model's)
    activations       what the backward pass keeps (per remat policy) + its working set
    kv_cache          the sampler's key/value cache, when a rollout is given
    decode_weights    the sampler's per-layer copy of the weights (compute dtype), with it
    sampler_activations  the sampler's prefill (attention scores, MLP) or logits, with it
    scoring_activations  forwards without gradients over a scored batch (PPO), when asked

Sharding follows the logical-axis rules (rlr/parallel/rules.py): a parameter dimension named
`embed` is split over fsdp, `heads` / `mlp` / `vocab` over tensor, and so on; activations are
split over (data, fsdp) along the batch and over tensor along heads and the MLP width.

The activation formulas count the residuals that `jax.vjp` of rlr.models.Transformer saves
(read with `jax.ad_checkpoint.saved_residuals`) and a working set fitted to XLA's compiled
memory analysis of rlr.train.sft_step.train_step (tests/test_memory.py checks the total within
20%, and those of the DPO step, the PPO update and the ORM step). With config.attention == "xla"
they describe XLA's attention, which materialises the [T, S] score matrix of every head; with
"cudnn" (flash attention) the score terms drop out, a formula that only a GPU's compiled
analysis can check (benchmarks/train_step.py prints both side by side). References for the
counting: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") and
Rajbhandari et al. 2020 (ZeRO: optimizer states and gradients sharded with the parameters).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlr.models.config import REMAT_POLICIES, ModelConfig
from rlr.parallel.rules import BATCH_AXES, DEFAULT_RULES, MESH_AXES

GiB = 1024 ** 3
OPTIMIZER_MOMENTS = {"adamw": 2, "sgd": 0}  # params-shaped state trees of a named optimizer
MeshLike = Union[None, jax.sharding.Mesh, Mapping[str, int], Sequence[int]]

# Working set of the backward pass of one layer, as a multiple of that layer's saved residuals
# without rematerialisation (recomputed activations and their cotangents), per remat policy:
# fitted to XLA's memory analysis of the SFT step on CPU (float32; tests/test_memory.py).
BACKWARD_WORKING_SET = {"none": 1.0, "full": 1.25, "dots": 0.8}
# float32 [rows, chunk, V] buffers alive at once in the backward of one log-prob chunk
# (logits, softmax, their cotangent).
LOGIT_BUFFERS = 3
# The sampler's prefill (rlr.sampling.generate: the prompts through the unrolled layers, XLA's
# attention, rlr.models.decoder.cached_attention), fitted to XLA:CPU's memory analysis of
# rlr.sampling.Sampler (float32; tests/test_memory.py): float32 [b, N, P, P] score buffers alive
# at the peak of a layer's attention, and next to its MLP's [b, P, F] buffers at the MLP's peak.
PREFILL_ATTENTION_SCORES = 2.5
PREFILL_MLP_SCORES, PREFILL_MLP_BUFFERS = 1.5, 2.6
# A forward without gradients over a batch (rlr.train.rollout_scoring.score_rollout), fitted
# likewise: the float32 logits of one log-prob chunk (one layer's peak: forward_bytes_per_token).
SCORING_LOGIT_BUFFERS = 1.05
# Whole [V, D] tables (the vocabulary unsplit too) a training pass with an LM head holds with
# fsdp > 1 beyond the terms above (the head gathered whole, and one more table-sized buffer;
# the ops not traced), fitted to XLA:CPU's memory analysis of the SFT and DPO steps at
# V = 16,384-32,768, tied or not (SFT 1.01-1.10 of the compiled peak, DPO 1.14-1.19; a score
# head's step holds none; tests/test_memory.py, benchmarks/RESULTS.md).
LM_HEAD_GATHERS = 2
# Extra KV caches alive through the per-layer token loop (SamplingConfig.unstack_layers) when a
# device holds one KV head (KVH' = 1): XLA drops the degenerate head axis of the attention's
# cache operand, fuses each layer's cache update twice (for the carried cache and for that
# reshaped operand) and copies the cache for each (XLA:CPU, jax 0.10; with KVH' >= 2 the update
# is in place; tests/test_memory.py, tests/test_sampling.py).
DECODE_CACHE_COPIES = 1.5


def format_bytes(size: int) -> str:
    """"1.50 GiB" from 1 GiB up, else "12.3 MiB"."""
    return f"{size / GiB:.2f} GiB" if size >= GiB else f"{size / 2 ** 20:.1f} MiB"


def mesh_sizes(mesh: MeshLike) -> dict[str, int]:
    """{"data": d, "fsdp": f, "tensor": t} of a Mesh, a dict of some of those names, a
    (data, fsdp, tensor) tuple, or None (one device)."""
    if mesh is None:
        return {axis: 1 for axis in MESH_AXES}
    if isinstance(mesh, jax.sharding.Mesh):
        sizes = dict(mesh.shape)
    elif isinstance(mesh, Mapping):
        sizes = dict(mesh)
    else:
        sizes = dict(zip(MESH_AXES, mesh))
        if len(mesh) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(mesh)}: expected {len(MESH_AXES)} sizes "
                             f"{MESH_AXES}")
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)}: expected names from {MESH_AXES}")
    sizes = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
    if any(s < 1 for s in sizes.values()):
        raise ValueError(f"mesh sizes {sizes}: expected every size >= 1 (no -1 here)")
    return sizes


def _split(dim: int, shards: int) -> int:
    """Per-device length of a dimension of `dim` split `shards` ways (padded when uneven)."""
    return -(-dim // shards)


def _axis_shards(mesh_axes: Any, sizes: Mapping[str, int]) -> int:
    if mesh_axes is None:
        return 1
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return int(np.prod([sizes[n] for n in names]))


def _sharded_bytes(shape: Sequence[int], dtype: Any, logical: Optional[Sequence[Any]],
                   sizes: Mapping[str, int], rules) -> int:
    """Bytes per device of one array of `shape` whose dims carry the logical names `logical`."""
    spec = nn.logical_to_mesh_axes(tuple(logical), rules) if logical else None
    per_device = list(shape)
    if spec is not None:
        for i, mesh_axes in enumerate(spec):
            per_device[i] = _split(shape[i], _axis_shards(mesh_axes, sizes))
    return int(np.prod(per_device, dtype=np.int64)) * jnp.dtype(dtype).itemsize


@functools.lru_cache(maxsize=32)
def abstract_model_params(config: ModelConfig, head: str = "lm") -> tuple[Any, Any]:
    """(ShapeDtypeStruct tree, logical PartitionSpec tree) of Transformer(config, head)'s
    params, from `jax.eval_shape` of its init: nothing is allocated, whatever the size."""
    from rlr.models.decoder import Transformer

    model = Transformer(config, head=head)
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(
        lambda: model.init(jax.random.key(0), tokens, tokens, jnp.ones((1, 1), bool))["params"])
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def _tree_bytes(shapes: Any, specs: Any, sizes, rules) -> int:
    """Bytes per device of a tree of arrays whose logical specs are the tree `specs`."""
    leaves, treedef = jax.tree.flatten(shapes)
    spec_leaves = treedef.flatten_up_to(specs)  # one spec (or None) per array, in order
    return sum(_sharded_bytes(x.shape, x.dtype, s, sizes, rules) for x, s in zip(leaves, spec_leaves))


def device_memory_limit(device: Optional[jax.Device] = None) -> Optional[int]:
    """Bytes jax may allocate on `device` (default: this process's first device; another
    process's devices have no stats to read): its allocator's memory_stats()["bytes_limit"] on
    GPU and TPU; None where the backend does not say (CPU)."""
    stats = (device or jax.local_devices()[0]).memory_stats()
    return stats.get("bytes_limit") if stats else None


def param_bytes(config: ModelConfig, mesh: MeshLike = None, head: str = "lm",
                rules=DEFAULT_RULES) -> int:
    """Bytes per device of the params: sum over leaves of prod_i ceil(dim_i / shards_i) *
    itemsize(param_dtype), shards_i the product of the mesh axes that dim i's logical name maps
    to under `rules` (about config.num_params() * itemsize / (fsdp * tensor) for big models)."""
    shapes, specs = abstract_model_params(config, head)
    return _tree_bytes(shapes, specs, mesh_sizes(mesh), rules)


def optimizer_state_bytes(config: ModelConfig, mesh: MeshLike = None, optimizer: Any = "adamw",
                          head: str = "lm", rules=DEFAULT_RULES) -> int:
    """Bytes per device of the optimizer state, sharded like the params (as
    rlr.train.state.create_train_state places it).

    optimizer: "adamw" (two params-shaped moments in the param dtype: 2 * param_bytes; the
    scalar step counts are left out), "sgd" (none), or an optax GradientTransformation: then its
    exact state from `jax.eval_shape(optimizer.init, params)`, every params-shaped subtree
    sharded like the params and every other leaf (counts) whole on each device.
    """
    sizes = mesh_sizes(mesh)
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_MOMENTS:
            raise ValueError(f"optimizer={optimizer!r}: expected one of {sorted(OPTIMIZER_MOMENTS)} "
                             "or an optax.GradientTransformation")
        return OPTIMIZER_MOMENTS[optimizer] * param_bytes(config, sizes, head, rules)
    shapes, specs = abstract_model_params(config, head)
    param_def = jax.tree.structure(shapes)
    param_shapes = [x.shape for x in jax.tree.leaves(shapes)]

    def params_like(node) -> bool:
        return (jax.tree.structure(node) == param_def
                and [x.shape for x in jax.tree.leaves(node)] == param_shapes)

    state = jax.eval_shape(optimizer.init, shapes)
    total = 0
    for node in jax.tree.leaves(state, is_leaf=params_like):
        if params_like(node):
            total += _tree_bytes(node, specs, sizes, rules)
        else:
            total += int(np.prod(node.shape, dtype=np.int64)) * jnp.dtype(node.dtype).itemsize
    return total


def kv_cache_bytes(config: ModelConfig, rows: int, slots: int, mesh: MeshLike = None,
                   dtype: Any = None) -> int:
    """Bytes per device of the sampler's key/value cache (rlr.sampling.generate): k and v of
    shape [L, rows, KVH, slots, Dh] in `dtype` (default the compute dtype),

        2 * L * ceil(rows / (data * fsdp)) * slots * KVH' * Dh * itemsize,

    KVH' = KVH / tensor when tensor divides KVH (the sampler splits kv heads over tensor only
    then), else KVH. slots = prompt length + max_new_tokens; rows = prompts * samples.
    """
    sizes = mesh_sizes(mesh)
    row_shards = _axis_shards(BATCH_AXES, sizes)
    heads = _cache_kv_heads(config, sizes["tensor"])
    itemsize = jnp.dtype(dtype or config.dtype).itemsize
    return 2 * config.num_layers * _split(rows, row_shards) * slots * heads * config.head_dim * itemsize


def _cache_kv_heads(config: ModelConfig, tensor: int) -> int:
    """KV heads of the sampler's cache on one device: KVH / tensor when tensor divides KVH, else KVH."""
    heads = config.num_kv_heads
    return heads // tensor if heads % tensor == 0 else heads


def decode_weight_bytes(config: ModelConfig, mesh: MeshLike = None, rules=DEFAULT_RULES) -> int:
    """Bytes per device of the sampler's per-layer weight copy (rlr.models.unstack_layers, made
    inside each generate call), in the compute dtype: every layer's weights (slices of the
    stacked arrays are new buffers), and the other weights (embedding, final norm, LM head)
    when they are copied too: cast (param dtype != compute dtype) or gathered (fsdp > 1). On a
    mesh the copy is gathered whole over fsdp (rlr.sampling.generate), and with fsdp > 1 the
    sharded layer slices it is gathered from count too (XLA keeps them: 81 MB a device at
    fsdp=4 for a 4-layer D=512 model whose gathered copy is 50 MB and its slices 12.5 MB,
    tests/test_memory.py).
    """
    sizes = mesh_sizes(mesh)
    shapes, specs = abstract_model_params(config.replace(param_dtype=config.dtype), "lm")
    made = (shapes, specs)  # new buffers on the params' own sharding: layer slices, cast weights
    if jnp.dtype(config.param_dtype) == jnp.dtype(config.dtype):
        made = (shapes["layers"], specs["layers"])
    if sizes["fsdp"] == 1:
        return _tree_bytes(*made, sizes, rules)
    return _tree_bytes(shapes, specs, dict(sizes, fsdp=1), rules) + _tree_bytes(*made, sizes, rules)


def sampler_activation_bytes(config: ModelConfig, mesh: MeshLike, prompts: int, prompt_len: int,
                             rows: int, prefill_chunk: int = 0, new_tokens: int = 0) -> int:
    """Peak bytes per device of what a generate call computes besides its params, weight copy and
    KV cache: the larger of its prefill and its token loop,

      prefill = max(c_a S, c_s S + c_m M)   S = 4 b N' C P  (float32 attention scores)
                                            M = a b C F'    (one MLP activation)
      decode  = LOGIT_BUFFERS * 4 r V'      (float32 logits of one token and the sampling
                                            filters' buffers)
                [+ DECODE_CACHE_COPIES * kv_cache_bytes(rows, P + new_tokens) when a device
                 holds one KV head]

    b = ceil(prompts / (data fsdp)) prompts of P = prompt_len slots (the bucket) prefilled C
    tokens at a time (C = prefill_chunk, SamplingConfig.prefill_chunk; C = P when 0 or >= P),
    r = ceil(rows / (data fsdp)) rows (prompts x samples) of new_tokens each, N', F', V' the
    heads, MLP width and vocabulary over tensor, a the compute itemsize; c_a =
    PREFILL_ATTENTION_SCORES, c_s, c_m = PREFILL_MLP_SCORES, PREFILL_MLP_BUFFERS; the KV heads
    a device as in kv_cache_bytes. In one pass the prefill term grows as P^2: a batch
    of long prompts needs more memory to prefill than its whole KV cache, which chunks of C
    tokens bound to C P. With fsdp > 1, add V' D a: next to the table gathered over fsdp
    (decode_weight_bytes) XLA keeps one more copy of it for the token lookup (tensor alone
    splits the table by rows, and each device looks up its own).
    """
    sizes = mesh_sizes(mesh)
    shards = _axis_shards(BATCH_AXES, sizes)
    w = _layer_widths(config, sizes["tensor"])
    a = jnp.dtype(config.dtype).itemsize
    b = _split(prompts, shards)
    chunk = min(prefill_chunk or prompt_len, prompt_len)
    scores = 4 * b * w["N"] * chunk * prompt_len
    mlp = a * b * chunk * w["F"]
    prefill = max(PREFILL_ATTENTION_SCORES * scores,
                  PREFILL_MLP_SCORES * scores + PREFILL_MLP_BUFFERS * mlp)
    decode = LOGIT_BUFFERS * 4 * _split(rows, shards) * _split(config.vocab_size, sizes["tensor"])
    if _cache_kv_heads(config, sizes["tensor"]) == 1:
        decode += DECODE_CACHE_COPIES * kv_cache_bytes(config, rows, prompt_len + new_tokens, sizes)
    lookup = 0
    if sizes["fsdp"] > 1:  # a copy of the embedding gathered over fsdp, for the token lookup
        lookup = _split(config.vocab_size, sizes["tensor"]) * config.hidden_size * a
    return int(max(prefill, decode) + lookup)


def _layer_widths(config: ModelConfig, tensor: int) -> dict[str, int]:
    """Per-token widths of one layer's activations on one device: D (residual stream, whole on
    every device), Nd = N Dh and Kd = KVH Dh (query and key/value heads), F (MLP), N, KVH."""
    c = config
    heads, kv_heads = _split(c.num_heads, tensor), _split(c.num_kv_heads, tensor)
    return dict(D=c.hidden_size, Nd=heads * c.head_dim, Kd=kv_heads * c.head_dim,
                F=_split(c.intermediate_size, tensor), N=heads, KVH=kv_heads)


def saved_bytes_per_token(config: ModelConfig, seq_len: int, remat: str, tensor: int = 1) -> int:
    """Bytes one layer saves for the backward pass, per token, on one device (a = itemsize of
    the compute dtype, S = seq_len keys a query sees, widths from `_layer_widths`):

      none: a (4D + 2Nd + 2Kd + 6F + N S) + 4 (2D + N S + KVH S + 2N + 1) + KVH S
            (normed inputs, q/k/v, attention output, the six SwiGLU tensors, the float32 scores
            and their softmax in the compute dtype, the float32 residual stream of the two
            RMSNorms, and the broadcast boolean mask)
            with config.attention == "cudnn" (flash attention keeps no score matrix, only the
            float32 log-sum-exp of each query and head, Dao 2023):
            a (4D + 2Nd + 2Kd + 6F) + 4 (2D + N)
      dots: a (2D + Nd + 2Kd + 2F)   (the outputs of the weight matmuls only:
            jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
      full: a D                      (the layer's input; everything else is recomputed)
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: expected one of {REMAT_POLICIES}")
    a = jnp.dtype(config.dtype).itemsize
    w = _layer_widths(config, tensor)
    s = seq_len
    if remat == "full":
        return a * w["D"]
    if remat == "dots":
        return a * (2 * w["D"] + w["Nd"] + 2 * w["Kd"] + 2 * w["F"])
    layer = a * (4 * w["D"] + 2 * w["Nd"] + 2 * w["Kd"] + 6 * w["F"])
    if config.attention == "cudnn":
        return layer + 4 * (2 * w["D"] + w["N"])
    return (layer + a * w["N"] * s
            + 4 * (2 * w["D"] + w["N"] * s + w["KVH"] * s + 2 * w["N"] + 1) + w["KVH"] * s)


def forward_bytes_per_token(config: ModelConfig, seq_len: int, tensor: int = 1) -> int:
    """Peak bytes per token, on one device, of one layer's forward without gradients (a =
    itemsize of the compute dtype, S = seq_len keys, widths from `_layer_widths`): the larger of

      attention: (8 + a) N S + (8 + 2a) D + KVH S   (float32 scores and their exponentials, the
                 probabilities, the residual stream and normed input, the boolean mask)
                 with config.attention == "cudnn" (no score matrix): (8 + 2a) D + a (Nd + 2Kd)
      MLP:       3a F + (8 + 3a) D                   (gate, up and their product; the stream)

    fitted to XLA:CPU's analysis of the jitted score_rollout (float32) at D 128-512, N 4-16,
    F 384-2048, S 128-512: within 4% of every shape (tests/test_memory.py)."""
    a = jnp.dtype(config.dtype).itemsize
    w = _layer_widths(config, tensor)
    if config.attention == "cudnn":
        attention = (8 + 2 * a) * w["D"] + a * (w["Nd"] + 2 * w["Kd"])
    else:
        attention = (8 + a) * w["N"] * seq_len + (8 + 2 * a) * w["D"] + w["KVH"] * seq_len
    return max(attention, 3 * a * w["F"] + (8 + 3 * a) * w["D"])


def activation_bytes(config: ModelConfig, mesh: MeshLike, batch: int, seq_len: int,
                     remat: Optional[str] = None, chunk_size: int = 128, head: str = "lm",
                     rules=DEFAULT_RULES) -> int:
    """Peak bytes per device of the activations of one forward + backward pass over a batch of
    `batch` rows of `seq_len` tokens (n = ceil(batch / (data * fsdp)) * seq_len tokens here):

        L * n * saved(remat)                residuals the scan over layers keeps
      + n * ((a + 8) * D + S)               final norm, chunked hidden states, causal mask
                                            (no mask with config.attention == "cudnn")
      + max(W_layer, W_logits)              the larger of the two backward working sets:
          W_layer  = k(remat) * n * saved("none")        one layer's recomputed activations and
                                                         cotangents, k = BACKWARD_WORKING_SET
          W_logits = LOGIT_BUFFERS * 4 * rows * C * V'   one chunk of float32 logits (LM head;
                                                         V' = V / tensor, C = min(chunk, T))
      + one layer's params, gathered whole over fsdp (when fsdp > 1)
      + LM_HEAD_GATHERS * V * D * a         the LM head gathered whole (lm head, fsdp > 1)

    remat defaults to config.remat; saved() is `saved_bytes_per_token`; a the compute itemsize.
    """
    c = config
    remat = c.remat if remat is None else remat
    sizes = mesh_sizes(mesh)
    rows = _split(batch, _axis_shards(BATCH_AXES, sizes))
    tokens = rows * seq_len
    a = jnp.dtype(c.dtype).itemsize
    saved = c.num_layers * tokens * saved_bytes_per_token(c, seq_len, remat, sizes["tensor"])
    saved += tokens * ((a + 8) * c.hidden_size + (0 if c.attention == "cudnn" else seq_len))
    working = (BACKWARD_WORKING_SET[remat] * tokens
               * saved_bytes_per_token(c, seq_len, "none", sizes["tensor"]))
    if head == "lm":
        chunk = min(chunk_size, seq_len)
        logits = LOGIT_BUFFERS * 4 * rows * chunk * _split(c.vocab_size, sizes["tensor"])
        working = max(working, logits)
    gathered = 0
    if sizes["fsdp"] > 1:
        shapes, specs = abstract_model_params(c, head)
        stacked = _tree_bytes(shapes["layers"], specs["layers"], dict(sizes, fsdp=1), rules)
        gathered = stacked // c.num_layers
        if head == "lm":
            gathered += LM_HEAD_GATHERS * c.vocab_size * c.hidden_size * a
    return int(saved + working + gathered)


def scoring_activation_bytes(config: ModelConfig, mesh: MeshLike, rows: int, seq_len: int,
                             chunk_size: int = 128, head: str = "lm", rules=DEFAULT_RULES) -> int:
    """Peak bytes per device of a forward without gradients over `rows` rows of `seq_len` tokens
    (PPO's scoring of a rollout slice runs one model at a time: log-probs of the policy and the
    reference, head "lm"; the critic's values, ORM / PRM scores, head "score"):

      max(n * forward_bytes_per_token,                    one layer's intermediates
          SCORING_LOGIT_BUFFERS * 4 * r * C * V')         one chunk of float32 logits (lm head)
      + V D a on a mesh that splits the embedding (fsdp or tensor > 1: gathered for the lookup)

    r = ceil(rows / (data fsdp)) rows here, n = r T tokens, C = min(chunk_size, T), V' = V /
    tensor; fitted to XLA:CPU's analysis of the jitted score_rollout (tests/test_memory.py)."""
    sizes = mesh_sizes(mesh)
    r = _split(rows, _axis_shards(BATCH_AXES, sizes))
    layer = r * seq_len * forward_bytes_per_token(config, seq_len, sizes["tensor"])
    logits = 0
    if head == "lm":
        logits = 4 * r * min(chunk_size, seq_len) * _split(config.vocab_size, sizes["tensor"])
    gathered = 0
    if sizes["fsdp"] * sizes["tensor"] > 1:
        gathered = config.vocab_size * config.hidden_size * jnp.dtype(config.dtype).itemsize
    return int(max(layer, SCORING_LOGIT_BUFFERS * logits) + gathered)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by part. `training` is the peak of an update step, `sampling` that of
    generation (params of every model, optimizer state kept alive, the KV cache, the sampler's
    per-layer weight copy and its prefill / logits working set), `scoring` that of the
    forwards without gradients over a rollout (params, optimizer state, their working set)."""

    params: int
    optimizer_state: int
    gradients: int
    activations: int
    kv_cache: int
    decode_weights: int
    sampler_activations: int
    scoring_activations: int
    batch_inputs: int

    @property
    def training(self) -> int:
        return self.params + self.optimizer_state + self.gradients + self.activations + self.batch_inputs

    @property
    def sampling(self) -> int:
        return (self.params + self.optimizer_state + self.kv_cache + self.decode_weights
                + self.sampler_activations)

    @property
    def scoring(self) -> int:
        return self.params + self.optimizer_state + self.scoring_activations

    @property
    def total(self) -> int:
        """max(training, sampling, scoring): what the device must hold at the worst moment of a
        loop."""
        return max(self.training, self.sampling, self.scoring)

    def brief(self) -> str:
        """One line: the training peak and its parts, then the sampling peak and its
        own parts (when a rollout was estimated)."""
        line = (f"training {format_bytes(self.training)} (params {format_bytes(self.params)}, "
                f"optimizer {format_bytes(self.optimizer_state)}, gradients "
                f"{format_bytes(self.gradients)}, activations {format_bytes(self.activations)})")
        if self.kv_cache:
            line += (f", sampling {format_bytes(self.sampling)} (KV cache "
                     f"{format_bytes(self.kv_cache)}, layer weights "
                     f"{format_bytes(self.decode_weights)}, prefill / logits "
                     f"{format_bytes(self.sampler_activations)})")
        if self.scoring_activations:
            line += (f", scoring {format_bytes(self.scoring)} (forwards "
                     f"{format_bytes(self.scoring_activations)})")
        return line

    def summary(self) -> str:
        """One line a part, in GiB."""
        parts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        parts.update(training=self.training, sampling=self.sampling, scoring=self.scoring,
                     total=self.total)
        return "\n".join(f"{name:<16} {value / GiB:9.3f} GiB" for name, value in parts.items())


def estimate_memory(model_config: ModelConfig, mesh: MeshLike = None, batch: int = 1,
                    seq_len: int = 1024, *, optimizer: Any = "adamw", remat: Optional[str] = None,
                    critic: Optional[ModelConfig] = None, references: int = 0,
                    reference_dtype: Any = None, reward_models: Sequence[ModelConfig] = (),
                    scorers: Sequence[ModelConfig] = (),
                    rollout: Optional[tuple[int, int, int, int]] = None,
                    scoring: Optional[tuple[int, int]] = None, prefill_chunk: int = 0,
                    chunk_size: int = 128, donate: bool = True, head: str = "lm",
                    grad_accum_steps: int = 1, critic_grad_accum_steps: Optional[int] = None,
                    rules=DEFAULT_RULES) -> MemoryEstimate:
    """Bytes per device of a training step of `model_config` on `mesh`, the trained model an
    LM-head policy (head="lm"), or a score-head reward model trained alone (head="score"):

      params          = P(head) [+ P_critic(score)] + references x P_ref
                        + sum of P(score) over `reward_models` and `scorers`
      optimizer_state = O(head) [+ O_critic(score)]      (optimizer_state_bytes)
      gradients       = max(G(head), G_critic(score)), G = P, plus P in float32 (the sum that
                        rlr.train.accumulate keeps) with grad_accum_steps A > 1, and
      activations     = max(activation_bytes(head), the critic's activation_bytes(score)) of
                        batch / A rows: the policy's and the critic's passes are not alive at
                        once (rlr.train.ppo_step.ppo_update runs the critic's steps after the
                        policy's), nor are two micro-batches
      batch_inputs    = 4 int32/bool arrays [rows, T] (tokens, positions, masks)

    and, with rollout=(prompts, prompt_len, new_tokens, samples) (`prompts` prompts in a bucket
    of `prompt_len` slots, `samples` responses of `new_tokens` each), of sampling (else 0):
      kv_cache            = kv_cache_bytes(prompts x samples, prompt_len + new_tokens)
      decode_weights      = decode_weight_bytes (the sampler's per-layer weight copy,
                            SamplingConfig.unstack_layers)
      sampler_activations = sampler_activation_bytes (prefill scores and MLP, in chunks of
                            `prefill_chunk` prompt tokens when > 0, or logits)
    and, with scoring=(rows, seq_len) (PPO: a slice of the rollout scored in one pass),
      scoring_activations = max of scoring_activation_bytes over the models it runs in turn:
                            the policy (lm), the critic and `reward_models` (score)

    `critic`: the shape of PPO's critic (None: no critic); `reward_models`: frozen ORM / PRM
    scoring each rollout; `scorers`: frozen judges (greedy evaluations, DPO's ranking;
    rlr.train.common); all of their own shapes (rlr.train.params_io.source_shape).
    P = param_bytes; `references` frozen LM copies (PPO and DPO: the reference; DPO refreshing
    it each round also keeps the initial policy for its held-out metrics: 2) of P_ref = P(lm)
    with params stored in `reference_dtype` (default the param dtype; bfloat16 halves it and,
    with bfloat16 compute, changes no number). Without `donate`,
    the step writes new params and optimizer state next to the old ones: params and
    optimizer_state of the trained models count twice.
    `batch` is the number of model rows a step runs (DPO: 2 x pairs; PPO: one minibatch), in
    `grad_accum_steps` micro-batches (the critic's: `critic_grad_accum_steps`, default the same).
    remat: none | full | dots of the trained models (default: each one's config.remat).
    """
    sizes = mesh_sizes(mesh)

    def gradient_bytes(config: ModelConfig, model_head: str, accum: int) -> int:
        grads = param_bytes(config, sizes, model_head, rules)
        if accum > 1:
            grads += param_bytes(config.replace(param_dtype=jnp.float32), sizes, model_head, rules)
        return grads

    policy = param_bytes(model_config, sizes, head, rules)
    opt = optimizer_state_bytes(model_config, sizes, optimizer, head, rules)
    acts = activation_bytes(model_config, sizes, batch // grad_accum_steps, seq_len, remat,
                            chunk_size, head, rules)
    grads = gradient_bytes(model_config, head, grad_accum_steps)
    critic_params = 0
    if critic is not None:
        critic_accum = critic_grad_accum_steps or grad_accum_steps
        critic_params = param_bytes(critic, sizes, "score", rules)
        opt += optimizer_state_bytes(critic, sizes, optimizer, "score", rules)
        acts = max(acts, activation_bytes(critic, sizes, batch // critic_accum, seq_len, remat,
                                          chunk_size, "score", rules))
        grads = max(grads, gradient_bytes(critic, "score", critic_accum))
    trained = policy + critic_params
    ref_config = model_config.replace(param_dtype=reference_dtype or model_config.param_dtype)
    reference = references * param_bytes(ref_config, sizes, "lm", rules)
    params = (trained + reference
              + sum(param_bytes(c, sizes, "score", rules) for c in (*reward_models, *scorers)))
    if not donate:
        params += trained
        opt *= 2
    rows = _split(batch, _axis_shards(BATCH_AXES, sizes))
    cache = decode_weights = sampler = 0
    if rollout is not None:
        prompts, prompt_len, new_tokens, samples = rollout
        cache = kv_cache_bytes(model_config, prompts * samples, prompt_len + new_tokens, sizes)
        decode_weights = decode_weight_bytes(model_config, sizes, rules)
        sampler = sampler_activation_bytes(model_config, sizes, prompts, prompt_len,
                                           prompts * samples, prefill_chunk, new_tokens)
    scored = 0
    if scoring is not None:
        scored_models = [(model_config, "lm")] + [(c, "score") for c in (critic, *reward_models)
                                                  if c is not None]
        scored = max(scoring_activation_bytes(c, sizes, *scoring, chunk_size, h, rules)
                     for c, h in scored_models)
    return MemoryEstimate(
        params=params, optimizer_state=opt, gradients=grads, activations=acts,
        kv_cache=cache, decode_weights=decode_weights, sampler_activations=sampler,
        scoring_activations=scored, batch_inputs=rows * seq_len * (4 + 4 + 1 + 1))

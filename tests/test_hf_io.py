"""Hugging Face checkpoint import / export (rlr.models.hf_io) against transformers on torch CPU.

Tiny random Qwen2 / Llama models are saved with `save_pretrained`, imported, and their logits
compared with the torch float32 forward, with and without left padding; exports are re-imported
exactly and loaded back by transformers. Shapes are fixed (B=4, T=12) so each config compiles once.
"""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import hf_fixtures as F
from rlr.models import Transformer, lm_head_weight
from rlr.models import hf_io
from rlr.models.config import tiny
from rlr.models.hf_io import (hf_state_dict_from_params, load_hf_checkpoint,
                              params_from_hf_state_dict, save_hf_checkpoint)

B, T, V = 4, 12, F.TINY["vocab_size"]
TOL = 1e-4  # max abs logit difference to torch float32
LLAMA = dict(tie_word_embeddings=True, rope_scaling=F.LLAMA3_ROPE, rope_theta=10000.0)


@functools.lru_cache(maxsize=None)
def forward(config, head="lm"):
    """jitted (params, tokens, positions, mask) -> logits [B,T,V] (lm) or scores [B,T] (score)."""
    model = Transformer(config, head=head)

    @jax.jit
    def run(params, tokens, positions, mask):
        out, _ = model.apply({"params": params}, tokens, positions, mask)
        return out @ lm_head_weight(params, config) if head == "lm" else out

    return run


def batches():
    """{"padded": (tokens, mask, positions), "full": the same tokens unpadded}."""
    tokens, mask, positions = F.padded_batch(0, B, T, V)
    full = (tokens, np.ones_like(mask), np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)))
    return {"padded": (tokens, mask, positions), "full": full}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Saved tiny HF models and their torch outputs on `batches()`."""
    root = tmp_path_factory.mktemp("hf")
    models = {"qwen2": F.make_hf_model("qwen2", seed=1),
              "llama": F.make_hf_model("llama", seed=2, **LLAMA),
              "score": F.make_hf_model("qwen2-score", seed=3)}
    out = {"root": root}
    for name, model in models.items():
        F.save_hf_model(model, root / name)
        tokens, mask, positions = batches()["padded"]
        out[name] = {"padded": F.hf_outputs(model, tokens, mask, positions),
                     "full": F.hf_outputs(model, tokens)}  # no mask, default positions
    F.save_hf_model(models["qwen2"], root / "qwen2-sharded", max_shard_size="40KB")
    return out


def max_diff(config, params, reference, head="lm"):
    """{batch name: max |rlr - torch| over the valid (unpadded) positions}."""
    run = forward(config, head)
    return {key: float(np.abs(np.asarray(run(params, t, p, m)) - reference[key])[m].max())
            for key, (t, m, p) in batches().items()}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_qwen2_logits_match_torch(ckpt):
    config, params = load_hf_checkpoint(str(ckpt["root"] / "qwen2"))
    assert config.architecture == "qwen2" and config.qkv_bias and not config.tie_embeddings
    assert params["lm_head"].shape == (64, V)
    diffs = max_diff(config, params, ckpt["qwen2"])
    assert max(diffs.values()) <= TOL, diffs


def test_llama_tied_llama3_rope_logits_match_torch(ckpt):
    path = str(ckpt["root"] / "llama")
    config, params = load_hf_checkpoint(path)
    assert config.tie_embeddings and config.rope_scaling is not None and not config.qkv_bias
    assert "lm_head" not in params
    diffs = max_diff(config, params, ckpt["llama"])
    assert max(diffs.values()) <= TOL, diffs
    # The comparison sees the rope scaling: without it the logits are far off.
    unscaled, _ = load_hf_checkpoint(path, config_overrides={"rope_scaling": None})
    assert max(max_diff(unscaled, params, ckpt["llama"]).values()) > 100 * TOL


def test_sharded_checkpoint_loads_like_the_single_file(ckpt):
    sharded = ckpt["root"] / "qwen2-sharded"
    index = json.loads((sharded / hf_io.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (sharded / hf_io.SINGLE_FILE).exists()
    _, single = load_hf_checkpoint(str(ckpt["root"] / "qwen2"))
    _, params = load_hf_checkpoint(str(sharded))
    assert_trees_equal(single, params)


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_into_param_dtype(ckpt, tmp_path, torch_dtype):
    F.make_hf_model("qwen2", seed=1).to(torch_dtype).save_pretrained(tmp_path)
    half = jnp.dtype(jnp.bfloat16 if torch_dtype == torch.bfloat16 else jnp.float16)
    _, f32 = load_hf_checkpoint(str(ckpt["root"] / "qwen2"))
    _, loaded = load_hf_checkpoint(str(tmp_path))  # param_dtype float32 by default
    expected = jax.tree.map(lambda x: np.asarray(x).astype(half).astype(np.float32), f32)
    assert_trees_equal(jax.tree.map(np.asarray, loaded), expected)
    config, kept = load_hf_checkpoint(str(tmp_path), config_overrides={"param_dtype": half})
    assert config.param_dtype == half
    assert_trees_equal(jax.tree.map(np.asarray, kept),
                       jax.tree.map(lambda x: np.asarray(x).astype(half), f32))


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_export_reimports_exactly_and_torch_loads_it(ckpt, tmp_path, name):
    config, params = load_hf_checkpoint(str(ckpt["root"] / name))
    files = save_hf_checkpoint(params, config, str(tmp_path), max_shard_bytes=30_000)
    assert len(files) > 2 and (tmp_path / hf_io.INDEX_FILE).exists()
    config2, params2 = load_hf_checkpoint(str(tmp_path))
    assert config2 == config
    assert_trees_equal(params, params2)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens, mask, positions = batches()["padded"]
    np.testing.assert_allclose(F.hf_outputs(model, tokens, mask, positions)[mask],
                               ckpt[name]["padded"][mask], rtol=0, atol=1e-6)


def test_export_of_bf16_params_is_one_exact_file(ckpt, tmp_path):
    config, params = load_hf_checkpoint(str(ckpt["root"] / "qwen2"),
                                        config_overrides={"param_dtype": jnp.bfloat16})
    (tmp_path / hf_io.INDEX_FILE).write_text("{}")  # an earlier export's leftovers are replaced
    assert save_hf_checkpoint(params, config, str(tmp_path)) == [hf_io.SINGLE_FILE]
    assert not (tmp_path / hf_io.INDEX_FILE).exists()
    saved = load_file(str(tmp_path / hf_io.SINGLE_FILE))
    assert {t.dtype for t in saved.values()} == {np.dtype(jnp.bfloat16)}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _, again = load_hf_checkpoint(str(tmp_path), config_overrides={"param_dtype": jnp.bfloat16})
    assert_trees_equal(params, again)


def test_reward_model_scores_match_torch_classifier(ckpt, tmp_path):
    config, params = load_hf_checkpoint(str(ckpt["root"] / "score"), head="score")
    diffs = max_diff(config, params, ckpt["score"], head="score")
    assert max(diffs.values()) <= TOL, diffs
    assert float(params["score_head"]["bias"]) == 0.0  # HF classifiers have no bias
    save_hf_checkpoint(params, config, str(tmp_path))
    _, again = load_hf_checkpoint(str(tmp_path), head="score")
    assert_trees_equal(params, again)
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager", pad_token_id=0)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens, mask, positions = batches()["full"]
    tokens = np.where(tokens == 0, 1, tokens)  # HF pools at the last token that is not pad (0)
    with torch.no_grad():
        pooled = model(input_ids=torch.as_tensor(tokens.astype(np.int64))).logits[:, 0].numpy()
    scores = np.asarray(forward(config, "score")(params, tokens, positions, mask))
    np.testing.assert_allclose(pooled, scores[:, -1], rtol=0, atol=TOL)


def test_critic_on_causal_lm_checkpoint(ckpt, tmp_path):
    path = str(ckpt["root"] / "qwen2")
    lm_config, lm_params = load_hf_checkpoint(path)
    config, params = load_hf_checkpoint(path, head="score", rng=jax.random.key(7))
    decoder = {k: v for k, v in lm_params.items() if k != "lm_head"}
    assert_trees_equal(decoder, {k: v for k, v in params.items() if k != "score_head"})
    kernel, bias = np.asarray(params["score_head"]["kernel"]), params["score_head"]["bias"]
    assert float(bias) == 0.0 and 0.01 < kernel.std() < 0.04
    tokens, mask, positions = batches()["padded"]
    scores = np.asarray(forward(config, "score")(params, tokens, positions, mask))
    hidden, _ = Transformer(lm_config).apply({"params": lm_params}, tokens, positions, mask)
    np.testing.assert_allclose(scores, np.asarray(hidden) @ kernel, rtol=0, atol=1e-5)
    # A non-zero bias is exported as score.bias and comes back.
    params["score_head"]["bias"] = jnp.float32(0.5)
    save_hf_checkpoint(params, config, str(tmp_path))
    _, again = load_hf_checkpoint(str(tmp_path), head="score")
    assert_trees_equal(params, again)


def test_state_dict_round_trip_and_tied_lm_head_ignored(ckpt):
    tensors = load_file(str(ckpt["root"] / "qwen2" / hf_io.SINGLE_FILE))
    config, loaded = load_hf_checkpoint(str(ckpt["root"] / "qwen2"))
    params = params_from_hf_state_dict(tensors, config)
    assert_trees_equal(jax.tree.map(np.asarray, loaded), params)
    back = hf_state_dict_from_params(params, config)
    assert back.keys() == tensors.keys()
    for name in tensors:
        np.testing.assert_array_equal(back[name], tensors[name])
    # A tied checkpoint that still holds lm_head.weight (and a rotary buffer) loads without them.
    llama_config, llama = load_hf_checkpoint(str(ckpt["root"] / "llama"))
    llama_tensors = hf_state_dict_from_params(llama, llama_config)
    llama_tensors["lm_head.weight"] = llama_tensors["model.embed_tokens.weight"]
    llama_tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    assert_trees_equal(jax.tree.map(np.asarray, llama),
                       params_from_hf_state_dict(llama_tensors, llama_config))


# ----------------------------------------------------------------------------- errors


def write_checkpoint(path, tensors, config_json):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config_json, fh)
    save_file(tensors, os.path.join(path, hf_io.SINGLE_FILE), metadata={"format": "pt"})


@pytest.fixture
def qwen2_parts(ckpt):
    """(state dict, config.json dict) of the qwen2 fixture checkpoint, to edit."""
    tensors = load_file(str(ckpt["root"] / "qwen2" / hf_io.SINGLE_FILE))
    return tensors, json.loads((ckpt["root"] / "qwen2" / "config.json").read_text())


def test_unknown_architecture_names_file_and_value(qwen2_parts, tmp_path):
    tensors, hf = qwen2_parts
    write_checkpoint(tmp_path, tensors, {**hf, "architectures": ["MistralForCausalLM"]})
    with pytest.raises(ValueError, match="MistralForCausalLM") as err:
        load_hf_checkpoint(str(tmp_path))
    assert str(tmp_path / "config.json") in str(err.value)


def test_missing_tensor_is_named(qwen2_parts, tmp_path):
    tensors, hf = qwen2_parts
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(tmp_path, tensors, hf)
    with pytest.raises(ValueError,
                       match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_hf_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match=r"state dict: missing tensor 'model\.layers\.1\.mlp"):
        params_from_hf_state_dict(tensors, hf_io.read_hf_config(str(tmp_path)))


def test_extra_tensor_is_named_with_its_file(ckpt, tmp_path):
    shutil.copytree(ckpt["root"] / "qwen2-sharded", tmp_path, dirs_exist_ok=True)
    index = json.loads((tmp_path / hf_io.INDEX_FILE).read_text())
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = "extra.safetensors"
    (tmp_path / hf_io.INDEX_FILE).write_text(json.dumps(index))
    save_file({"model.layers.0.mlp.extra_proj.weight": np.zeros((2, 2), np.float32)},
              str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"extra\.safetensors: unexpected tensor "
                                         r"'model\.layers\.0\.mlp\.extra_proj\.weight'"):
        load_hf_checkpoint(str(tmp_path))
    # A classifier checkpoint is no causal LM: it lacks the (untied) output matrix.
    with pytest.raises(ValueError, match=r"missing tensor 'lm_head\.weight'"):
        load_hf_checkpoint(str(ckpt["root"] / "score"), head="lm")


def test_wrong_shape_and_missing_files_are_named(qwen2_parts, tmp_path):
    tensors, hf = qwen2_parts
    tensors["model.norm.weight"] = np.ones(65, np.float32)
    write_checkpoint(tmp_path, tensors, hf)
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \[65\], expected \[64"):
        load_hf_checkpoint(str(tmp_path))
    with pytest.raises(KeyError, match="num_layer"):
        load_hf_checkpoint(str(tmp_path), config_overrides={"num_layer": 1})
    os.remove(tmp_path / hf_io.SINGLE_FILE)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_checkpoint(str(tmp_path))


# ----------------------------------------------------------------------------- slices


@st.composite
def leaf_bounds(draw, shape):
    bounds = []
    for size in shape:
        start = draw(st.integers(0, size - 1))
        bounds.append((start, draw(st.integers(start + 1, size))))
    return bounds


SLICE_MAPS = {m.path: m for m in hf_io.tensor_maps(tiny(), "score")}


@settings(max_examples=40, deadline=None)
@given(data=st.data(), path=st.sampled_from(sorted(SLICE_MAPS)))
def test_block_reads_equal_slices_of_the_whole_leaf(data, path):
    """Any (also head_dim-splitting) shard of a leaf read through HF slices equals that slice
    of the whole leaf; `to_hf` inverts the whole read."""
    tmap = SLICE_MAPS[path]
    layers = 2 if tmap.stacked else None
    rng = np.random.default_rng(0)
    tensors = {name: rng.normal(size=tmap.hf_shape) for name in tmap.hf_names(layers or 1)}
    def read(name, index):
        return tensors[name][index]

    shape = ((layers,) if layers else ()) + tmap.layer_shape
    whole = hf_io._read_leaf(tmap, read, [(0, s) for s in shape])
    first = whole[0] if layers else whole
    np.testing.assert_array_equal(tmap.to_hf(first), tensors[tmap.hf_name.format(i=0)])
    bounds = data.draw(leaf_bounds(shape))
    block = hf_io._read_leaf(tmap, read, bounds)
    np.testing.assert_array_equal(block, whole[tuple(slice(*b) for b in bounds)])

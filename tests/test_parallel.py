"""Tests of rlr.parallel on the 8 simulated CPU devices: meshes, sharded params and batches,
and a sharded forward (and a sharded checkpoint import) equal to the one-device one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hf_fixtures import random_rlr_params
from rlr.models import Transformer, get_config
from rlr.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from rlr.parallel import (DEFAULT_RULES, gather_rows, host_local_rows, init_model_params,
                          make_mesh, param_shardings, process_mean, process_rows, replicate,
                          rules_without, shard_batch)
from rlr.train.common import global_batches

CONFIG = get_config("tiny")
B, T = 4, 12


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def params(mesh):
    """Random tiny-model params placed as param_shardings says (norms and biases random too:
    at their init values 1 and 0 a wrongly sharded one would not show)."""
    return jax.device_put(random_rlr_params(CONFIG), param_shardings(Transformer(CONFIG), mesh))


def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), bool)
    mask[1, :3] = mask[3, :5] = False
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "positions": positions, "mask": mask}


def test_make_mesh_sizes_and_errors():
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(data=-1, fsdp=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="at most one size may be -1"):
        make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="needs 6 devices, 8 are present"):
        make_mesh(data=3, fsdp=2, tensor=1)
    with pytest.raises(ValueError, match="do not divide by 3"):
        make_mesh(data=-1, fsdp=3)


def test_params_are_created_in_their_shards(mesh):
    params = init_model_params(Transformer(CONFIG), jax.random.key(0), mesh)
    q_kernel = params["layers"]["attn"]["q_proj"]["kernel"]  # [L, D, N, Dh]
    assert q_kernel.sharding.spec == P(None, "fsdp", "tensor", None)
    L, D, N, Dh = q_kernel.shape
    assert {s.data.shape for s in q_kernel.addressable_shards} == {(L, D // 2, N // 2, Dh)}
    assert params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert params["layers"]["mlp"]["down_proj"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")
    shardings = param_shardings(Transformer(CONFIG), mesh)
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert 0.015 < float(jnp.std(q_kernel)) < 0.025  # the decoder's N(0, 0.02^2) init


def test_shard_batch_splits_rows_over_data_and_fsdp(mesh):
    host = batch()
    sharded = shard_batch(host, mesh)
    for name, x in sharded.items():
        assert x.sharding.spec == P(("data", "fsdp"), None)
        assert {s.data.shape for s in x.addressable_shards} == {(B // 4, T)}
        np.testing.assert_array_equal(np.asarray(x), host[name])


def test_rows_back_to_the_host_and_replication(mesh):
    """One process: host_local_rows and gather_rows both give every row of a batch-split array
    back in order (tests/test_launchers.py runs them over two processes), replicate puts a tree
    whole on every device, and global_batches covers the rows in calls of one size, the last
    filled with the last row."""
    host = batch()
    sharded = shard_batch(host, mesh)
    for name, x in sharded.items():
        np.testing.assert_array_equal(host_local_rows(x, mesh), host[name])
        np.testing.assert_array_equal(gather_rows(x), host[name])
    tree = replicate({"a": jnp.arange(3), "b": jnp.ones((2, 2))}, mesh)
    assert all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == mesh.size
               for x in jax.tree.leaves(tree))
    assert process_mean({"a": 1.5, "b": -2.0}) == {"a": 1.5, "b": -2.0}
    assert process_rows(8, mesh).tolist() == list(range(8))
    with pytest.raises(ValueError, match="6 rows does not split over the mesh's data x fsdp = 4"):
        process_rows(6, mesh)
    calls = [(index.tolist(), kept) for index, kept in global_batches(5, 4, mesh)]
    assert calls == [([0, 1, 2, 3], 4), ([4, 4, 4, 4], 1)]


def test_sharded_forward_equals_one_device_forward(params, mesh):
    model = Transformer(CONFIG)
    host = batch()
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["tokens"], b["positions"],
                                               b["mask"])[0])
    one_device = jax.device_put(params, jax.devices()[0])
    expected = forward(one_device, host)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = forward(params, shard_batch(host, mesh))
    assert out.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=0, atol=1e-5)


def test_imported_checkpoint_lands_in_param_shardings(params, mesh, tmp_path):
    save_hf_checkpoint(params, CONFIG, str(tmp_path), max_shard_bytes=50_000)
    config, loaded = load_hf_checkpoint(str(tmp_path), mesh=mesh)
    assert config == CONFIG
    shardings = param_shardings(Transformer(config), mesh)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for got, want, sharding in zip(jax.tree.leaves(loaded), jax.tree.leaves(params),
                                   jax.tree.leaves(shardings)):
        assert got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    spec = loaded["layers"]["attn"]["o_proj"]["kernel"].sharding.spec
    assert spec == P(None, "tensor", None, "fsdp")


def test_rules_without_an_axis_keeps_the_rest():
    rules = (("embed", "fsdp"), ("vocab", "tensor"), ("act_batch", ("data", "fsdp")),
             ("both", ("fsdp", "tensor")), ("none", None))
    assert rules_without(rules, "fsdp") == (("embed", None), ("vocab", "tensor"),
                                            ("act_batch", "data"), ("both", "tensor"),
                                            ("none", None))
    assert rules_without(rules, "pod") == rules

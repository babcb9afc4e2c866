"""rlr.train.accumulate: a gradient summed over micro-batches is the whole batch's gradient.

A least-squares objective reduced with each of rlr.losses.masked's aggregations, on rows whose
valid-token counts differ between micro-batches (so that the plain mean of the micro-batches'
gradients is wrong, and the test can tell), against the whole batch's jax.grad and a float64
numpy gradient written out by hand; then on the 8-device mesh, rows sharded over data.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rlr.losses.masked import AGGREGATIONS, aggregate, aggregation_count
from rlr.parallel import make_mesh
from rlr.train.accumulate import accumulated_grad, combine_metrics, split_micro_batches

N, T, D = 8, 5, 3
LENGTHS = np.array([5, 0, 4, 1, 5, 2, 3, 1])  # row 1 empty; micro-batches of A=2 hold 17 / 4 tokens


def make_batch():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(N, T, D)).astype(np.float32),
            "y": rng.normal(size=(N, T)).astype(np.float32),
            "mask": np.arange(T)[None, :] < LENGTHS[:, None]}


def objective(mode):
    def loss(w, batch):
        per_token = (batch["x"] @ w - batch["y"]) ** 2  # [N, T]
        value = aggregate(per_token, batch["mask"], mode)
        return value, {"loss": value, "err_max": jnp.max(jnp.abs(per_token)),
                       "num_tokens": jnp.sum(batch["mask"], dtype=jnp.float32)}
    return loss


def count(mode):
    return lambda batch: aggregation_count(batch["mask"], mode)


def grad_np(w, batch, mode):
    """d/dw of sum_{b,t} c_bt (x_bt . w - y_bt)^2 in float64, c the aggregation's weights."""
    x, y, m = (np.asarray(batch[k], np.float64) for k in ("x", "y", "mask"))
    n_b = m.sum(1, keepdims=True)
    seqs = max((n_b > 0).sum(), 1)
    c = {"token_mean": m / max(m.sum(), 1), "seq_mean": m / np.maximum(n_b, 1) / seqs,
         "seq_mean_token_sum": m / seqs}[mode]
    return np.einsum("bt,btd->d", 2 * c * (x @ w - y), x)


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_accumulated_grad_is_the_whole_batch_grad(mode, steps):
    batch, w = make_batch(), jnp.asarray([0.5, -1.0, 2.0])
    whole, whole_metrics = jax.grad(objective(mode), has_aux=True)(w, batch)
    grads, metrics = jax.jit(accumulated_grad, static_argnums=(0, 3, 4))(
        objective(mode), w, batch, steps, count(mode))
    np.testing.assert_allclose(whole, grad_np(np.asarray(w, np.float64), batch, mode), rtol=1e-5)
    np.testing.assert_allclose(grads, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], whole_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["err_max"], whole_metrics["err_max"], rtol=1e-6)
    assert float(metrics["num_tokens"]) == LENGTHS.sum()
    # The plain mean of the micro-batches' gradients is another, wrong, gradient.
    micro = split_micro_batches(batch, steps)
    naive = np.mean([jax.grad(objective(mode), has_aux=True)(w, jax.tree.map(lambda a: a[i], micro))[0]
                     for i in range(steps)], axis=0)
    assert np.abs(naive - whole).max() > 0.05 * np.abs(whole).max()


def test_split_is_strided_and_checks_divisibility():
    rows = np.arange(12)
    np.testing.assert_array_equal(split_micro_batches({"r": rows}, 3)["r"],
                                  [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
    with pytest.raises(ValueError, match=r"grad_accum_steps=5 must divide the 12 rows"):
        split_micro_batches({"r": rows}, 5)


def test_combine_metrics_by_name():
    stacked = {"loss": jnp.array([1.0, 4.0]), "ratio_max": jnp.array([3.0, 2.0]),
               "num_steps": jnp.array([5.0, 6.0])}
    out = combine_metrics(stacked, jnp.array([0.75, 0.25]))
    assert {k: float(v) for k, v in out.items()} == {"loss": 1.75, "ratio_max": 3.0, "num_steps": 11.0}
    # exp(token-mean NLL) of the batch: NLL 1 over 3 tokens, 3 over 1, none over 0 (perplexity 1)
    stacked = {"perplexity": jnp.exp(jnp.array([1.0, 3.0, 0.0])),
               "num_tokens": jnp.array([3.0, 1.0, 0.0])}
    out = combine_metrics(stacked, jnp.array([0.5, 0.5, 0.0]))
    np.testing.assert_allclose(float(out["perplexity"]), np.exp(1.5), rtol=1e-6)
    assert float(combine_metrics({"perplexity": jnp.ones(2), "num_tokens": jnp.zeros(2)},
                                 jnp.zeros(2))["perplexity"]) == 1.0


def test_sharded_rows_split_in_place_and_give_the_same_grad():
    """Rows sharded over the mesh's 8 data devices (2 a device) in A=2 micro-batches: the same
    gradient as one device, and the compiled program moves no row between devices (its only
    collectives are the all-reduces of the sums)."""
    batch, w = make_batch(), jnp.asarray([0.5, -1.0, 2.0])
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 16 rows
    mesh = make_mesh(data=8)
    rows = lambda a: NamedSharding(mesh, P("data", *[None] * (a.ndim - 1)))
    sharded = {k: jax.device_put(v, rows(v)) for k, v in batch.items()}
    fn = jax.jit(accumulated_grad, static_argnums=(0, 3, 4))
    args = (objective("token_mean"), w, sharded, 2, count("token_mean"))
    grads, _ = fn(*args)
    np.testing.assert_allclose(grads, jax.grad(objective("token_mean"), has_aux=True)(w, batch)[0],
                               rtol=1e-5, atol=1e-6)
    hlo = fn.lower(*args).compile().as_text()
    assert "all-reduce" in hlo
    for moving in ("all-to-all", "collective-permute", "all-gather"):
        assert moving not in hlo, moving

"""benchmarks/flops.py: executed matmul FLOPs of a traced program, against counts by hand."""
import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from rlr.models import ModelConfig, Transformer, get_config
from rlr.train import sft_step
from rlr.train.optim import OptimConfig, make_optimizer
from rlr.train.state import create_train_state

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from flops import matmul_flops  # noqa: E402

N, D = 8, 16  # rows, width of the small matmuls below


def count(fn, *args) -> int:
    return matmul_flops(jax.jit(fn).trace(*args).jaxpr)


def test_dot_general_is_two_flops_a_multiply_add():
    a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
    assert count(lambda a, b: jnp.einsum("bik,bkj->bij", a, b), a, b) == 2 * 3 * 4 * 6 * 5
    # two contracting axes: [4, 5, 7] . [4, 5, 2] -> [7, 2] over 4 x 5
    x, y = jnp.ones((4, 5, 7)), jnp.ones((4, 5, 2))
    assert count(lambda x, y: jnp.einsum("abi,abj->ij", x, y), x, y) == 2 * 7 * 2 * 4 * 5


def test_scan_body_counts_length_times_and_cond_its_costliest_branch():
    x, w = jnp.ones((N, D)), jnp.ones((D, D))
    matmul = 2 * N * D * D
    loop = lambda x, w: jax.lax.fori_loop(0, 7, lambda i, h: jnp.tanh(h @ w), x)  # noqa: E731
    assert count(loop, x, w) == 7 * matmul
    branches = lambda p, x, w: jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)  # noqa: E731
    assert count(branches, True, x, w) == 2 * matmul


def test_a_while_loop_with_matmuls_is_an_error():
    x, w = jnp.ones((N, D)), jnp.ones((D, D))
    loop = lambda x, w: jax.lax.while_loop(  # noqa: E731
        lambda h: h.sum() < 1e6, lambda h: h @ w, x)
    with pytest.raises(ValueError, match="while loop"):
        count(loop, x, w)


def test_gradient_counts_the_rematerialised_forward():
    """loss = sum((x W1) W2), grads of W1 and W2: forward h = x W1 and y = h W2, backward dW2 =
    h^T dy, dh = dy W2^T, dW1 = x^T dh: 5 matmuls. Under jax.checkpoint (nothing saved) the
    backward recomputes h (y is needed by nothing): 6."""
    x, w1, w2 = jnp.ones((N, D)), jnp.ones((D, D)), jnp.ones((D, D))
    loss = lambda w1, w2: jnp.sum((x @ w1) @ w2)  # noqa: E731
    remat = jax.checkpoint(loss, policy=jax.checkpoint_policies.nothing_saveable)
    matmul = 2 * N * D * D
    assert count(jax.value_and_grad(loss, argnums=(0, 1)), w1, w2) == 5 * matmul
    assert count(jax.value_and_grad(remat, argnums=(0, 1)), w1, w2) == 6 * matmul


@pytest.mark.parametrize("remat", ["none", "full"])
def test_sft_step_flops_by_hand(remat):
    """The SFT step of a 2-layer model, per token of B x T: 6 N_body (forward + backward of the
    layers' matmuls) + 12 L H Dh T (attention scores and values, full T x T: XLA's masked path)
    + 8 D V on the T - 1 predicted tokens (the chunked LM head: forward, its recomputation in
    the backward, and two backward matmuls). Full remat recomputes each layer's forward but for
    the MLP's down projection, whose output only the residual reads: 2 (N_body - L D F) + 4 L H
    Dh T more."""
    config = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, dtype=jnp.float32, remat=remat)
    batch, length = 2, 24
    c = config
    attention_proj = (c.hidden_size * c.head_dim * (c.num_heads + 2 * c.num_kv_heads)  # q, k, v
                      + c.num_heads * c.head_dim * c.hidden_size)  # o
    n_body = c.num_layers * (attention_proj + 3 * c.hidden_size * c.intermediate_size)
    scores = 4 * c.num_layers * c.num_heads * c.head_dim * length  # a token's QK^T and PV
    expected = batch * length * (6 * n_body + 3 * scores) + 8 * c.hidden_size * c.vocab_size * (
        batch * (length - 1))
    if remat == "full":
        down_proj = c.num_layers * c.hidden_size * c.intermediate_size
        expected += batch * length * (2 * (n_body - down_proj) + scores)

    model = Transformer(config)
    tokens = jnp.zeros((batch, length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    mask = jnp.ones((batch, length), bool)
    params = nn.unbox(model.init(jax.random.key(0), tokens, positions, mask)["params"])
    optimizer = make_optimizer(OptimConfig())
    state = create_train_state(params, optimizer, jax.random.key(1))
    step = functools.partial(sft_step.train_step, model=model, optimizer=optimizer)
    data = dict(tokens=tokens, positions=positions, attention_mask=mask, loss_mask=mask)
    assert count(step, state, data) == expected


def test_train_step_benchmark_counts_dpo_and_ppo_steps_by_hand():
    """`benchmarks/train_step.py --flops` on the tiny model, remat none. Per row of T = P + R
    tokens (N_body, S = 4 L H Dh T as in the SFT count): DPO's policy 6 N_body + 3 S and its
    reference 2 N_body + S a token, with the LM head only on the R positions that predict the
    response (8 D V trained, 2 D V for the reference); PPO (one minibatch of B rows) the same
    policy, and a critic of 6 N_body + 3 S plus its score head, 6 D a token."""
    import train_step

    rows, length, prompt = 16, 48, 16
    out = train_step.main(["--flops", "--models", "tiny", "--steps", "dpo,ppo", "--batch",
                           str(rows), "--seq-len", str(length), "--prompt-len", str(prompt),
                           "--dtype", "float32"])
    c = get_config("tiny")
    n_body = c.num_layers * (c.hidden_size * c.head_dim * (c.num_heads + 2 * c.num_kv_heads)
                             + c.num_heads * c.head_dim * c.hidden_size
                             + 3 * c.hidden_size * c.intermediate_size)
    scores = 4 * c.num_layers * c.num_heads * c.head_dim * length
    tokens, head = rows * length, c.hidden_size * c.vocab_size * rows * (length - prompt)
    expected = {"dpo": tokens * (8 * n_body + 4 * scores) + 10 * head,
                "ppo": tokens * (12 * n_body + 6 * scores + 6 * c.hidden_size) + 8 * head}
    counted = {r["step"]: r["executed_flops"] for r in out if r["remat"] == "none"}
    assert counted == expected

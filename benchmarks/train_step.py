"""Training-step throughput: rlr's jitted forward + backward + AdamW vs Hugging Face / PyTorch.

For each model shape (random weights) the step is: token log-probs of a [B, T] batch through the
chunked LM head, masked mean cross-entropy, its gradient, a global-norm clip and an AdamW update
(the SFT step; the policy half of a PPO or DPO step has the same cost). rlr keeps float32 params
and computes in bfloat16; the peer is transformers' Qwen2ForCausalLM on the same config with
float32 params under torch.autocast(bfloat16), torch.optim.AdamW (fused), the same batch.

MFU = model FLOPs / (step time * peak bf16 FLOP/s), with model FLOPs per token
6 * N_matmul + 12 * L * H * Dh * T (Chowdhery et al. 2022, PaLM, App. B; N_matmul counts every
weight matrix including the output projection, not the embedding lookup). The peak is the
datasheet dense bf16 rate of the device (H100 SXM: 989 TFLOP/s), overridable with --peak-tflops.

    python benchmarks/train_step.py                    # Qwen2.5-0.5B and 1.5B, B=8, T=1024 (GPU)
    python benchmarks/train_step.py --quick            # tiny shapes on a CPU, a smoke run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlr.models import Transformer, get_config, lm_head_weight, to_hf_config, token_logprobs  # noqa: E402
from rlr.parallel import init_model_params, make_mesh, shard_batch  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def model_flops_per_token(config, seq_len: int) -> float:
    """6 N_matmul + 12 L H Dh T: training FLOPs of one token (PaLM appendix B)."""
    c = config
    attn = c.hidden_size * c.head_dim * (c.num_heads + 2 * c.num_kv_heads) + c.num_heads * c.head_dim * c.hidden_size
    n_matmul = c.num_layers * (attn + 3 * c.hidden_size * c.intermediate_size) + c.hidden_size * c.vocab_size
    return 6 * n_matmul + 12 * c.num_layers * c.num_heads * c.head_dim * seq_len


def make_rlr_step(model, config, optimizer, chunk_size: int):
    """jit((params, opt_state, batch) -> (params, opt_state, loss)), buffers donated."""

    def loss_fn(params, tokens, mask):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, _ = model.apply({"params": params}, tokens, positions, mask)
        logp, _ = token_logprobs(hidden[:, :-1], lm_head_weight(params, config), tokens[:, 1:],
                                 chunk_size)
        return -jnp.mean(logp)

    def step(params, opt_state, tokens, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_rlr(name: str, batch: int, seq_len: int, args) -> dict:
    config = get_config(name, dtype=jnp.bfloat16, remat=args.remat)
    mesh = make_mesh()
    model = Transformer(config)
    params = init_model_params(model, jax.random.key(0), mesh)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))
    opt_state = jax.jit(optimizer.init)(params)
    rng = np.random.default_rng(0)
    data = shard_batch({"tokens": rng.integers(0, config.vocab_size, (batch, seq_len), dtype=np.int32),
                        "mask": np.ones((batch, seq_len), bool)}, mesh)
    step = make_rlr_step(model, config, optimizer, args.chunk_size)
    start = time.perf_counter()
    compiled = step.lower(params, opt_state, data["tokens"], data["mask"]).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], data["tokens"], data["mask"])
        loss.block_until_ready()

    run()
    seconds = median_time(run, args.runs)
    return dict(seconds=seconds, compile_s=compile_s, peak_bytes=peak)


def bench_hf(name: str, batch: int, seq_len: int, args) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_config = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(get_config(name)).items()
                                            if k not in ("architectures", "model_type")})
    model = transformers.Qwen2ForCausalLM(hf_config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0,
                                  fused=device == "cuda")
    tokens = torch.randint(0, hf_config.vocab_size, (batch, seq_len), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def run():
        with autocast:
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run()
    seconds = median_time(run, args.runs)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(seconds=seconds, peak_bytes=peak)


def device_peak_tflops(args) -> float:
    if args.peak_tflops:
        return args.peak_tflops
    kind = jax.devices()[0].device_kind
    for key, value in PEAK_TFLOPS.items():
        if key in kind:
            return value
    return float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--remat", default="none", help="none | full | dots")
    p.add_argument("--chunk-size", type=int, default=256, help="time chunk of the LM-head log-probs")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny model, B=2, T=64: a CPU smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.seq_len, args.runs = "tiny", 2, 64, 2
    peak = device_peak_tflops(args)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"peak {peak} TFLOP/s bf16")
    rows = []
    for name in args.models.split(","):
        config = get_config(name)
        tokens = args.batch * args.seq_len
        flops = model_flops_per_token(config, args.seq_len) * tokens
        r = bench_rlr(name, args.batch, args.seq_len, args)
        h = None if args.skip_hf else bench_hf(name, args.batch, args.seq_len, args)
        rows.append((name, r, h, tokens, flops))
    header = (f"{'model':<14} {'B':>3} {'T':>5} | {'rlr ms':>8} {'tok/s':>9} {'MFU':>5} {'GiB':>6} "
              f"| {'torch ms':>8} {'tok/s':>9} {'MFU':>5} {'GiB':>6} | {'speedup':>7}")
    print(header)
    print("-" * len(header))
    gib = lambda b: f"{b / 2**30:6.1f}" if b else "     -"
    for name, r, h, tokens, flops in rows:
        mfu = flops / r["seconds"] / (peak * 1e12)
        line = (f"{name:<14} {args.batch:>3} {args.seq_len:>5} | {r['seconds'] * 1e3:8.1f} "
                f"{tokens / r['seconds']:9.0f} {mfu:5.2f} {gib(r['peak_bytes'])} ")
        if h:
            hmfu = flops / h["seconds"] / (peak * 1e12)
            line += (f"| {h['seconds'] * 1e3:8.1f} {tokens / h['seconds']:9.0f} {hmfu:5.2f} "
                     f"{gib(h['peak_bytes'])} | {h['seconds'] / r['seconds']:6.2f}x")
        print(line)
    print("compile seconds (rlr): " + ", ".join(f"{n} {r['compile_s']:.0f}" for n, r, *_ in rows))


if __name__ == "__main__":
    main()

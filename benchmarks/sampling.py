"""Cost of drawing one token a row from logits [B, V]: rlr's filters and draw vs Hugging Face's.

A decode step ends with picking each row's next token from its logits [B, V]; at V = 151,936
(Qwen2.5) and B = 256 that is 39M logits a step, beside a model step of a few hundred
microseconds on a GPU. This script times that pick alone, for each filter setting:

- rlr: `rlr.sampling.sample_tokens` (temperature -> top-k -> top-p, then `categorical`'s
  two-level Gumbel-max draw), jitted, on float32 logits;
- Hugging Face: transformers' logits warpers (TemperatureLogitsWarper, TopKLogitsWarper,
  TopPLogitsWarper, what `generate(do_sample=True)` applies), softmax, `torch.multinomial`, on
  the same logits (CUDA when available, else the CPU);
- roofline: reading the float32 logits once, B * V * 4 bytes / the copy bandwidth measured in
  this run (benchmarks/generate.py's `copy_bandwidth`).

Median of --runs calls after a warm-up, ms a call.

    python benchmarks/sampling.py                     # B 64 and 256, V 151,936, five settings
    python benchmarks/sampling.py --batches 16 --vocab 49152 --runs 3     # SmolLM2 on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlr.sampling import sample_tokens  # noqa: E402
from generate import GiB, copy_bandwidth  # noqa: E402  (benchmarks/generate.py)
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

# (temperature, top_k, top_p): plain sampling (the rollouts of experiments/), top-k 50
# (transformers' default), top-k 200 (Xu et al. 2024's PPO), top-k + top-p, top-p alone.
SETTINGS = ((1.0, 0, 1.0), (1.0, 50, 1.0), (1.0, 200, 1.0), (1.0, 50, 0.9), (1.0, 0, 0.9))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="64,256", help="comma-separated rows B")
    p.add_argument("--vocab", type=int, default=151936, help="V (default Qwen2.5's)")
    p.add_argument("--runs", type=int, default=10, help="timed calls after one warm-up (median)")
    p.add_argument("--skip-hf", action="store_true", help="do not time Hugging Face's warpers")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    return args


def random_logits(batch: int, vocab: int) -> np.ndarray:
    """float32 [B, V] logits N(0, 1) * 3: a heavy head and a long tail (at V = 151,936 the
    0.9-nucleus holds about 6,800 tokens, 4.5% of the vocabulary)."""
    return (np.random.default_rng(batch).standard_normal((batch, vocab)) * 3).astype(np.float32)


def bench_rlr(logits: np.ndarray, setting, runs: int) -> float:
    temperature, top_k, top_p = setting
    draw = jax.jit(lambda x, key: sample_tokens(x, key, temperature, top_k, top_p))
    x, key = jnp.asarray(logits), jax.random.key(0)
    jax.block_until_ready(draw(x, key))
    return median_seconds(lambda: jax.block_until_ready(draw(x, key)), runs)


def hf_sampler():
    """(a function timing HF's pick, the device it runs on) or (None, why it cannot run)."""
    try:
        import torch
        from transformers.generation import logits_process as lp
    except ImportError as e:
        return None, f"HF skipped: {e}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def bench(logits: np.ndarray, setting, runs: int) -> float:
        temperature, top_k, top_p = setting
        warpers = lp.LogitsProcessorList([lp.TemperatureLogitsWarper(temperature)])
        if top_k:
            warpers.append(lp.TopKLogitsWarper(top_k))
        if top_p < 1:
            warpers.append(lp.TopPLogitsWarper(top_p))
        scores = torch.as_tensor(logits, device=device)
        input_ids = torch.zeros((scores.shape[0], 1), dtype=torch.long, device=device)

        def pick():
            with torch.no_grad():
                probs = torch.softmax(warpers(input_ids, scores), dim=-1)
                torch.multinomial(probs, num_samples=1)
            sync()

        pick()
        return median_seconds(pick, runs)

    return bench, device


def setting_name(setting) -> str:
    temperature, top_k, top_p = setting
    parts = [f"T={temperature:g}"] + ([f"top-k {top_k}"] if top_k else []) + (
        [f"top-p {top_p:g}"] if top_p < 1 else [])
    return ", ".join(parts)


def main(argv=None):
    args = parse_args(argv)
    bandwidth = copy_bandwidth(2 * GiB)
    hf, hf_where = (None, "HF skipped: --skip-hf") if args.skip_hf else hf_sampler()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; HF: {hf_where}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; V = {args.vocab}, median of {args.runs}")
    rows = []
    for batch in args.batches:
        logits = random_logits(batch, args.vocab)
        for setting in SETTINGS:
            row = dict(batch=batch, vocab=args.vocab, setting=setting_name(setting),
                       rlr_ms=1e3 * bench_rlr(logits, setting, args.runs),
                       roofline_ms=1e3 * logits.nbytes / bandwidth)
            if hf is not None:
                row["hf_ms"] = 1e3 * hf(logits, setting, args.runs)
            rows.append(row)
            print(row, flush=True)
    header = (f"{'setting':<26}{'batch':>6}{'rlr ms':>10}{'HF ms':>10}{'speedup':>9}"
              f"{'roofline ms':>13}{'% roof':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        hf_ms = r.get("hf_ms")
        print(f"{r['setting']:<26}{r['batch']:>6}{r['rlr_ms']:>10.2f}"
              f"{'n/a' if hf_ms is None else format(hf_ms, '.2f'):>10}"
              f"{'n/a' if hf_ms is None else format(hf_ms / r['rlr_ms'], '.1f'):>9}"
              f"{r['roofline_ms']:>13.3f}{100 * r['roofline_ms'] / r['rlr_ms']:>7.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(bandwidth=bandwidth, device=jax.devices()[0].device_kind,
                           hf=hf_where, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()

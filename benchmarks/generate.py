"""Generation throughput: rlr's jitted sampler vs Hugging Face `generate`, against the HBM roofline.

For each model shape (random weights, bfloat16 params and compute, or --dtype) and batch size:
prompts of --prompt-len random tokens, --new-tokens sampled tokens a row (temperature 1, top-p
1, no EOS, so no row stops early), timed after a warm-up with block_until_ready /
cuda.synchronize, median of --runs. Hugging Face transformers generates the same shapes from the
same config (torch, bfloat16, random init, do_sample, min_new_tokens = max_new_tokens).

Roofline: decoding is bound by reading the weights and the filled part of the KV cache once a
step. bytes(step t) = weight bytes + 2 * L * B * (P + t) * KVH * Dh * itemsize, for the
t = 0..R-1 steps of a call; roofline tok/s = B * R * bandwidth / sum_t bytes(t), with the
bandwidth measured in this run (a jitted x + 1 over a large array on one device: 2 * nbytes
moved) times the mesh's devices. Prefill time is left out, so the roofline is optimistic and
"% roofline" conservative.

Peak memory: rlr = the compiled call's argument + output + temporary bytes (XLA's memory
analysis: params, cache, logits...); est = rlr.parallel.memory.estimate_memory(rollout=...)
.sampling of the same call (the unstacked decode it models; the CPU tests check it in float32,
this column checks bfloat16); HF = torch.cuda.max_memory_allocated over its runs.

    python benchmarks/generate.py                       # 0.5B and 1.5B, batch 64 and 256 (GPU)
    python benchmarks/generate.py --quick               # tiny shapes, runs on a CPU in < 1 min
    python benchmarks/generate.py --models qwen2.5-0.5b --batches 64 --skip-hf
    python benchmarks/generate.py --batches 256 --decode unstacked,scanned   # token-loop A/B
    python benchmarks/generate.py --prompt-len 1024 --prefill-chunks 0,256   # chunked prefill A/B
    python benchmarks/generate.py --tensor 2      # heads and MLP over 2 devices (data: the rest)
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

# Let jax allocate on demand so that torch (Hugging Face) has GPU memory in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlr.models import Transformer, get_config, to_hf_config  # noqa: E402
from rlr.parallel import init_model_params, make_mesh  # noqa: E402
from rlr.parallel.memory import estimate_memory  # noqa: E402
from rlr.sampling import Sampler, SamplingConfig  # noqa: E402
from op_profile import print_row_profile, profile_or_error  # noqa: E402  (benchmarks/op_profile.py)
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

GiB = 1024 ** 3


FULL = dict(models="qwen2.5-0.5b,qwen2.5-1.5b", batches="64,256", prompt_len=128, new_tokens=256,
            runs=3, hf_runs=2)
QUICK = dict(models="tiny", batches="4,8", prompt_len=16, new_tokens=16, runs=2, hf_runs=1)


def parse_args(argv=None):
    """Flags; those not given take their FULL value, or their QUICK value under --quick."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="comma-separated names from rlr.models.NAMED_CONFIGS "
                   f"(default {FULL['models']}; --quick: {QUICK['models']})")
    p.add_argument("--batches", help=f"comma-separated batch sizes (default {FULL['batches']})")
    p.add_argument("--prompt-len", type=int, help=f"default {FULL['prompt_len']}")
    p.add_argument("--new-tokens", type=int, help=f"default {FULL['new_tokens']}")
    p.add_argument("--runs", type=int, help="timed rlr runs after one warm-up (median)")
    p.add_argument("--hf-runs", type=int, help="timed Hugging Face runs (median)")
    p.add_argument("--skip-hf", action="store_true", help="do not run Hugging Face generate")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, batches 4 and 8, prompt 16, 16 new tokens (CPU smoke run)")
    p.add_argument("--prng", default="threefry2x32", choices=("threefry2x32", "rbg", "unsafe_rbg"),
                   help="PRNG implementation of the sampling key (rbg draws bits faster on GPU)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="rlr params and compute (HF runs bfloat16 on CUDA, float32 on a CPU)")
    p.add_argument("--decode", default="unstacked",
                   help="comma-separated token-loop variants, one rlr row each: unstacked "
                        "(per-layer weight copy, the default) and / or scanned "
                        "(SamplingConfig.unstack_layers=False)")
    p.add_argument("--tensor", type=int, default=1,
                   help="devices the heads and MLP are split over (mesh data = the rest, fsdp 1)")
    p.add_argument("--prefill-chunks", default="0",
                   help="comma-separated SamplingConfig.prefill_chunk values, one rlr row each "
                        "(0 = the whole prompt in one pass)")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="trace one more rlr call and print its TOP ops by time and the time by "
                        "op kind (benchmarks/op_profile.py); 0 = off")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.decode = [d for d in args.decode.split(",") if d]
    args.prefill_chunks = [int(c) for c in args.prefill_chunks.split(",") if c]
    for variant in args.decode:
        if variant not in ("unstacked", "scanned"):
            p.error(f"--decode: {variant!r} is not one of ('unstacked', 'scanned')")
    return args


def copy_bandwidth(nbytes: int, runs: int = 10) -> float:
    """Device memory bandwidth in bytes/s: a jitted y = x + 1 over `nbytes` of float32 reads and
    writes 2 * nbytes."""
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    add_one = jax.jit(lambda v: v + 1)
    add_one(x).block_until_ready()
    seconds = median_seconds(lambda: add_one(x).block_until_ready(), runs)
    return 2 * x.nbytes / seconds


def roofline_tokens_per_second(config, params, batch: int, prompt_len: int, new_tokens: int,
                               bandwidth: float) -> float:
    """B * R / (sum over decode steps of (weight bytes + filled KV bytes) / bandwidth)."""
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    itemsize = jnp.dtype(config.dtype).itemsize
    kv_bytes_per_slot = 2 * config.num_layers * batch * config.num_kv_heads * config.head_dim * itemsize
    filled = prompt_len * new_tokens + new_tokens * (new_tokens - 1) / 2  # sum_t (P + t)
    total_bytes = new_tokens * weight_bytes + kv_bytes_per_slot * filled
    return batch * new_tokens * bandwidth / total_bytes


def bench_rlr(config, params, mesh, batch: int, decode: str, chunk: int, args) -> dict:
    model = Transformer(config)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens,
                              eos_ids=(), unstack_layers=decode == "unstacked",
                              prefill_chunk=chunk)
    sampler = Sampler(model, sampling, mesh)
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, config.vocab_size, (batch, args.prompt_len)).astype(np.int32)
    tokens, mask = sampler.prepare(prompts, np.ones_like(prompts, bool))
    key = jax.random.key(0, impl=args.prng)
    start = time.perf_counter()
    compiled = sampler.lower(params, tokens, mask, key).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    out = compiled(params, tokens, mask, key)
    jax.block_until_ready(out)
    generated = int(np.asarray(out.lengths).sum())
    if generated != batch * args.new_tokens:
        raise RuntimeError(f"rlr generated {generated} tokens, expected {batch * args.new_tokens}")
    call = lambda: jax.block_until_ready(compiled(params, tokens, mask, key))  # noqa: E731
    seconds = median_seconds(call, args.runs)
    estimate = None
    if decode == "unstacked":
        estimate = estimate_memory(config, mesh, optimizer="sgd",
                                   rollout=(batch, tokens.shape[1], args.new_tokens, 1),
                                   prefill_chunk=chunk).sampling
    row = dict(rlr_tok_s=batch * args.new_tokens / seconds, rlr_s=seconds,
               rlr_compile_s=compile_s, rlr_peak_bytes=peak, rlr_est_bytes=estimate)
    if args.profile:
        row.update(profile_or_error(compiled, call))
    return row


def hf_setup(quick: bool):
    """(torch, transformers, device, dtype) or (None, reason) when HF cannot run here."""
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, f"HF skipped: {e}"
    if torch.cuda.is_available():
        return (torch, transformers, "cuda", torch.bfloat16), None
    if quick:
        return (torch, transformers, "cpu", torch.float32), None
    return None, "HF skipped: torch.cuda is not available (only --quick runs HF on the CPU)"


def build_hf_model(hf, config):
    torch, transformers, device, dtype = hf
    fields = {k: v for k, v in to_hf_config(config).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    hf_config = transformers.AutoConfig.for_model(config.architecture, **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model.eval()


def bench_hf(hf, model, config, batch: int, args) -> dict:
    torch, _, device, _ = hf
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, config.vocab_size, (batch, args.prompt_len))
    input_ids = torch.as_tensor(prompts, dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(new_tokens):
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=0, eos_token_id=config.vocab_size - 1)
        sync()
        return out

    run(4)  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(lambda: run(args.new_tokens), args.hf_runs)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(hf_tok_s=batch * args.new_tokens / seconds, hf_s=seconds, hf_peak_bytes=peak)


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def fmt_bytes(b):
    if b is None:
        return "n/a"
    return f"{b / GiB:.2f}G" if b >= GiB / 10 else f"{b / 2 ** 20:.1f}M"


def print_table(rows, bandwidth, mesh):
    print(f"\nmeasured copy bandwidth: {bandwidth / 1e9:.0f} GB/s a device on "
          f"{jax.devices()[0].device_kind}; mesh {dict(mesh.shape)}")
    header = (f"{'model':<16}{'batch':>6}{'decode':>10}{'chunk':>6}{'rlr tok/s':>12}{'HF tok/s':>11}"
              f"{'speedup':>9}{'roofline':>11}{'% roof':>8}{'rlr peak':>10}{'est':>8}{'HF peak':>9}"
              f"{'compile':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        speedup = r["rlr_tok_s"] / r["hf_tok_s"] if r.get("hf_tok_s") else None
        print(f"{r['model']:<16}{r['batch']:>6}{r['decode']:>10}{r['prefill_chunk'] or '-':>6}"
              f"{r['rlr_tok_s']:>12.0f}"
              f"{fmt(r.get('hf_tok_s'), '.0f'):>11}{fmt(speedup, '.1f'):>9}"
              f"{r['roofline_tok_s']:>11.0f}{100 * r['rlr_tok_s'] / r['roofline_tok_s']:>7.1f}%"
              f"{fmt_bytes(r['rlr_peak_bytes']):>10}{fmt_bytes(r.get('rlr_est_bytes')):>8}"
              f"{fmt_bytes(r.get('hf_peak_bytes')):>9}"
              f"{r['rlr_compile_s']:>8.1f}s")
    for note in sorted({r["hf_note"] for r in rows if r.get("hf_note")}):
        print(note)


def main(argv=None):
    args = parse_args(argv)
    print(f"jax {jax.__version__}, devices {jax.devices()}, prompt {args.prompt_len}, "
          f"new tokens {args.new_tokens}, runs {args.runs}")
    bandwidth = copy_bandwidth(64 * 2 ** 20 if args.quick else 2 * GiB)
    hf, hf_note = (None, "HF skipped: --skip-hf") if args.skip_hf else hf_setup(args.quick)
    if hf is not None:
        print(f"torch {hf[0].__version__}, transformers {hf[1].__version__}, HF on {hf[2]} "
              f"{hf[3]}")
    mesh = make_mesh(tensor=args.tensor)
    rows = []
    for name in args.models:
        dtype = getattr(jnp, args.dtype)
        config = get_config(name, param_dtype=dtype, dtype=dtype)
        params = init_model_params(Transformer(config), jax.random.key(0), mesh)
        for batch in args.batches:
            for decode, chunk in itertools.product(args.decode, args.prefill_chunks):
                row = dict(model=name, batch=batch, decode=decode, prefill_chunk=chunk,
                           hf_note=hf_note)
                row.update(bench_rlr(config, params, mesh, batch, decode, chunk, args))
                row["roofline_tok_s"] = roofline_tokens_per_second(
                    config, params, batch, args.prompt_len, args.new_tokens, bandwidth * mesh.size)
                print(f"{name} batch {batch} ({decode}, prefill chunk {chunk}): rlr {row['rlr_tok_s']:.0f} tok/s "
                      f"(compile {row['rlr_compile_s']:.1f} s)", flush=True)
                rows.append(row)
        del params
        if hf is not None:
            model = build_hf_model(hf, config)
            for batch in args.batches:
                measured = bench_hf(hf, model, config, batch, args)
                for row in rows:
                    if row["model"] == name and row["batch"] == batch:
                        row.update(measured)
                print(f"{name} batch {batch}: HF {measured['hf_tok_s']:.0f} tok/s", flush=True)
            del model
            if hf[2] == "cuda":
                hf[0].cuda.empty_cache()
    print_table(rows, bandwidth, mesh)
    for r in rows:
        print_row_profile(r, args.profile,
                          f"of rlr {r['model']} batch {r['batch']} ({r['decode']}, prefill "
                          f"chunk {r['prefill_chunk']}), one call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(bandwidth=bandwidth, device=jax.devices()[0].device_kind,
                           args={k: v for k, v in vars(args).items()}, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()

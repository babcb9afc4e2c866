"""Training-step throughput of rlr's jitted SFT, DPO and PPO steps vs PyTorch + transformers.

The steps (random weights; float32 params and Adam state, bfloat16 compute):

- sft: rlr.train.sft_step.train_step: next-token NLL of [B, T] through the chunked LM head,
  its gradient, global-norm clip + AdamW (rlr.train.optim.make_optimizer).
- dpo: rlr.train.dpo_step.train_step: B/2 pairs = B rows of [prompt | response] (chosen and
  rejected), the reference model's log-probs (forward only; reference params stored in
  bfloat16, which with bfloat16 compute changes no number), the policy's forward + backward,
  sigmoid DPO loss, clip + AdamW.
- ppo: rlr.train.ppo_step.ppo_update: one rollout batch of M x B rows, M = --minibatches
  minibatches of B rows; per minibatch the policy's clipped objective (log-probs and entropy)
  and the critic's clipped value loss, each with its gradient and its own clip + AdamW. One
  jitted call runs all M minibatch steps; "step" below is one minibatch (call time / M).

Sequences are --seq-len tokens (DPO / PPO: --prompt-len prompt + the rest response, all
valid, so nothing is padding). Every jitted step donates its train states. The peer runs the
same steps in torch eager with transformers' Qwen2 / Llama on the same config: float32 params
under torch.autocast(bfloat16) on CUDA, torch.optim.AdamW(fused=True), log-probs of the
response positions only (`logits_to_keep`, and a row-by-row log-softmax as TRL's
selective_log_softmax), a bfloat16 reference model, a value head on the base model. The peer
does not compute the policy entropy that rlr's PPO step does.

Batch: B is the number of model rows a step trains on (DPO: 2 x pairs; PPO: one minibatch).
--batch auto (default on a GPU) takes the largest candidate whose rlr.parallel.memory estimate
fits in 85% of the device memory, stepping down when the compiled program does not fit or the
run is out of memory. The peer starts at the same B and halves it until it fits.

FLOPs (model FLOPs, no recomputation counted): with N_lm = L (D Dh (N + 2 KVH) + N Dh D + 3 D F)
+ D V the matmul weights of a token through the LM model (the embedding lookup excluded) and
N_score = N_lm - D V + D the critic's, a token costs 6 N + 12 L N_h Dh T to train and
2 N + 4 L N_h Dh T forward only (Chowdhery et al. 2022, PaLM, App. B; the attention term counts
the full T x T score matrix). Step FLOPs: sft B T train(lm); dpo B T (train(lm) + forward(lm));
ppo B T (train(lm) + train(score)). MFU = step FLOPs / (step time x peak), the peak being the
dense bf16 datasheet rate (H100 SXM: 989 TFLOP/s), or --peak-tflops.
"FLx" = the matmul FLOPs the traced rlr step executes (benchmarks/flops.py: recomputation
included, the LM head on response tokens only) / its model FLOPs; the hardware FLOPs
utilisation is MFU x FLx. Counted for --attention xla only (cuDNN's kernel is not a matmul of
the jaxpr): "-" on cudnn rows, whose matmuls are the xla row's but for flash attention's own
recomputation.

Attention: --attention xla,cudnn measures rlr once with each ModelConfig.attention kernel
(cudnn: cuDNN flash attention on rows packed to the front, rlr.models.decoder) beside one peer
row. "|grad|" is the policy gradient norm of rlr's first call, from the same initial params and
batch whatever the kernel: equal within bfloat16 rounding when a kernel changes no numerics.

Memory: "XLA" = the compiled step's arguments + outputs + temporaries - aliased (XLA's memory
analysis, per device); "est" = rlr.parallel.memory.estimate_memory of the same step; "peak" =
the device allocator's peak (GPU only): jax memory_stats' peak_bytes_in_use since the process
started (setup included), torch max_memory_allocated over the timed runs.

    python benchmarks/train_step.py                       # dpo, ppo, sft on Qwen2.5-0.5B and 1.5B (GPU)
    python benchmarks/train_step.py --models qwen2.5-1.5b --steps dpo --remat full --batch 16
    python benchmarks/train_step.py --models qwen2.5-1.5b --steps dpo --attention xla,cudnn
    python benchmarks/train_step.py --quick               # tiny shapes on a CPU, < 2 min

Each (framework, model, step) runs in a fresh subprocess on a GPU (jax and torch each get the
whole device; an out-of-memory step cannot spoil the next); --quick runs in one process.
The script imports rlr from the repository root (no install needed).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import subprocess
import sys
import time

# jax allocates on demand, so that torch has the GPU in the same process under --no-isolate.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flops import matmul_flops  # noqa: E402  (benchmarks/flops.py)
from op_profile import print_row_profile, profile_or_error  # noqa: E402  (benchmarks/op_profile.py)
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

STEPS = ("sft", "dpo", "ppo")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
BATCH_CANDIDATES = (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 2)
MEMORY_HEADROOM = 0.85  # --batch auto: the estimate must fit in this share of device memory
GiB = 1024 ** 3

FULL = dict(models="qwen2.5-0.5b,qwen2.5-1.5b", steps="dpo,ppo,sft", seq_len=1024,
            prompt_len=256, runs=5, batch="auto")
QUICK = dict(models="tiny", steps="dpo,ppo,sft", seq_len=64, prompt_len=16, runs=2, batch="4")


# ----------------------------------------------------------------------------- shapes and FLOPs


@dataclasses.dataclass(frozen=True)
class Shape:
    """One measurement's shape: B model rows a step, T = P + R tokens a row."""

    step: str
    rows: int
    seq_len: int
    prompt_len: int

    @property
    def response_len(self) -> int:
        return self.seq_len - self.prompt_len

    @property
    def tokens(self) -> int:
        """Tokens a step trains on: B x T."""
        return self.rows * self.seq_len


def matmul_params(config, head: str = "lm") -> int:
    """N: weights a token meets in matmuls (N_lm includes the D x V output projection; the
    critic's score head is D x 1)."""
    c = config
    attn = c.hidden_size * c.head_dim * (c.num_heads + 2 * c.num_kv_heads) + c.num_heads * c.head_dim * c.hidden_size
    body = c.num_layers * (attn + 3 * c.hidden_size * c.intermediate_size)
    return body + c.hidden_size * (c.vocab_size if head == "lm" else 1)


def flops_per_token(config, seq_len: int, head: str = "lm", training: bool = True) -> float:
    """6 N + 12 L N_h Dh T to train, 2 N + 4 L N_h Dh T forward only (PaLM, App. B)."""
    attention = 4 * config.num_layers * config.num_heads * config.head_dim * seq_len
    n = matmul_params(config, head)
    return 3 * (2 * n + attention) if training else 2 * n + attention


def step_flops(config, shape: Shape) -> float:
    """Model FLOPs of one step (see the module docstring)."""
    train_lm = flops_per_token(config, shape.seq_len, "lm")
    if shape.step == "sft":
        per_token = train_lm
    elif shape.step == "dpo":
        per_token = train_lm + flops_per_token(config, shape.seq_len, "lm", training=False)
    else:
        per_token = train_lm + flops_per_token(config, shape.seq_len, "score")
    return per_token * shape.tokens


# ----------------------------------------------------------------------------- rlr


def rlr_model_config(name: str, args):
    import jax.numpy as jnp

    from rlr.models import get_config

    overrides = dict(kv.split("=", 1) for kv in args.model_override)
    return get_config(name, dtype=getattr(jnp, args.dtype), remat=args.remat,
                      attention=args.attention, **overrides)


def rlr_inputs(step: str, config, shape: Shape, minibatches: int, mesh):
    """The step's batch on the mesh: host numpy arrays of random tokens, all valid."""
    import numpy as np

    from rlr.parallel import shard_batch

    rng = np.random.default_rng(0)
    rows, t, p, r = shape.rows, shape.seq_len, shape.prompt_len, shape.response_len
    tokens = lambda *s: rng.integers(0, config.vocab_size, s, dtype=np.int32)
    ones = lambda *s: np.ones(s, bool)
    if step == "sft":
        return shard_batch(dict(tokens=tokens(rows, t),
                                positions=np.tile(np.arange(t, dtype=np.int32), (rows, 1)),
                                attention_mask=ones(rows, t), loss_mask=ones(rows, t)), mesh)
    if step == "dpo":
        from rlr.train.dpo_step import PairBatch

        pairs = rows // 2
        return shard_batch(PairBatch(tokens(pairs, p), ones(pairs, p), tokens(pairs, r),
                                     ones(pairs, r), tokens(pairs, r), ones(pairs, r),
                                     ones(pairs)), mesh)
    from rlr.train.ppo_step import PPOBatch

    n = rows * minibatches
    normal = lambda: rng.normal(size=(n, r)).astype(np.float32)
    return shard_batch(PPOBatch(tokens(n, p), ones(n, p), tokens(n, r), ones(n, r),
                                old_logp=-np.abs(normal()) - 1.0, ref_logp=-np.abs(normal()) - 1.0,
                                advantages=normal(), returns=normal(), old_values=normal()), mesh)


def rlr_program(step: str, config, shape: Shape, args, mesh, abstract: bool = False):
    """(jitted step, its arguments as a list, indices of the arguments it returns updated,
    number of optimizer steps a call makes, memory estimate). abstract: params and optimizer
    states as ShapeDtypeStructs (nothing allocated: enough to trace the step)."""
    import jax
    import jax.numpy as jnp

    from rlr.models import Transformer
    from rlr.parallel import abstract_sharded_params, init_model_params
    from rlr.parallel.memory import estimate_memory
    from rlr.train.optim import OptimConfig, make_optimizer
    from rlr.train.state import abstract_train_state, create_train_state

    optim = OptimConfig(learning_rate=1e-6, warmup_steps=0, total_steps=1000)
    optimizer = make_optimizer(optim)

    def new_state(model, key):  # (params, train state) of a model
        params = (abstract_sharded_params(model, mesh) if abstract
                  else init_model_params(model, key, mesh))
        return params, (abstract_train_state if abstract else create_train_state)(
            params, optimizer, jax.random.fold_in(key, 1))

    policy_model = Transformer(config)
    params, policy = new_state(policy_model, jax.random.key(0))
    batch = rlr_inputs(step, config, shape, args.minibatches, mesh)
    estimate = functools.partial(estimate_memory, config, mesh, shape.rows, shape.seq_len,
                                 optimizer=optimizer, chunk_size=args.chunk_size)
    if step == "sft":
        from rlr.train import sft_step

        fn = functools.partial(sft_step.train_step, model=policy_model, optimizer=optimizer,
                               chunk_size=args.chunk_size)
        return jax.jit(fn, donate_argnums=(0,)), [policy, batch], (0,), 1, estimate()
    if step == "dpo":
        from rlr.train import dpo_step

        ref_dtype = getattr(jnp, args.reference_dtype)
        cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(ref_dtype), p))
        reference = jax.eval_shape(cast, params) if abstract else cast(params)
        fn = functools.partial(dpo_step.train_step, model=policy_model, optimizer=optimizer,
                               config=dpo_step.PreferenceConfig(logprob_chunk=args.chunk_size))
        return (jax.jit(fn, donate_argnums=(0,)), [policy, reference, batch], (0,), 1,
                estimate(references=1, reference_dtype=ref_dtype))
    from rlr.train import ppo_step

    critic_model = Transformer(config, head="score")
    _, critic = new_state(critic_model, jax.random.key(2))
    update = ppo_step.UpdateConfig(epochs=1, num_minibatches=args.minibatches,
                                   logprob_chunk=args.chunk_size)
    fn = functools.partial(ppo_step.ppo_update, policy_model=policy_model,
                           critic_model=critic_model, policy_optim=optim, critic_optim=optim,
                           config=update, mesh=mesh)
    return (jax.jit(fn, donate_argnums=(0, 1)), [policy, critic, None, batch, jax.random.key(4)],
            (0, 1), args.minibatches, estimate(critic=config))


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def compiled_bytes(compiled):
    """Arguments + outputs + temporaries - aliased bytes of a compiled program (per device)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def rlr_measure(name: str, shape: Shape, args) -> dict:
    """Compile and time one rlr step; raises on out-of-memory (the caller steps B down)."""
    import flax.linen as nn
    import jax

    from rlr.parallel import DEFAULT_RULES, make_mesh
    from rlr.parallel.memory import device_memory_limit

    config = rlr_model_config(name, args)
    mesh = make_mesh()
    fn, call_args, updated, opt_steps, estimate = rlr_program(shape.step, config, shape, args, mesh)
    start = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        traced = fn.trace(*call_args)
        compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    # a call's matmul FLOPs, per optimizer step as `seconds` below
    executed_flops = (matmul_flops(traced.jaxpr) / opt_steps if config.attention == "xla"
                      else None)
    xla_bytes = compiled_bytes(compiled)
    limit = device_memory_limit()
    if limit and xla_bytes and xla_bytes > limit:
        raise MemoryError(f"compiled step needs {xla_bytes / GiB:.1f} GiB > {limit / GiB:.1f} GiB")

    def run():
        out = compiled(*call_args)
        for i, value in zip(updated, out):
            call_args[i] = value
        return jax.block_until_ready(out)

    # The warm-up's loss and policy gradient norm are those of the initial params on the batch
    # (DPO's loss is log 2 there, policy = reference): numbers that a numerics-preserving change
    # (another attention kernel, remat policy) must leave equal within its tolerance.
    metrics = run()[-1]
    prefix = "policy/" if shape.step == "ppo" else ""
    first_loss, first_grad_norm = (float(metrics[prefix + k]) for k in ("loss", "grad_norm"))
    seconds = median_seconds(run, args.runs) / opt_steps
    profile = profile_or_error(compiled, run) if args.profile else {}
    stats = jax.devices()[0].memory_stats() or {}
    del call_args, compiled
    return dict(framework="rlr", device=jax.devices()[0].device_kind, model=name,
                step=shape.step, rows=shape.rows, seq_len=shape.seq_len, remat=config.remat,
                attention=config.attention, first_loss=first_loss,
                first_grad_norm=first_grad_norm, seconds=seconds,
                compile_s=compile_s, executed_flops=executed_flops,
                xla_bytes=xla_bytes, estimate_bytes=estimate.training,
                peak_bytes=stats.get("peak_bytes_in_use"), **profile)


def rlr_flops_row(name: str, step: str, remat: str, args) -> dict:
    """Model and executed matmul FLOPs of one rlr step at one remat policy, from its trace on
    abstract params (nothing runs or is allocated: any size on any machine); B = --batch (8
    under auto: the ratio does not depend on B)."""
    import flax.linen as nn
    import jax

    from rlr.parallel import DEFAULT_RULES, make_mesh

    rows = 8 if args.batch == "auto" else int(args.batch)
    shape = Shape(step, rows, args.seq_len, args.prompt_len)
    # XLA's attention: cuDNN's kernel is a custom call, not a matmul the count can see
    config = rlr_model_config(name, argparse.Namespace(**dict(vars(args), remat=remat,
                                                              attention="xla")))
    mesh = make_mesh()
    fn, call_args, _, opt_steps, _ = rlr_program(step, config, shape, args, mesh, abstract=True)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        executed = matmul_flops(fn.trace(*call_args).jaxpr) / opt_steps
    model = step_flops(config, shape)
    return dict(model=name, step=step, remat=remat, rows=rows, model_flops=model,
                executed_flops=executed, flops_ratio=executed / model)


def print_flops_table(rows: list[dict]) -> None:
    header = (f"{'step':<4} {'model':<13} {'remat':<5} {'B':>3} {'model TFLOP':>11} "
              f"{'executed TFLOP':>14} {'FLx':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['step']:<4} {r['model']:<13} {r['remat']:<5} {r['rows']:>3} "
              f"{r['model_flops'] / 1e12:11.2f} {r['executed_flops'] / 1e12:14.2f} "
              f"{r['flops_ratio']:6.3f}")
    print("FLx = executed / model FLOPs a step (benchmarks/flops.py): the hardware FLOPs "
          "utilisation a step needs for a given MFU is MFU x FLx")


def rows_candidates(step: str, fixed) -> list[int]:
    """The B values to try, largest first (DPO needs an even B)."""
    values = [fixed] if fixed else list(BATCH_CANDIDATES)
    if step == "dpo":
        values = [b for b in values if b % 2 == 0]
        if not values:
            raise SystemExit(f"--batch {fixed}: the DPO step needs an even number of rows")
    return values


def rlr_auto_rows(name: str, step: str, args) -> list[int]:
    """Candidates whose memory estimate fits in MEMORY_HEADROOM of the device (all if unknown)."""
    import jax.numpy as jnp

    from rlr.parallel import make_mesh
    from rlr.parallel.memory import device_memory_limit, estimate_memory

    candidates = rows_candidates(step, None)
    limit = device_memory_limit()
    if not limit:
        return candidates[-3:]
    config = rlr_model_config(name, args)
    mesh = make_mesh()
    fits = [b for b in candidates
            if estimate_memory(config, mesh, b, args.seq_len, chunk_size=args.chunk_size,
                               critic=config if step == "ppo" else None, references=int(step == "dpo"),
                               reference_dtype=getattr(jnp, args.reference_dtype)).training
            <= MEMORY_HEADROOM * limit]
    return fits or candidates[-1:]


def rlr_row(name: str, step: str, args) -> dict:
    """The rlr measurement at the largest B that runs (or --batch)."""
    candidates = (rlr_auto_rows(name, step, args) if args.batch == "auto"
                  else rows_candidates(step, int(args.batch)))
    errors = []
    for rows in candidates:
        try:
            return rlr_measure(name, Shape(step, rows, args.seq_len, args.prompt_len), args)
        except Exception as e:  # noqa: BLE001 - out-of-memory is the only one retried
            if not (isinstance(e, MemoryError) or is_out_of_memory(e)):
                raise
            errors.append(f"B={rows}: {str(e).splitlines()[0][:160]}")
            gc.collect()
    return dict(framework="rlr", model=name, step=step, attention=args.attention,
                error="; ".join(errors))


# ----------------------------------------------------------------------------- torch peer


def torch_setup(quick: bool):
    """(torch, transformers, device) or raise SystemExit when the peer cannot run."""
    import torch
    import transformers

    if torch.cuda.is_available():
        return torch, transformers, "cuda"
    if quick:
        torch.set_num_threads(1)  # tiny shapes: threads only contend (10-50x slower on a busy CPU)
        return torch, transformers, "cpu"
    raise SystemExit("torch peer: CUDA is not available (only --quick runs it on the CPU)")


def hf_config_of(transformers, config):
    from rlr.models import to_hf_config

    fields = {k: v for k, v in to_hf_config(config).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    return transformers.AutoConfig.for_model(config.architecture, **fields)


def selective_logprobs(torch, logits, targets):
    """log softmax(logits)[targets] [B, R] float32, one row at a time in float32 (TRL's
    selective_log_softmax: never a whole float32 [B, R, V])."""
    rows = []
    for row_logits, row_targets in zip(logits, targets):
        row = torch.log_softmax(row_logits.float(), dim=-1)
        rows.append(row.gather(-1, row_targets[:, None]).squeeze(-1))
    return torch.stack(rows)


def torch_program(torch, transformers, device, config, shape: Shape, args):
    """(step function, number of optimizer steps it makes) of the peer."""
    hf_config = hf_config_of(transformers, config)
    torch.manual_seed(0)
    cuda = device == "cuda"
    autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=cuda)
    adamw = lambda params: torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.95),
                                             weight_decay=0.0, fused=cuda)
    with torch.device(device):
        policy = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    policy.train()
    if args.peer_grad_ckpt:
        policy.gradient_checkpointing_enable()
    policy_opt = adamw(policy.parameters())
    rows, t, p, r = shape.rows, shape.seq_len, shape.prompt_len, shape.response_len
    ids = torch.randint(0, config.vocab_size, (rows, t), device=device)
    attention = torch.ones_like(ids)
    response = ids[:, p:]

    def update(model, optimizer, loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def response_logprobs(model):
        logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=r + 1).logits
        return selective_logprobs(torch, logits[:, :-1], response)

    if shape.step == "sft":
        def step():
            with autocast():
                loss = policy(input_ids=ids, attention_mask=attention, labels=ids).loss
            update(policy, policy_opt, loss)
        return step, 1

    if shape.step == "dpo":
        with torch.device(device):
            reference = transformers.AutoModelForCausalLM.from_config(
                hf_config, dtype=torch.bfloat16 if cuda else torch.float32)
        reference.eval()

        def step():
            with torch.no_grad(), autocast():
                ref = response_logprobs(reference).sum(-1).view(-1, 2)
            with autocast():
                pol = response_logprobs(policy).sum(-1).view(-1, 2)
            margin = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
            update(policy, policy_opt, -torch.nn.functional.logsigmoid(0.1 * margin).mean())
        return step, 1

    with torch.device(device):
        critic = transformers.AutoModel.from_config(hf_config, dtype=torch.float32)
        value_head = torch.nn.Linear(config.hidden_size, 1)
    critic.train()
    if args.peer_grad_ckpt:
        critic.gradient_checkpointing_enable()
    critic_params = list(critic.parameters()) + list(value_head.parameters())
    critic_opt = adamw(critic_params)
    old_logp = -torch.rand(rows, r, device=device) - 1.0
    advantages, returns, old_values = (torch.randn(rows, r, device=device) for _ in range(3))

    def clipped_critic_update():
        with autocast():
            hidden = critic(input_ids=ids, attention_mask=attention).last_hidden_state
            values = value_head(hidden[:, p - 1:t - 1]).squeeze(-1).float()
        clipped = old_values + (values - old_values).clamp(-0.2, 0.2)
        loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(critic_params, 1.0)
        critic_opt.step()
        critic_opt.zero_grad(set_to_none=True)

    def step():
        with autocast():
            logp = response_logprobs(policy)
        ratio = torch.exp(logp - old_logp)
        loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
        update(policy, policy_opt, loss)
        clipped_critic_update()
    return step, 1


def torch_measure(name: str, shape: Shape, args) -> dict:
    torch, transformers, device = torch_setup(args.quick)
    cuda = device == "cuda"
    config = rlr_model_config(name, args)
    step, opt_steps = torch_program(torch, transformers, device, config, shape, args)

    def run():
        step()
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(run, args.runs) / opt_steps
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return dict(framework="torch", device=torch.cuda.get_device_name(0) if cuda else "cpu",
                model=name, step=shape.step, rows=shape.rows, seq_len=shape.seq_len,
                seconds=seconds, peak_bytes=peak,
                grad_ckpt=bool(args.peer_grad_ckpt))


def torch_row(name: str, step: str, args, start_rows: int) -> dict:
    """The peer at B = start_rows, halved while it runs out of memory."""
    import torch

    rows, errors = start_rows, []
    while rows >= (2 if step == "dpo" else 1):
        try:
            return torch_measure(name, Shape(step, rows, args.seq_len, args.prompt_len), args)
        except torch.OutOfMemoryError as e:
            errors.append(f"B={rows}: {str(e).splitlines()[0][:120]}")
        gc.collect()
        torch.cuda.empty_cache()
        rows //= 2
        if step == "dpo":
            rows -= rows % 2
    return dict(framework="torch", model=name, step=step, error="; ".join(errors) or "no batch")


# ----------------------------------------------------------------------------- driver


def parse_args(argv=None):
    """Flags; those not given take their FULL value, or their QUICK value under --quick."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help=f"names from rlr.models.NAMED_CONFIGS (default {FULL['models']})")
    p.add_argument("--steps", help=f"comma-separated of {STEPS} (default {FULL['steps']})")
    p.add_argument("--seq-len", type=int, help=f"tokens a row (default {FULL['seq_len']})")
    p.add_argument("--prompt-len", type=int, help=f"prompt tokens of a DPO / PPO row (default {FULL['prompt_len']})")
    p.add_argument("--batch", help="model rows a step, or auto: the largest that fits (default auto)")
    p.add_argument("--runs", type=int, help="timed calls after one warm-up (median)")
    p.add_argument("--remat", default="none", choices=("none", "full", "dots"),
                   help="what each layer saves for the backward pass (rlr ModelConfig.remat)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="rlr compute dtype (params and Adam state stay float32)")
    p.add_argument("--attention", default="xla",
                   help="comma-separated rlr attention kernels (ModelConfig.attention: xla, "
                        "cudnn), one rlr row each beside the same peer row")
    p.add_argument("--chunk-size", type=int, default=256, help="time chunk of the LM-head log-probs")
    p.add_argument("--reference-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="storage dtype of the DPO reference params")
    p.add_argument("--minibatches", type=int, default=4, help="PPO minibatches a jitted update call")
    p.add_argument("--model-override", action="append", default=[], metavar="FIELD=VALUE",
                   help="a string field of rlr's ModelConfig, for rlr only")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s")
    p.add_argument("--skip-peer", action="store_true", help="do not run the torch peer")
    p.add_argument("--peer-grad-ckpt", action="store_true",
                   help="transformers gradient checkpointing in the peer")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every measurement in this process (default on a GPU: one subprocess each)")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="trace one more rlr call and print its TOP ops by time and the time by "
                        "op kind (benchmarks/op_profile.py); 0 = off")
    p.add_argument("--flops", action="store_true",
                   help="only trace each rlr step at remat none, dots and full and print its "
                        "executed / model FLOPs (no run, nothing allocated: any machine)")
    p.add_argument("--json", default=None, help="write the rows to this JSON file (after each row)")
    p.add_argument("--quick", action="store_true", help="tiny model, B=4, T=64 on a CPU: a smoke run")
    p.add_argument("--child", choices=("rlr", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--child-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.no_isolate = True
    for step in args.steps.split(","):
        if step not in STEPS:
            p.error(f"--steps: {step!r} is not one of {STEPS}")
    from rlr.models.config import ATTENTION_KERNELS

    for kernel in args.attention.split(","):
        if kernel not in ATTENTION_KERNELS:
            p.error(f"--attention: {kernel!r} is not one of {ATTENTION_KERNELS}")
    if not 0 < args.prompt_len < args.seq_len:
        p.error(f"--prompt-len {args.prompt_len} must be in (0, --seq-len {args.seq_len})")
    return args


def child_command(args, kind: str, model: str, step: str, rows=None) -> list[str]:
    """The command line of a subprocess that measures one (framework, model, step)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--models", model,
           "--steps", step, "--seq-len", str(args.seq_len), "--prompt-len", str(args.prompt_len),
           "--batch", str(args.batch), "--runs", str(args.runs), "--remat", args.remat,
           "--dtype", args.dtype, "--attention", args.attention,
           "--chunk-size", str(args.chunk_size),
           "--reference-dtype", args.reference_dtype, "--minibatches", str(args.minibatches),
           "--profile", str(args.profile)]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    for override in args.model_override:
        cmd += ["--model-override", override]
    if args.peer_grad_ckpt:
        cmd.append("--peer-grad-ckpt")
    if rows is not None:
        cmd += ["--child-rows", str(rows)]
    return cmd


def measure(args, kind: str, model: str, step: str, rows=None) -> dict:
    """One row, in this process or in a subprocess (whose last stdout line is RESULT <json>)."""
    if args.no_isolate:
        row = rlr_row(model, step, args) if kind == "rlr" else torch_row(model, step, args, rows)
        return add_rates(row, args)
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=os.environ.get(
        "XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92"))
    proc = subprocess.run(child_command(args, kind, model, step, rows), env=env,
                          capture_output=True, text=True)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not results:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(framework=kind, model=model, step=step,
                    error=f"exit {proc.returncode}: {' | '.join(tail)[:300]}")
    return json.loads(results[-1][len("RESULT "):])


def device_peak_tflops(args, device_kind: str) -> float:
    if args.peak_tflops:
        return args.peak_tflops
    for key, value in PEAK_TFLOPS.items():
        if key in device_kind:
            return value
    return float("nan")


def add_rates(row: dict, args) -> dict:
    """tokens/s and MFU of a measured row (MFU nan where the device's peak is unknown)."""
    if "seconds" not in row:
        return row
    shape = Shape(row["step"], row["rows"], row["seq_len"], args.prompt_len)
    config = rlr_model_config(row["model"], args)
    row["peak_tflops"] = device_peak_tflops(args, row["device"])
    row["tokens_per_s"] = shape.tokens / row["seconds"]
    row["mfu"] = step_flops(config, shape) / row["seconds"] / (row["peak_tflops"] * 1e12)
    if row.get("executed_flops"):
        row["flops_ratio"] = row["executed_flops"] / step_flops(config, shape)
    return row


def gib(b) -> str:
    return f"{b / GiB:6.2f}" if b else "     -"


def ratio(x) -> str:
    return f"{x:5.3f}" if x else "    -"


def print_table(rows: list[dict]) -> None:
    header = (f"{'step':<4} {'model':<13} {'attn':<5}| {'B':>3} {'|grad|':>8} {'ms/step':>8} "
              f"{'tok/s':>8} {'MFU':>5} {'FLx':>5} {'XLA':>6} {'est':>6} {'peak':>6} {'compile':>7} | "
              f"{'B':>3} {'ms/step':>8} {'tok/s':>8} {'MFU':>5} {'peak':>6} | {'speedup':>7}")
    devices = sorted({r["device"] for r in rows if "device" in r})
    print(f"\nrlr (left) vs torch + transformers eager (right) on {', '.join(devices)}; "
          "memory in GiB per device")
    print(header)
    print("-" * len(header))
    groups = {}
    for row in rows:
        groups.setdefault((row["step"], row["model"]), []).append(row)
    for (step, model), group in groups.items():
        h = next((row for row in group if row["framework"] == "torch"), None)
        for r in [row for row in group if row["framework"] == "rlr"] or [{}]:
            line = f"{step:<4} {model:<13} {r.get('attention', '-'):<5}| "
            if "seconds" in r:
                line += (f"{r['rows']:>3} {r['first_grad_norm']:8.4g} {r['seconds'] * 1e3:8.1f} "
                         f"{r['tokens_per_s']:8.0f} "
                         f"{r['mfu']:5.3f} {ratio(r.get('flops_ratio'))} {gib(r['xla_bytes'])} {gib(r['estimate_bytes'])} "
                         f"{gib(r['peak_bytes'])} {r['compile_s']:6.0f}s | ")
            else:
                line += f"{'rlr failed: ' + r.get('error', '?')[:60]:<72}| "
            if h and "seconds" in h:
                line += (f"{h['rows']:>3} {h['seconds'] * 1e3:8.1f} {h['tokens_per_s']:8.0f} "
                         f"{h['mfu']:5.3f} {gib(h['peak_bytes'])} | ")
                if "seconds" in r:
                    line += f"{r['tokens_per_s'] / h['tokens_per_s']:6.2f}x"
            elif h:
                line += f"torch failed: {h.get('error', '?')[:80]}"
            print(line)
    print("|grad| = the policy gradient norm of rlr's first call (initial params, equal across "
          "kernels within bf16); FLx = executed / model FLOPs (HFU = MFU x FLx); speedup = rlr tokens/s / torch tokens/s (each at its own "
          "largest B)")


def child_main(args) -> None:
    model, step = args.models, args.steps
    if args.child == "rlr":
        row = rlr_row(model, step, args)
    else:
        row = torch_row(model, step, args, args.child_rows)
    print("RESULT " + json.dumps(add_rates(row, args)), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.flops:
        print(f"T={args.seq_len} (prompt {args.prompt_len}), log-prob chunk {args.chunk_size}, "
              f"PPO minibatches {args.minibatches} (FLOPs of one), XLA attention")
        rows = [rlr_flops_row(model, step, remat, args) for model in args.models.split(",")
                for step in args.steps.split(",") for remat in ("none", "dots", "full")]
        print_flops_table(rows)
        return rows
    # The driver never touches the GPU itself: each measurement runs in its own process.
    print(f"T={args.seq_len} (prompt {args.prompt_len}), batch {args.batch}, remat {args.remat}, "
          f"attention {args.attention}, compute {args.dtype}, log-prob chunk {args.chunk_size}, "
          f"PPO minibatches {args.minibatches}, runs {args.runs}", flush=True)
    rows = []
    for model in args.models.split(","):
        for step in args.steps.split(","):
            rlr_rows = []
            for kernel in args.attention.split(","):
                r = measure(argparse.Namespace(**dict(vars(args), attention=kernel)), "rlr",
                            model, step)
                rlr_rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "ops"}), flush=True)
            rows += rlr_rows
            if not args.skip_peer:  # the peer starts at the largest B an rlr row ran
                start = max(r.get("rows", 0) for r in rlr_rows) or (
                    int(args.batch) if args.batch != "auto" else 8)
                h = measure(args, "torch", model, step, start)
                rows.append(h)
                print(json.dumps(h), flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(args=vars(args), rows=rows), f, indent=1)
    print_table(rows)
    for r in rows:
        if r["framework"] == "rlr":
            print_row_profile(r, args.profile, f"of rlr {r['step']} {r['model']} "
                              f"({r.get('attention')} attention, B={r.get('rows')}), one call")
    return rows


if __name__ == "__main__":
    main()

"""The matmul FLOPs a jitted program executes, counted on its jaxpr: recomputation included.

MFU divides *model* FLOPs (what the math needs: 6 N a trained token, PaLM App. B) by the step
time; the device also executes what the program recomputes (a rematerialised layer's forward,
the chunked LM head's logits in the backward pass). `matmul_flops` counts every dot_general of
a traced program, 2 x (output elements) x (contracted size), and multiplies a scan's body by
its length, so executed / model FLOPs is known before the program runs, on any machine, and
the hardware FLOPs utilisation a step needs for a given MFU is MFU x that ratio.

XLA's own cost analysis (`compiled.cost_analysis()`) cannot answer this: it counts a while
loop's body once, so a scanned model's layers count as one (checked on XLA:CPU: the SFT step
of the Qwen2.5-0.5B shape, B=2, read 4.91e11 FLOPs with 2 layers and 4.93e11 with 4).

    flops = matmul_flops(jax.jit(step).trace(*args).jaxpr)

Only matmuls count (elementwise ops, softmax and the optimizer update do not). A while loop's trip count is not in its jaxpr: it is an error (a fori_loop with
static bounds traces as a scan and counts). A cond counts its costliest branch. Fused kernels
that are not dot_generals (cuDNN attention's custom calls) do not count: trace the program with
XLA's attention to count them.
"""
from __future__ import annotations

import math

from jax.extend import core


def dot_flops(eqn) -> int:
    """2 x prod(output shape) x prod(contracting dims of the lhs) of one dot_general."""
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def matmul_flops(jaxpr) -> int:
    """Matmul FLOPs one run of `jaxpr` (a Jaxpr or ClosedJaxpr) executes: dot_generals, with a
    scan's body counted `length` times, a cond's costliest branch, and every other nested
    jaxpr (jit, remat, custom derivatives, shard_map) once. Raises ValueError on a while loop
    with matmuls in its body (its trip count is a runtime value)."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(matmul_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            if matmul_flops(eqn.params["body_jaxpr"]):
                raise ValueError(f"a while loop with matmuls ({eqn.source_info.name_stack}): its "
                                 "trip count is not static; count a program without one")
        else:
            total += sum(matmul_flops(j) for j in core.jaxprs_in_params(eqn.params))
    return total

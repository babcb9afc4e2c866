"""benchmarks/op_profile.py: a trace's op events summed by HLO op, on XLA:CPU and on a GPU-shaped
trace written by hand."""
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import op_profile  # noqa: E402

STEPS = 5


def matmul_loop(a, b):
    """STEPS matmuls in a while loop, then a sum: the dot dominates and runs STEPS times."""
    body = lambda i, x: jnp.tanh(x @ b)  # noqa: E731
    return jax.lax.fori_loop(0, STEPS, body, a).sum()


@pytest.fixture(scope="module")
def compiled():
    x = jnp.ones((384, 384), jnp.float32)
    program = jax.jit(matmul_loop).lower(x, x).compile()
    return program, (x, x)


def test_parse_hlo_names_module_opcodes_fusion_roots_and_sources(compiled):
    program, _ = compiled
    module, ops = op_profile.parse_hlo(program.as_text())
    assert module == "jit_matmul_loop"
    kinds = [op.kind for op in ops.values()]
    assert "while" in kinds
    dots = [op for op in ops.values() if "dot_general" in op.source]
    assert dots and all("root=dot" in op.kind or op.kind == "dot" for op in dots)
    assert all(op.shape.startswith("f32[384,384]") for op in dots)
    while_op = next(op for op in ops.values() if op.kind == "while")
    assert while_op.shape.startswith("(")  # a tuple type, matched to its closing bracket


def test_cpu_trace_counts_each_op_once_a_run_and_leaves_control_flow_out(compiled):
    program, args = compiled
    program(*args).block_until_ready()
    rows = op_profile.profile_ops(program, lambda: program(*args).block_until_ready(), runs=2)
    top = rows[0]
    assert "dot_general" in top["source"] and top["events_per_call"] == STEPS
    assert top["share"] > 0.5  # 5 x 2 * 384^3 FLOPs against a few elementwise ops
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9
    assert not any(r["kind"].startswith("while") for r in rows)
    assert all(r["busy"] == top["busy"] > 0 for r in rows)


def test_op_rows_merge_the_layers_of_an_unrolled_model_and_divide_by_runs():
    ops = {f"fusion.{i}": op_profile.HloOp(f"fusion.{i}", "fusion(kLoop, root=copy)", "f32[4]",
                                           f"jit(run)/layer_{i}/attn/copy") for i in range(3)}
    ops["while.1"] = op_profile.HloOp("while.1", "while", "(f32[4])", "jit(run)/while")
    ops["gemm"] = op_profile.HloOp("gemm", "custom-call(__cublas$gemm)", "bf16[8,8]", "mlp/dot")
    events = [("fusion.0", 1e6), ("fusion.1", 1e6), ("fusion.2", 2e6), ("fusion.0", 1e6),
              ("while.1", 50e6), ("gemm", 3e6), ("gemm", 3e6), ("unknown.7", 1e6)]
    rows = op_profile.op_rows(ops, events, runs=2, wall_s=0.02)
    by_kind = {r["kind"]: r for r in rows}
    copy = by_kind["fusion(kLoop, root=copy)"]
    assert copy["source"] == "jit(run)/layer_*/attn/copy" and copy["ops"] == 3
    assert copy["ms_per_call"] == pytest.approx(2.5) and copy["events_per_call"] == 2
    assert by_kind["custom-call(__cublas$gemm)"]["ms_per_call"] == pytest.approx(3.0)
    assert by_kind["?"]["ms_per_call"] == pytest.approx(0.5)  # an op the HLO text lacks
    assert "while" not in by_kind
    assert rows[0]["kind"] == "custom-call(__cublas$gemm)"
    assert copy["share"] == pytest.approx(5 / 12)
    assert copy["busy"] == pytest.approx(12e-3 / 0.02)  # 12 ms of ops in 20 ms of wall time
    assert [r["kind"] for r in op_profile.kind_rows(rows)][:2] == [
        "custom-call(__cublas$gemm)", "fusion(kLoop, root=copy)"]


GPU_TRACE = """
planes {
  id: 1 name: "/device:GPU:0"
  lines { id: 1 name: "Stream #13(Compute)" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 4000000
             stats { metadata_id: 1 str_value: "fusion.3" }
             stats { metadata_id: 2 str_value: "jit_run" } }
    events { metadata_id: 2 offset_ps: 5000000 duration_ps: 6000000
             stats { metadata_id: 1 str_value: "gemm.1" }
             stats { metadata_id: 2 str_value: "jit_run" } }
    events { metadata_id: 2 offset_ps: 12000000 duration_ps: 9000000
             stats { metadata_id: 1 str_value: "gemm.1" }
             stats { metadata_id: 2 str_value: "jit_other" } } }
  event_metadata { key: 1 value { id: 1 name: "loop_fusion_kernel" } }
  event_metadata { key: 2 value { id: 2 name: "sm90_xmma_gemm" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
  stat_metadata { key: 2 value { id: 2 name: "hlo_module" } }
}
planes {
  id: 2 name: "/host:CPU"
  lines { id: 1 name: "python" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 7000000
             stats { metadata_id: 1 str_value: "fusion.3" } } }
  event_metadata { key: 1 value { id: 1 name: "host_side" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
}
"""


def test_gpu_trace_reads_the_device_plane_and_this_module_only():
    profile = jax.profiler.ProfileData.from_text_proto(GPU_TRACE)
    events = op_profile._op_events(profile, "jit_run")
    assert sorted(events) == [("fusion.3", 4e3), ("gemm.1", 6e3)]  # ns; host and jit_other out

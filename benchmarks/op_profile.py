"""Where a compiled program's time goes, op by op: a trace of a few calls, summed by HLO op.

`profile_ops(compiled, call, runs)` traces `runs` calls of `call()` (which blocks until the
program is done) with jax.profiler, reads the trace back (jax.profiler.ProfileData) and sums the
duration of every event the trace ties to one of the program's HLO ops through its `hlo_op`
stat: GPU kernels on the device planes, thunks on XLA:CPU's host threads. The program's optimised
HLO (`compiled.as_text()`) gives each op its kind (opcode; a fusion's kind, backend kind and
root opcode; a custom call's target), output type and source (the JAX op path of its metadata).

- Control flow (while, conditional, call) is left out: its events enclose those of its body,
  which are counted.
- "busy" = summed op time / wall time of the calls. Below 1 on a GPU: the device waited for the
  host (launches, a while loop's condition read back every iteration). Above 1 on a CPU: ops
  ran on several threads at once.

    rows = profile_ops(compiled, lambda: jax.block_until_ready(compiled(*args)), runs=2)
    print_op_tables(rows, top=20)

Benchmarks call `profile_or_error` (a failed trace is reported in the row, not raised) and
`print_row_profile`.
"""
from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from typing import Callable, NamedTuple

CONTROL_FLOW = ("while", "conditional", "call")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = ")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+) \(.*\{\s*$")
_MODULE = re.compile(r"^HloModule (?P<name>[\w.\-]+)")
_LAYER = re.compile(r"layer_\d+")


class HloOp(NamedTuple):
    """One instruction of an optimised HLO module."""

    name: str  # the instruction name, as the trace's hlo_op stat gives it
    kind: str  # opcode, refined: fusion(kLoop, root=transpose), custom-call(__cublas$gemm)
    shape: str  # output type, e.g. bf16[256,1,896]{2,1,0}
    source: str  # metadata op_name: the JAX op path ("" when absent)


def _split_type(text: str) -> tuple[str, str]:
    """(type, rest) of "TYPE opcode(...)...": a tuple type is matched to its closing bracket."""
    if not text.startswith("("):
        head, _, rest = text.partition(" ")
        return head, rest
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[:i + 1], text[i + 1:].lstrip()
    return text, ""


def _attribute(line: str, pattern: str) -> str:
    match = re.search(pattern, line)
    return match.group(1) if match else ""


def parse_hlo(hlo_text: str) -> tuple[str, dict[str, HloOp]]:
    """(module name, {instruction name: HloOp}) of an HLO module's text (`compiled.as_text()`)."""
    module = ""
    roots = {}  # computation name -> opcode of its ROOT
    lines = []  # (instruction name, type, opcode, line)
    computation = None
    for line in hlo_text.splitlines():
        if match := _MODULE.match(line):
            module = match.group("name")
        elif match := _COMPUTATION.match(line):
            computation = match.group("name")
        elif match := _INSTRUCTION.match(line):
            type_, rest = _split_type(line[match.end():])
            opcode = rest.partition("(")[0]
            lines.append((match.group("name"), type_, opcode, line))
            if line.lstrip().startswith("ROOT") and computation is not None:
                roots[computation] = opcode
    ops = {}
    for name, type_, opcode, line in lines:
        detail = []
        if opcode == "fusion":
            detail = [_attribute(line, r"kind=(k\w+)"),
                      _attribute(line, r'"kind":"(__[^"]+)"')]
            root = roots.get(_attribute(line, r"calls=%?([\w.\-]+)"))
            detail.append(f"root={root}" if root else "")
        elif opcode == "custom-call":
            detail = [_attribute(line, r'custom_call_target="([^"]+)"')]
        detail = [d for d in detail if d]
        kind = f"{opcode}({', '.join(detail)})" if detail else opcode
        ops[name] = HloOp(name, kind, type_, _attribute(line, r'op_name="([^"]*)"'))
    return module, ops


def _op_events(profile, module: str) -> list[tuple[str, float]]:
    """(hlo_op, duration ns) of every op event of `module`: device planes when the trace has
    any, else the host's (XLA:CPU); a plane's "XLA Ops" line alone when it has one."""
    planes = [p for p in profile.planes if p.name.startswith("/device:")]
    if not planes:
        planes = [p for p in profile.planes if p.name.startswith("/host:CPU")]
    events = []
    for plane in planes:
        lines = list(plane.lines)
        lines = [line for line in lines if line.name == "XLA Ops"] or lines
        for line in lines:
            for event in line.events:
                stats = dict(event.stats)
                op = stats.get("hlo_op")
                if op and stats.get("hlo_module", module) == module:
                    events.append((str(op), float(event.duration_ns)))
    return events


def op_rows(ops: dict[str, HloOp], events, runs: int, wall_s: float) -> list[dict]:
    """Time by op, largest first. Ops of one kind, shape and source up to the layer index
    (layer_3 -> layer_*: one op a layer of an unrolled model) form one row; control flow is left
    out. A row: kind, shape, source, ops (how many it merges), ms a call, events a call, share
    of the summed op time, and `busy` (summed op time / wall time of the calls)."""
    total_ns, count, members = collections.Counter(), collections.Counter(), {}
    for op, duration in events:
        info = ops.get(op, HloOp(op, "?", "", ""))
        if info.kind.partition("(")[0] in CONTROL_FLOW:
            continue
        key = (info.kind, info.shape, _LAYER.sub("layer_*", info.source))
        total_ns[key] += duration
        count[key] += 1
        members.setdefault(key, set()).add(op)
    summed = sum(total_ns.values()) or 1.0
    busy = summed * 1e-9 / wall_s if wall_s else float("nan")
    return [dict(kind=kind, shape=shape, source=source, ops=len(members[kind, shape, source]),
                 ms_per_call=ns * 1e-6 / runs, events_per_call=count[kind, shape, source] / runs,
                 share=ns / summed, busy=busy)
            for (kind, shape, source), ns in total_ns.most_common()]


def profile_ops(compiled, call: Callable[[], object], runs: int = 2) -> list[dict]:
    """Trace `runs` calls of call() (blocking; it runs `compiled`) and return `op_rows`."""
    import jax

    module, ops = parse_hlo(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(runs):
            call()
        wall_s = time.perf_counter() - start
        jax.profiler.stop_trace()
        paths = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        if not paths:
            raise RuntimeError(f"jax.profiler wrote no *.xplane.pb under {trace_dir}")
        profile = jax.profiler.ProfileData.from_file(max(paths))
        events = _op_events(profile, module)
    return op_rows(ops, events, runs, wall_s)


def profile_or_error(compiled, call: Callable[[], object], runs: int = 1) -> dict:
    """{"ops": profile_ops(...)}, or {"ops_error": why} when tracing fails (no profiler
    library on the host, an unreadable trace): a diagnostic must not cost the measurement it
    follows."""
    try:
        return dict(ops=profile_ops(compiled, call, runs))
    except Exception as e:  # noqa: BLE001 - reported in the row, beside its measurement
        return dict(ops_error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def kind_rows(rows: list[dict]) -> list[dict]:
    """The op rows summed by kind, largest first."""
    ms, share = collections.Counter(), collections.Counter()
    for row in rows:
        ms[row["kind"]] += row["ms_per_call"]
        share[row["kind"]] += row["share"]
    return [dict(kind=k, ms_per_call=v, share=share[k]) for k, v in ms.most_common()]


def _clip(text: str, width: int) -> str:
    """text cut to `width` characters, keeping its end (the innermost op of a source path)."""
    return text if len(text) <= width else "..." + text[len(text) - width + 3:]


def print_row_profile(row: dict, top: int, title: str) -> None:
    """The op tables of a benchmark row that `profile_or_error` filled (nothing if it did not)."""
    if "ops_error" in row:
        print(f"\nop profile {title}: failed: {row['ops_error']}")
    elif row.get("ops") is not None:
        print_op_tables(row["ops"], top, title)


def print_op_tables(rows: list[dict], top: int = 20, title: str = "") -> None:
    """The `top` ops and the time by kind, as text tables."""
    if not rows:
        print(f"\nop profile {title}: the trace held no op of this program")
        return
    total = sum(r["ms_per_call"] for r in rows)
    print(f"\nop profile {title}: {total:.2f} ms of op time a call, busy {rows[0]['busy']:.2f} "
          f"(op time / wall time), {len(rows)} ops")
    print(f"{'ms/call':>9} {'share':>6} {'n/call':>7} {'ops':>4}  {'kind':<44} {'shape':<30} "
          "source")
    for r in rows[:top]:
        print(f"{r['ms_per_call']:9.3f} {100 * r['share']:5.1f}% {r['events_per_call']:7.0f} "
              f"{r['ops']:4d}  {_clip(r['kind'], 44):<44} {_clip(r['shape'], 30):<30} "
              f"{_clip(r['source'], 70)}")
    print(f"\n{'ms/call':>9} {'share':>6}  kind")
    for r in kind_rows(rows)[:top]:
        print(f"{r['ms_per_call']:9.3f} {100 * r['share']:5.1f}%  {r['kind']}")

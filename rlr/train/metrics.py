"""Run outputs the colabs read: WORKDIR/metrics.jsonl (one line a logged step: step, wall time,
every scalar), the same scalars in TensorBoard (WORKDIR/tb), WORKDIR/samples.jsonl (prompts,
responses, rewards); plus a progress bar and a per-phase wall-clock timer.

Only process 0 writes; the other processes may call the same methods (they do nothing).
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import numbers
import os
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE, SAMPLES_FILE, TB_DIR = "metrics.jsonl", "samples.jsonl", "tb"


def _host_value(x: Any) -> Any:
    """A jax array as numpy (for a replicated global array, this host's copy); others unchanged."""
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            x = x.addressable_data(0)  # metrics are replicated scalars: any shard is the value
        return np.asarray(jax.device_get(x))
    return x


def to_scalar(key: str, value: Any) -> float:
    """A Python float from a number, a numpy / jax scalar or a size-1 array; anything else is an
    error naming `key` (a metric is never dropped silently)."""
    value = _host_value(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())[()]
    if isinstance(value, (numbers.Number, np.number, np.bool_)) and not isinstance(value, complex):
        return float(value)
    shape = getattr(value, "shape", None)
    raise TypeError(f"metric {key!r}: expected a scalar, got {type(value).__name__}"
                    + (f" of shape {shape}" if shape is not None else ""))


def _json_default(x: Any) -> Any:
    """JSON encoding of arrays and numpy scalars in sample records."""
    x = _host_value(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def _finite_or_none(v: float) -> Optional[float]:
    """JSON has no NaN / inf: they are written as null (and kept as such in TensorBoard)."""
    return v if math.isfinite(v) else None


class MetricsWriter:
    """Appends metrics and samples of a run to WORKDIR; process 0 only.

    write(step, {"loss": x, ...}) -> one metrics.jsonl line
        {"step": step, "wall_time": seconds since this writer started, "loss": x, ...}
    and the same scalars to TensorBoard. write_samples(step, [record, ...]) -> one samples.jsonl
    line a record, with "step" added. NaN / inf become null in JSON.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.workdir = workdir
        self.active = jax.process_index() == 0
        self._start = time.time()
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, TB_DIR))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Log every scalar of `metrics` at `step`; returns the line written (as a dict)."""
        scalars = {key: to_scalar(key, value) for key, value in metrics.items()}
        line = {"step": int(step), "wall_time": time.time() - self._start}
        line.update({k: _finite_or_none(v) for k, v in scalars.items()})
        if not self.active:
            return line
        with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
            f.write(json.dumps(line) + "\n")
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, int(step))
            self._tb.flush()
        return line

    def write_samples(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Append each record (prompt, response, rewards, ...: JSON-able, arrays allowed) to
        samples.jsonl with its step."""
        if not self.active:
            return
        with open(os.path.join(self.workdir, SAMPLES_FILE), "a") as f:
            for record in records:
                f.write(json.dumps({"step": int(step), **record}, default=_json_default) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str) -> list[dict]:
    """Every record of a JSONL file (metrics.jsonl, samples.jsonl). A last line cut short (a run
    killed mid-write) is skipped with a warning; a bad line elsewhere is an error naming
    file and line."""
    with open(path) as f:
        lines = f.readlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: incomplete last line skipped", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
    return records


class Timer:
    """Wall-clock seconds per phase (rollout / scoring / update ...), accumulated until reset.

        with timer.phase("rollout"):
            rollout = jax.block_until_ready(sample(...))

    JAX dispatches asynchronously: end each timed block with a blocking call
    (jax.block_until_ready, a device_get), or the time lands in the next phase.
    """

    def __init__(self):
        self.totals: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def split(self, prefix: str = "time/") -> dict[str, float]:
        """{prefix+name: seconds} and {prefix+name+"_frac": share of the summed time}."""
        total = sum(self.totals.values())
        out = {f"{prefix}{name}": sec for name, sec in self.totals.items()}
        if total > 0:
            out.update({f"{prefix}{name}_frac": sec / total for name, sec in self.totals.items()})
        return out

    def reset(self) -> None:
        self.totals.clear()


class Progress:
    """A tqdm bar over steps showing a few chosen metrics; silent on processes other than 0.

        bar = Progress(total=num_steps, initial=start_step, keys=("loss", "reward"))
        bar.update(step, metrics)  # moves to `step`, shows metrics[k] for k in keys present
    """

    def __init__(self, total: int, initial: int = 0, keys: Sequence[str] = ("loss",),
                 desc: str = "train"):
        from tqdm.auto import tqdm

        self.keys = tuple(keys)
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                         disable=jax.process_index() != 0)

    def update(self, step: int, metrics: Optional[Mapping[str, Any]] = None) -> None:
        if metrics:
            shown = {k: f"{to_scalar(k, metrics[k]):.4g}" for k in self.keys if k in metrics}
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(int(step) - self._bar.n)

    def close(self) -> None:
        self._bar.close()

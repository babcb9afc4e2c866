"""Test setup: 8 simulated CPU devices, so every test exercises sharding."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's LLVM back end without its optimisations (jax_disable_most_optimizations: -O0, no
# expensive passes; the HLO passes, sharding and buffer assignment are unchanged, which
# tests/test_memory.py checks). The tests' programs are small, and compiling them takes more of
# the suite's time than running them: on a slow 2-core CPU it took 1107 s from a fresh clone,
# 1388 s with the optimisations on.
# Set in the environment, so the processes tests/test_launchers.py starts compile the same way.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (must come after XLA_FLAGS is set)

jax.config.update("jax_default_matmul_precision", "highest")
# Trainer tests rebuild the same jitted steps run after run: a persistent compilation cache
# turns each recompile of an identical program into a disk read (kept between sessions too).
# One folder a pytest-xdist worker: jax writes an entry without a lock, so a worker could read
# another's half-written file.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")),
    os.environ.get("PYTEST_XDIST_WORKER", "main")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def optimized_compiles():
    """XLA's back-end optimisations on for a module whose time goes into running its programs
    rather than compiling them (the demo's quick run: 177 s optimised, 216 s without)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def cudnn_on_cpu(monkeypatch):
    """jax.nn.dot_product_attention with XLA's kernel where cuDNN's is asked for (a CPU has none),
    so a model with ModelConfig.attention == "cudnn" runs everything of its path but the fused
    kernel. Yields the list of (implementation, is_causal) of every call traced."""
    calls = []
    xla_attention = jax.nn.dot_product_attention

    def stand_in(*args, implementation=None, **kwargs):
        calls.append((implementation, kwargs.get("is_causal", False)))
        return xla_attention(*args, implementation=None, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
    yield calls

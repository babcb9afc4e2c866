"""rlr: reinforcement learning of language models from rewards, in JAX."""
from setuptools import find_packages, setup

# The floors are the oldest versions `make test` passes on, all together (2026-12-06):
# - flax < 0.11.2 finds a mesh only in a `with mesh:` block, not in jax.set_mesh, so it drops
#   every nn.with_logical_constraint without a word; flax < 0.12.2 hands jax.checkpoint the
#   `concrete` argument jax 0.10 removed (nn.remat fails);
# - jax < 0.10 lacks jax.extend.core.jaxprs_in_params (benchmarks/flops.py, the tests); under
#   jaxlib 0.10.0 and 0.10.1, XLA:CPU's compiled peaks, to which tests/test_memory.py holds
#   rlr.parallel.memory's estimates, reach 1.9x the estimate (within 20% under 0.10.2), and
#   jax 0.10.2 itself accepts jaxlib 0.10.1, so jaxlib has its own floor;
# - orbax-checkpoint < 0.11.21 has no ArrayHandler(min_slice_bytes_for_replica_parallel=)
#   (rlr.train.checkpoint); optax < 0.2.5 no optax.tree.norm; gguf < 0.16 no
#   ReaderField.contents, and gguf < 0.13 calls ndarray.newbyteorder, gone in numpy 2;
# - these from 2026-12-07, each older release put ahead of the venv's copy on PYTHONPATH and run
#   with the tests that use the package: chex < 0.1.84 reads jax.core.Shape at import (which
#   jax 0.10 lacks); safetensors < 0.4.1 reads bfloat16 files as np.bfloat16, which numpy lacks
#   (rlr.models.hf_io); tensorflow-datasets 4.9.8 and 4.9.9 read FieldDescriptor.label, which
#   protobuf 7.36 lacks, and earlier ones stop on the missing gcsfs looking for dataset info on
#   GCS; tokenizers 0.13.2 and sentencepiece 0.1.98 are the oldest releases with Python 3.11
#   wheels, and pass. Every ml_collections release (0.1.0 on) and sympy from 1.5 pass: no floor.
CORE = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "flax>=0.12.2",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11.21",
    "chex>=0.1.84",
    "ml_collections",
    "numpy",
    "sentencepiece>=0.1.98",
    "tokenizers>=0.13.2",
    "safetensors>=0.4.1",
    "tensorflow-datasets>=4.9.10",
    "array_record",
    "sympy",
    "tensorboardX",
    "tqdm",
    "matplotlib",
    "gguf>=0.16",
]
EXTRAS = {
    # Parity tests build reference models with Hugging Face transformers on PyTorch (CPU).
    "test": ["pytest", "pytest-xdist", "hypothesis", "torch==2.13.0", "transformers", "nbclient", "nbformat", "ipykernel"],
    "hf": ["transformers"],  # checkpoint I/O itself needs only safetensors and tokenizers (CORE)
    "notebooks": ["jupyter", "nbclient", "nbformat", "ipykernel", "pandas"],
}

setup(
    name="rlr",
    version="0.1.0",
    description="Reinforcement learning of language models from rewards (PPO, DPO, ORM/PRM shaping) in JAX.",
    packages=find_packages(include=["rlr", "rlr.*"]),
    python_requires=">=3.11",  # tomllib (rlr.data.real_sets)
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["rlr=rlr.launch:main"]},
)

"""rlr: reinforcement learning of language models from rewards, in JAX."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax",
    "orbax-checkpoint",
    "chex",
    "ml_collections",
    "numpy",
    "sentencepiece",
    "tokenizers",
    "safetensors",
    "tensorflow-datasets",
    "array_record",
    "sympy",
    "tensorboardX",
    "tqdm",
    "matplotlib",
    "gguf",
]
EXTRAS = {
    # Parity tests build reference models with Hugging Face transformers on PyTorch (CPU).
    "test": ["pytest", "hypothesis", "torch==2.13.0", "transformers", "nbclient", "nbformat", "ipykernel"],
    "hf": ["safetensors", "tokenizers", "transformers"],
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

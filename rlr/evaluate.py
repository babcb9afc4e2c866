"""`rlr eval`: greedy and pass@k accuracy of a checkpoint on the real problem sets, by the verifier.

    rlr eval --checkpoint SOURCE [--sets gsm8k-eval,champ] [--cache DIR] [--limit N]
             [--num-samples N --k 1,4 --temperature 0.8] [--max-new-tokens 384]
             [--batch-size 8] [--out results.jsonl]

SOURCE is a GGUF file (rlr.models.gguf_io), a Hugging Face checkpoint directory (config.json +
safetensors + tokenizer.json; `rlr fetch` writes SmolLM2's as CACHE/smollm2-135m-instruct) or the
workdir of an rlr run (its exported params, model and tokenizer from its config.json).

Sets (files `rlr fetch` writes under CACHE, see rlr.data.real_sets): gsm8k-eval (the held-out
GSM8K originals), gsm8k-train-originals (the originals whose templates generate training
problems), gsm8k-all (all 100), champ (270), champ-numeric (CHAMP problems with a plain number
as answer), or a path to such a JSONL file.

Greedy accuracy: the share of problems whose temperature-0 response has the reference's final
answer (rlr.rewards.verifier.verify). pass@k: with n samples a problem of which c are correct,
the unbiased estimate 1 - C(n - c, k) / C(n, k), averaged over problems (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np

from rlr.data import real_sets

SETS = {
    "gsm8k-eval": ("gsm8k", "test.jsonl"),
    "gsm8k-all": ("gsm8k", "originals.jsonl"),
    "gsm8k-train-originals": ("gsm8k", "originals.jsonl"),
    "champ": ("champ", "problems.jsonl"),
    "champ-numeric": ("champ", "problems.jsonl"),
}
# The GSM-Symbolic set's own English instruction (its instruction.toml), shortened.
DEFAULT_TEMPLATE = ("Solve the following math problem step by step. Put your final answer in "
                    "\\boxed{}, for example: \\boxed{42}.\n\n{question}")


class Checkpoint(NamedTuple):
    """What generation needs: the decoder shape, its params and the tokenizer."""

    config: Any  # rlr.models.ModelConfig
    params: Any
    tokenizer: Any  # rlr.data.tokenizer.Tokenizer


def hf_dir_tokenizer(path: str):
    """rlr.data.tokenizer.load_tokenizer of a checkpoint directory, with the default system
    message its tokenizer_config.json names ("system_prompt", as `rlr fetch` writes it)."""
    from rlr.data.tokenizer import load_tokenizer

    config_file = os.path.join(path, "tokenizer_config.json")
    system_prompt = None
    if os.path.isfile(config_file):
        with open(config_file) as f:
            system_prompt = json.load(f).get("system_prompt")
    return load_tokenizer(path, system_prompt=system_prompt) if system_prompt else load_tokenizer(path)


def load_checkpoint(source: str, mesh: jax.sharding.Mesh) -> Checkpoint:
    """The Checkpoint of a GGUF file, a Hugging Face directory or an rlr run directory (see the
    module docstring), params sharded on `mesh`. Errors name the source."""
    from rlr.models import Transformer

    if os.path.isfile(source) and source.endswith(".gguf"):
        from rlr.models.gguf_io import load_gguf, load_gguf_tokenizer

        config, params = load_gguf(source, mesh)
        return Checkpoint(config, params, load_gguf_tokenizer(source))
    if os.path.isfile(os.path.join(source, "params_info.json")):
        import ml_collections

        from rlr.config import make_model_config
        from rlr.data.tokenizer import load_tokenizer
        from rlr.train.common import tokenizer_path
        from rlr.train.params_io import load_params

        with open(os.path.join(source, "config.json")) as f:
            run = ml_collections.ConfigDict(json.load(f))
        config = make_model_config(run.model)
        path = tokenizer_path(run)
        tokenizer = hf_dir_tokenizer(path) if os.path.isdir(path) else load_tokenizer(path)
        params = load_params(Transformer(config), source, mesh, jax.random.key(0), tokenizer)
        return Checkpoint(config, params, tokenizer)
    if os.path.isfile(os.path.join(source, "config.json")):
        from rlr.models.hf_io import load_hf_checkpoint

        config, params = load_hf_checkpoint(source, mesh)
        return Checkpoint(config, params, hf_dir_tokenizer(source))
    raise FileNotFoundError(f"--checkpoint {source}: expected a .gguf file, a Hugging Face checkpoint "
                            f"directory (config.json) or an rlr run directory (params_info.json)")


def load_set(name: str, cache: str, limit: Optional[int] = None) -> list[real_sets.Problem]:
    """The problems of set `name` (a key of SETS, or a JSONL path), the first `limit` only."""
    if name in SETS:
        if name.startswith("gsm8k-") and name != "gsm8k-eval":
            split = {"gsm8k-all": "all", "gsm8k-train-originals": "train"}[name]
            problems = real_sets.gsm8k_originals(cache, split)
        else:
            problems = real_sets.read_problems(os.path.join(cache, *SETS[name]))
            if name == "champ-numeric":
                numeric = {p.id for p in real_sets.champ_problems(os.path.join(cache, real_sets.CHAMP_FILE),
                                                                  numeric_only=True)}
                problems = [p for p in problems if p.id in numeric]
    elif os.path.isfile(name):
        problems = real_sets.read_problems(name)
    else:
        raise ValueError(f"--sets {name!r}: expected one of {sorted(SETS)} or a JSONL file")
    return problems[:limit]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct among n samples: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in 1..n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score(problems: Sequence[real_sets.Problem], responses: Sequence[Sequence[str]],
          ks: Sequence[int]) -> tuple[dict[str, float], list[list[bool]]]:
    """({"accuracy": share of problems whose first response is right, "pass@k": mean pass_at_k},
    per-problem correctness of every response), by rlr.rewards.verifier.verify."""
    from rlr.rewards.verifier import verify

    correct = [[verify(r, p.answer) > 0.5 for r in rs] for p, rs in zip(problems, responses)]
    metrics = {"accuracy": float(np.mean([c[0] for c in correct])) if correct else 0.0}
    for k in ks:
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(len(c), sum(c), k) for c in correct]))
    return metrics, correct


def evaluate(checkpoint: Checkpoint, problems: Sequence[real_sets.Problem], mesh, *,
             template: str = DEFAULT_TEMPLATE, num_samples: int = 1, temperature: float = 0.0,
             ks: Sequence[int] = (), max_new_tokens: int = 384, batch_size: int = 8,
             seed: int = 0) -> tuple[dict[str, float], list[dict]]:
    """(metrics, one record a problem: id, answer, responses, correct) of `checkpoint` on
    `problems`: num_samples responses a prompt at `temperature` (0: greedy), prompts
    the user message `template` ({question} replaced) in the tokenizer's chat format."""
    from rlr.models import Transformer
    from rlr.sampling import Sampler, SamplingConfig
    from rlr.train.common import generate_texts
    from rlr.train.sequences import prompt_text

    tok = checkpoint.tokenizer
    if temperature == 0.0 and num_samples > 1:
        raise ValueError("--num-samples > 1 needs --temperature > 0 (greedy samples are identical)")
    sampler = Sampler(Transformer(checkpoint.config), SamplingConfig(
        temperature=temperature, max_new_tokens=max_new_tokens, num_samples=num_samples,
        eos_ids=(tok.eos_id,), pad_id=tok.pad_id), mesh)
    prompts = [prompt_text(tok, p.question, template) for p in problems]
    start = time.time()
    responses = generate_texts(sampler, checkpoint.params, tok, prompts, jax.random.key(seed),
                               batch_size)
    metrics, correct = score(problems, responses, ks)
    metrics.update(num_problems=len(problems), wall_s=round(time.time() - start, 1))
    records = [{"id": p.id, "answer": p.answer, "responses": rs, "correct": c}
               for p, rs, c in zip(problems, responses, correct)]
    return metrics, records


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`rlr eval` (see the module docstring): prints one JSON line of metrics a set."""
    from rlr.fetch import DEFAULT_CACHE
    from rlr.parallel import make_mesh

    parser = argparse.ArgumentParser(prog="rlr eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help=".gguf file, HF directory or rlr run dir")
    parser.add_argument("--sets", default="gsm8k-eval", help=f"comma-separated: {sorted(SETS)} or files")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="the `rlr fetch` cache (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each set")
    parser.add_argument("--num-samples", type=int, default=1, help="responses a problem")
    parser.add_argument("--k", default="", help="comma-separated k of pass@k (<= num-samples)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts a generate call")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="user message; {question} is replaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSONL of every response and its verdict")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        mesh = make_mesh(data=-1)
        checkpoint = load_checkpoint(args.checkpoint, mesh)
        results = {}
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            problems = load_set(name, args.cache, args.limit)
            metrics, records = evaluate(
                checkpoint, problems, mesh, template=args.template, num_samples=args.num_samples,
                temperature=args.temperature, ks=ks, max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size, seed=args.seed)
            results[name] = metrics
            print(json.dumps({"set": name, "checkpoint": args.checkpoint, **metrics}), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    for record in records:
                        f.write(json.dumps({"set": name, **record}) + "\n")
    except (FileNotFoundError, ValueError, real_sets.RealSetError) as e:
        print(f"rlr eval: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

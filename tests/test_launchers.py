"""The launchers (launchers/*.sh) in dry-run mode: the exact commands and environments they
would start, and that the multi-process environment is the one
rlr.parallel.initialize_distributed reads. gcloud and nvidia-smi are stubs on PATH, so no test
can reach a cloud or depend on a GPU. Then a real two-process run on the CPU."""
import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from rlr.parallel import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = os.path.join(REPO, "launchers")
RLR_ARGS = ["--config", "experiments/sft.py", "--workdir", "runs/a b",
            "--config.data.prompt_template=Q: {question} A:"]


@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose gcloud and nvidia-smi fail loudly (exit 99) if a launcher calls them."""
    for tool in ("gcloud", "nvidia-smi"):
        stub = tmp_path / tool
        stub.write_text(f"#!/bin/sh\necho '{tool} was called' >&2\nexit 99\n")
        stub.chmod(0o755)
    return f"{tmp_path}:{os.environ['PATH']}"


def launch(stub_path, script, *args):
    env = dict(os.environ, PATH=stub_path, PYTHON="python3")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(["bash", os.path.join(LAUNCHERS, script), *args], env=env,
                          capture_output=True, text=True, timeout=30)


def parse_env_line(line):
    """'env A=1 B=2 cmd args [> log]' -> (env dict, command argv, log path or None)."""
    words = shlex.split(line)
    assert words[0] == "env"
    env, i = {}, 1
    while "=" in words[i] and not words[i].startswith("-"):
        key, _, value = words[i].partition("=")
        env[key] = value
        i += 1
    command, log = words[i:], None
    if ">" in command:
        log = command[command.index(">") + 1]
        command = command[:command.index(">")]
    return env, command, log


def test_gpu_multiprocess_dry_run_commands(stub_path):
    out = launch(stub_path, "gpu_multiprocess.sh", "--dry-run", "--num-processes", "3",
                 "--port", "23456", "--log-dir", "logs here", *RLR_ARGS)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        env, command, log = parse_env_line(line)
        assert env["RLR_DISTRIBUTED"] == "1"
        assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:23456"
        assert env["JAX_NUM_PROCESSES"] == "3" and env["JAX_PROCESS_ID"] == str(i)
        assert env["CUDA_VISIBLE_DEVICES"] == str(i)
        assert env["PYTHONPATH"].split(":")[0] == REPO
        assert "JAX_PLATFORMS" not in env
        assert command == ["python3", "-m", "rlr.launch", *RLR_ARGS]  # quoting survives
        assert log == (None if i == 0 else f"logs here/process_{i}.log")


def test_gpu_multiprocess_cpu_mode_and_errors(stub_path):
    out = launch(stub_path, "gpu_multiprocess.sh", "--dry-run", "--num-processes", "2",
                 "--cpu-devices", "4", *RLR_ARGS)
    assert out.returncode == 0, out.stderr
    env, _, _ = parse_env_line(out.stdout.splitlines()[1])
    assert env["JAX_PLATFORMS"] == "cpu" and "CUDA_VISIBLE_DEVICES" not in env
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:12355"  # the default port

    no_args = launch(stub_path, "gpu_multiprocess.sh", "--num-processes", "2")
    assert no_args.returncode == 2 and "no rlr arguments" in no_args.stderr
    bad = launch(stub_path, "gpu_multiprocess.sh", "--num-processes", "0", *RLR_ARGS)
    assert bad.returncode == 2 and "expected a number >= 1" in bad.stderr
    no_gpu = launch(stub_path, "gpu_multiprocess.sh", "--dry-run", *RLR_ARGS)  # stub nvidia-smi fails
    assert no_gpu.returncode == 2 and "lists no GPU" in no_gpu.stderr


def test_gpu_multiprocess_environment_is_what_initialize_distributed_reads(stub_path, monkeypatch):
    out = launch(stub_path, "gpu_multiprocess.sh", "--dry-run", "--num-processes", "4", *RLR_ARGS)
    env, _, _ = parse_env_line(out.stdout.splitlines()[2])
    calls = []
    monkeypatch.setattr(mesh_lib.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for key in ("RLR_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.setenv(key, env[key])
    assert mesh_lib.initialize_distributed() is True
    assert calls == [dict(coordinator_address="localhost:12355", num_processes=4, process_id=2)]


def test_local_dry_run(stub_path):
    out = launch(stub_path, "local.sh", "--dry-run", "--cpu-devices", "8", *RLR_ARGS)
    assert out.returncode == 0, out.stderr
    env, command, log = parse_env_line(out.stdout.strip())
    assert env == {"PYTHONPATH": env["PYTHONPATH"], "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert command == ["python3", "-m", "rlr.launch", *RLR_ARGS] and log is None
    assert launch(stub_path, "local.sh").returncode == 2


def test_tpu_vm_dry_run_runs_the_same_command_on_every_worker(stub_path):
    out = launch(stub_path, "tpu_vm.sh", "run", "rlr-v4", "--zone", "us-central2-b",
                 "--project", "p1", "--dry-run", "--", *RLR_ARGS)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout.strip())
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rlr-v4"]
    assert "--zone=us-central2-b" in words and "--project=p1" in words
    assert "--worker=all" in words
    remote = next(w for w in words if w.startswith("--command="))[len("--command="):]
    prefix = "cd ~/rlr && RLR_DISTRIBUTED=1 python3 -m rlr.launch "
    assert remote.startswith(prefix)
    assert shlex.split(remote[len(prefix):]) == RLR_ARGS

    detached = launch(stub_path, "tpu_vm.sh", "run", "rlr-v4", "--zone", "z", "--detach",
                      "--dry-run", "--", *RLR_ARGS)
    remote = shlex.split(detached.stdout.strip())[-1]
    assert "nohup python3 -m rlr.launch" in remote and "echo $! > ~/rlr_run.pid" in remote

    create = launch(stub_path, "tpu_vm.sh", "create", "rlr-v4", "--zone", "z", "--type", "v4-32",
                    "--spot", "--dry-run")
    assert shlex.split(create.stdout.strip()) == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "rlr-v4", "--zone=z",
        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
    delete = launch(stub_path, "tpu_vm.sh", "delete", "rlr-v4", "--zone", "z", "--dry-run")
    assert shlex.split(delete.stdout.strip())[-1] == "--quiet"


def test_tpu_vm_errors(stub_path):
    no_zone = launch(stub_path, "tpu_vm.sh", "delete", "rlr-v4", "--dry-run")
    assert no_zone.returncode == 2 and "--zone is required" in no_zone.stderr
    no_type = launch(stub_path, "tpu_vm.sh", "create", "rlr-v4", "--zone", "z", "--dry-run")
    assert no_type.returncode == 2 and "--type is required" in no_type.stderr
    no_args = launch(stub_path, "tpu_vm.sh", "run", "rlr-v4", "--zone", "z", "--dry-run")
    assert no_args.returncode == 2 and "no rlr arguments" in no_args.stderr
    unknown = launch(stub_path, "tpu_vm.sh", "resize", "rlr-v4", "--zone", "z")
    assert unknown.returncode == 2 and "unknown subcommand" in unknown.stderr


def free_port() -> int:
    """A TCP port no process on this host listens on now (the kernel's pick for port 0).

    A fixed port is shared by every suite running on the host: on 2026-12-07 two fresh clones
    tested at once, both coordinators served :23917, each process 0 registered with the other
    run's service, and both SFT stages aborted ("0 unexpectedly tried to connect with a
    different incarnation")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def run_two_processes(stub_path, tmp_path, stage: str, *rlr_args: str) -> str:
    """`rlr` over launchers/gpu_multiprocess.sh: 2 CPU processes x 2 simulated devices joined
    by jax.distributed (gloo) on a free port; returns the run folder tmp_path / stage."""
    env = dict(os.environ, PATH=stub_path, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    workdir = tmp_path / stage
    out = subprocess.run(
        ["bash", os.path.join(LAUNCHERS, "gpu_multiprocess.sh"), "--num-processes", "2",
         "--cpu-devices", "2", "--port", str(free_port()),
         "--log-dir", str(tmp_path / f"{stage}-logs"), *rlr_args, "--workdir", str(workdir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (stage, out.stderr[-3000:])
    assert "process 1 of 2, 4 devices" in (tmp_path / f"{stage}-logs" / "process_1.log").read_text()
    return workdir


def last_metrics(workdir) -> dict:
    """The metrics.jsonl records of the last step, merged (training and eval lines)."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]["step"]
    return {k: v for r in records if r["step"] == last for k, v in r.items()}


def test_two_process_pipeline_on_cpu(stub_path, tmp_path):
    """The reward-hacking pipeline's stages as real 2-process runs: SFT with its greedy eval,
    labelling the SFT policy's samples, an ORM, PPO with that ORM and its eval, and iterative
    DPO on pairs the ORM ranks. Every
    stage that generates or scores splits its rows between the processes and gathers them back
    (rlr.train.common.global_batches), PPO's rollout keeps each process's rows; process 0
    writes the files. 1.5-4 min on a 2-core machine. It is in the default suite because only a
    second process finds code that reads another process's devices: until 2026-12-04 every
    trainer died there (the memory-estimate log read the mesh's first device; the evals read
    whole batch-split arrays; PPO placed its key with device_put)."""
    tiny = ["--config.model.name=synthetic-1m", "--config.optim.warmup_steps=0"]
    sft = run_two_processes(stub_path, tmp_path, "sft", "--config", "experiments/sft.py", *tiny,
                            "--config.sft.num_steps=4", "--config.eval.every_steps=4",
                            "--config.eval.num_problems=8", "--config.eval.batch_size=8",
                            "--config.data.num_train=64", "--config.data.num_eval=8")
    metrics = last_metrics(sft)
    assert metrics["step"] == 4 and 0 <= metrics["eval/accuracy"] <= 1
    assert (sft / "checkpoints").is_dir() and (sft / "params_info.json").is_file()
    label = run_two_processes(stub_path, tmp_path, "label", "--config", "experiments/label.py",
                              *tiny, f"--config.label.policy_source={sft}",
                              "--config.label.num_problems=12", "--config.label.num_samples=2",
                              "--config.label.batch_size=8")
    records = [json.loads(line) for line in (label / "labelled.jsonl").read_text().splitlines()]
    assert len(records) == 12 * 2  # each problem's samples once: rows split, gathered, one writer
    orm = run_two_processes(stub_path, tmp_path, "orm", "--config", "experiments/orm.py", *tiny,
                            f"--config.rm.init_source={sft}", f"--config.rm.data_path={label}",
                            "--config.rm.num_steps=2", "--config.rm.batch_size=8",
                            "--config.eval.batch_size=8")
    assert "eval/accuracy" in last_metrics(orm)
    ppo = run_two_processes(stub_path, tmp_path, "ppo", "--config", "experiments/ppo.py:orm",
                            *tiny, f"--config.ppo.policy_source={sft}",
                            f"--config.rewards.orm_source={orm}", "--config.ppo.num_iterations=2",
                            "--config.ppo.prompts_per_iteration=8", "--config.sampling.num_samples=2",
                            "--config.eval.every_steps=2", "--config.eval.num_problems=8",
                            "--config.eval.batch_size=8")
    metrics = last_metrics(ppo)
    assert metrics["step"] == 2 and "eval/accuracy" in metrics and "orm/score_mean" in metrics
    dpo = run_two_processes(stub_path, tmp_path, "dpo", "--config", "experiments/iterative_dpo.py",
                            *tiny, f"--config.dpo.policy_source={sft}",
                            f"--config.dpo.rm_source={orm}", "--config.dpo.num_steps=2",
                            "--config.dpo.iterations=2", "--config.dpo.prompts_per_iteration=8",
                            "--config.dpo.num_samples=2", "--config.dpo.sample_batch_size=8",
                            "--config.dpo.batch_size=4", "--config.dpo.eval_pairs=4",
                            "--config.eval.every_steps=2", "--config.eval.num_problems=8",
                            "--config.eval.batch_size=8", "--config.data.num_train=64")
    metrics = last_metrics(dpo)
    assert metrics["step"] == 2 and "eval/accuracy" in metrics

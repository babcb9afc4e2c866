#!/usr/bin/env bash
# One host, one process per GPU, joined by jax.distributed into one mesh of all the GPUs.
#
#   launchers/gpu_multiprocess.sh --config experiments/ppo.py:prm --workdir runs/ppo-prm
#   launchers/gpu_multiprocess.sh --num-processes 4 --port 23456 --config ... --workdir ...
#   launchers/gpu_multiprocess.sh --dry-run --num-processes 2 --config ... --workdir ...
#
# Process i runs `python -m rlr.launch ARGS` with
#   CUDA_VISIBLE_DEVICES=i               (its own GPU)
#   RLR_DISTRIBUTED=1                    (rlr.parallel.initialize_distributed starts jax.distributed)
#   JAX_COORDINATOR_ADDRESS=HOST:PORT    (process 0 serves as the coordinator)
#   JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
# Process 0 prints to this terminal; process i > 0 to LOG_DIR/process_i.log. The script waits
# for all, passes SIGINT / SIGTERM on to every process (the trainers checkpoint on SIGTERM), and
# exits with the first non-zero status.
#
# Options (before the rlr arguments):
#   --num-processes N   processes (default: the GPUs `nvidia-smi -L` lists)
#   --port PORT         coordinator port on this host (default 12355)
#   --host HOST         coordinator address (default localhost)
#   --log-dir DIR       where process i > 0 writes its log (default ./launch_logs)
#   --cpu-devices K     no GPUs: each process runs on the CPU as K simulated devices (a test
#                       of the multi-process path on any machine; collectives go through gloo)
#   --dry-run           print each process's command and environment, run nothing
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NUM_PROCESSES=""
PORT=12355
HOST=localhost
LOG_DIR=launch_logs
CPU_DEVICES=""
DRY_RUN=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --num-processes) NUM_PROCESSES="${2:?--num-processes needs a number}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --host) HOST="${2:?--host needs an address}"; shift 2 ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a directory}"; shift 2 ;;
    --cpu-devices) CPU_DEVICES="${2:?--cpu-devices needs a number}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launchers/gpu_multiprocess.sh: no rlr arguments (expected --config experiments/NAME.py ...)" >&2
  exit 2
fi
if [[ -z "$NUM_PROCESSES" ]]; then
  if [[ -n "$CPU_DEVICES" ]]; then
    echo "launchers/gpu_multiprocess.sh: --cpu-devices needs --num-processes" >&2
    exit 2
  fi
  NUM_PROCESSES="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  if [[ "$NUM_PROCESSES" -lt 1 ]]; then
    echo "launchers/gpu_multiprocess.sh: nvidia-smi lists no GPU; pass --num-processes" >&2
    exit 2
  fi
fi
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
  echo "launchers/gpu_multiprocess.sh: --num-processes $NUM_PROCESSES: expected a number >= 1" >&2
  exit 2
fi

process_env() {  # the environment of process $1, one NAME=VALUE a word
  local i="$1"
  local env=("PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}" "RLR_DISTRIBUTED=1"
             "JAX_COORDINATOR_ADDRESS=$HOST:$PORT" "JAX_NUM_PROCESSES=$NUM_PROCESSES"
             "JAX_PROCESS_ID=$i")
  if [[ -n "$CPU_DEVICES" ]]; then
    env+=("JAX_PLATFORMS=cpu"
          "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$CPU_DEVICES")
  else
    env+=("CUDA_VISIBLE_DEVICES=$i")
  fi
  printf '%s\n' "${env[@]}"
}

COMMAND=("$PYTHON" -m rlr.launch "$@")

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    mapfile -t ENVIRONMENT < <(process_env "$i")
    printf 'env'; printf ' %q' "${ENVIRONMENT[@]}" "${COMMAND[@]}"
    if [[ "$i" -gt 0 ]]; then printf ' > %q' "$LOG_DIR/process_$i.log"; fi
    printf '\n'
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
stop_all() {
  trap - INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  mapfile -t ENVIRONMENT < <(process_env "$i")
  if [[ "$i" -eq 0 ]]; then
    env "${ENVIRONMENT[@]}" "${COMMAND[@]}" &
  else
    env "${ENVIRONMENT[@]}" "${COMMAND[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  PIDS+=("$!")
done

STATUS=0
for ((n = 0; n < NUM_PROCESSES; n++)); do
  code=0
  wait -n || code=$?  # the next process to end (or a signal, which stop_all has passed on)
  if [[ "$code" -ne 0 && "$STATUS" -eq 0 ]]; then
    STATUS=$code
    echo "launchers/gpu_multiprocess.sh: a process exited with status $code; stopping the" \
         "others (process i > 0 logs: $LOG_DIR/process_i.log)" >&2
    stop_all
  fi
done
exit "$STATUS"

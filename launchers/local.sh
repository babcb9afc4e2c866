#!/usr/bin/env bash
# One process on this machine: every local device (all GPUs, the TPU chips of one host, or
# the CPU) in one jax mesh.
#
#   launchers/local.sh --config experiments/sft.py --workdir runs/sft [--config.a.b=V ...]
#   launchers/local.sh --cpu-devices 8 --config experiments/ppo.py:prm --workdir runs/ppo
#   launchers/local.sh --dry-run --config experiments/dpo.py --workdir runs/dpo
#
# Options (before the rlr arguments):
#   --cpu-devices N  run on the CPU as N simulated devices (tries a mesh without accelerators)
#   --dry-run        print the command and its environment instead of running it
# Everything else goes to `python -m rlr.launch` (the `rlr` command). PYTHON picks the
# interpreter (default python3). The repository root is put on PYTHONPATH, so rlr and
# experiments/ import without an install.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
CPU_DEVICES=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --cpu-devices) CPU_DEVICES="${2:?--cpu-devices needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "launchers/local.sh: no rlr arguments (expected --config experiments/NAME.py ...)" >&2
  exit 2
fi

ENVIRONMENT=("PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}")
if [[ -n "$CPU_DEVICES" ]]; then
  ENVIRONMENT+=("JAX_PLATFORMS=cpu"
                "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$CPU_DEVICES")
fi
COMMAND=("$PYTHON" -m rlr.launch "$@")

if [[ "$DRY_RUN" == 1 ]]; then
  printf 'env'; printf ' %q' "${ENVIRONMENT[@]}" "${COMMAND[@]}"; printf '\n'
  exit 0
fi
exec env "${ENVIRONMENT[@]}" "${COMMAND[@]}"

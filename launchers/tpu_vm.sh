#!/usr/bin/env bash
# A Cloud TPU VM (one host or a pod slice of many): create it, copy this repository to every
# worker, run the same experiment on all workers at once (jax.distributed joins them into one
# mesh), follow it, stop it, delete the VM.
#
#   launchers/tpu_vm.sh create NAME --zone us-central2-b --type v4-32 [--version V] [--spot]
#   launchers/tpu_vm.sh setup  NAME --zone us-central2-b          # copy the repo, pip install
#   launchers/tpu_vm.sh run    NAME --zone us-central2-b [--detach] -- --config experiments/ppo.py:prm --workdir /mnt/runs/ppo
#   launchers/tpu_vm.sh logs   NAME --zone us-central2-b          # worker 0's log of a --detach run
#   launchers/tpu_vm.sh stop   NAME --zone us-central2-b          # SIGTERM: the trainers checkpoint, then exit
#   launchers/tpu_vm.sh delete NAME --zone us-central2-b
#
# Every subcommand takes --project P (default: gcloud's) and --dry-run (print the gcloud
# commands, run nothing). `run` executes on every worker (gcloud ... ssh --worker=all):
#     cd ~/rlr && RLR_DISTRIBUTED=1 python3 -m rlr.launch ARGS
# and rlr.parallel.initialize_distributed calls jax.distributed.initialize(), which finds the
# other workers of the slice by itself. --detach runs it under nohup (a dropped ssh session does
# not end training), with its output in ~/rlr_run.log and its pid in ~/rlr_run.pid on each
# worker. The workdir must be a path every worker sees (a bucket mounted with gcsfuse, or a
# Filestore share): checkpoints are written by all workers together.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR='~/rlr'
usage() { sed -n '2,22p' "$0"; }

if [[ $# -lt 2 ]]; then usage >&2; exit 2; fi
ACTION="$1"; NAME="$2"; shift 2
ZONE="${TPU_ZONE:-}"
PROJECT=""
TYPE=""
VERSION="tpu-ubuntu2204-base"
SPOT=0
DETACH=0
DRY_RUN=0
RLR_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --type) TYPE="${2:?--type needs an accelerator type, e.g. v4-32}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a runtime version}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; RLR_ARGS=("$@"); break ;;
    *) echo "launchers/tpu_vm.sh: unknown option $1 (rlr arguments go after --)" >&2; exit 2 ;;
  esac
done
if [[ -z "$ZONE" ]]; then
  echo "launchers/tpu_vm.sh: --zone is required (or set TPU_ZONE)" >&2
  exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then COMMON+=(--project="$PROJECT"); fi

run_or_print() {  # run "$@", or print it quoted under --dry-run
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER COMMAND: one shell command line on the given worker(s)
  run_or_print "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker="$1" --command="$2"
}

case "$ACTION" in
  create)
    if [[ -z "$TYPE" ]]; then
      echo "launchers/tpu_vm.sh create: --type is required (e.g. v4-8, v4-32, v5litepod-16)" >&2
      exit 2
    fi
    create=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type="$TYPE" --version="$VERSION")
    if [[ "$SPOT" == 1 ]]; then create+=(--spot); fi
    run_or_print "${create[@]}"
    ;;
  setup)
    # The tracked and untracked-but-not-ignored files of this checkout, as one archive.
    archive="${TMPDIR:-/tmp}/rlr-$NAME.tar.gz"
    if [[ "$DRY_RUN" == 1 ]]; then
      echo "# git ls-files -co --exclude-standard | tar -czf $archive -C $REPO -T -"
    else
      (cd "$REPO" && git ls-files -co --exclude-standard -z | tar -czf "$archive" --null -T -)
    fi
    run_or_print "${GCLOUD[@]}" scp "$archive" "$NAME:rlr.tar.gz" "${COMMON[@]}" --worker=all
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf ~/rlr.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
&& python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ."
    ;;
  run)
    if [[ ${#RLR_ARGS[@]} -eq 0 ]]; then
      echo "launchers/tpu_vm.sh run: no rlr arguments (expected -- --config experiments/NAME.py ...)" >&2
      exit 2
    fi
    quoted="$(printf ' %q' "${RLR_ARGS[@]}")"
    command="cd $REMOTE_DIR && RLR_DISTRIBUTED=1 python3 -m rlr.launch$quoted"
    if [[ "$DETACH" == 1 ]]; then
      command="cd $REMOTE_DIR && RLR_DISTRIBUTED=1 nohup python3 -m rlr.launch$quoted \
> ~/rlr_run.log 2>&1 < /dev/null & echo \$! > ~/rlr_run.pid"
    fi
    on_workers all "$command"
    ;;
  logs)
    on_workers 0 "tail -n 200 -f ~/rlr_run.log"
    ;;
  stop)
    on_workers all 'if [ -f ~/rlr_run.pid ]; then kill -TERM "$(cat ~/rlr_run.pid)"; fi'
    ;;
  delete)
    run_or_print "${GCLOUD[@]}" delete "$NAME" "${COMMON[@]}" --quiet
    ;;
  *)
    echo "launchers/tpu_vm.sh: unknown subcommand $ACTION" >&2
    usage >&2
    exit 2
    ;;
esac

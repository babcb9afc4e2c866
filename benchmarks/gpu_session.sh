#!/usr/bin/env bash
# The GPU measurements of issues 3 and 9 as one command for a short GPU loan (one call of at
# most 10 minutes): the most wanted rows first, each under its own time limit, every table and
# JSON written to $OUT as soon as it exists, so a limit that cuts a later part keeps the
# earlier ones. From this machine, with the device tool:
#
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0   # once, here
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# then paste the printed tables into benchmarks/RESULTS.md with the device, date and command.
# Parts (seconds of wall time each at most; BUDGET_S scales them down together):
#   1. train_1p5b  DPO step, Qwen2.5-1.5B shape, T=1024, XLA vs cuDNN attention, torch peer
#                  (issue 9's target: MFU >= 0.45 and >= 1.5x the peer)
#                  Parts 1, 2 and 4 also print each rlr row's op profile (--profile: the top
#                  ops by device time, benchmarks/op_profile.py), where that row's time goes.
#   2. generate    Qwen2.5-0.5B and 1.5B shapes at B=256, 256 new tokens, the token loop on
#                  per-layer weights (unstacked, the default) vs the scanned model, HF
#                  generate beside (issue 3's target: >= 74k tok/s, >= 40% of the roofline)
#   3. sampling    the pick of one token from logits [B, 151936] (B 64 and 256; plain, top-k,
#                  top-p) vs Hugging Face's logits warpers + torch.multinomial
#   4. train_0p5b  DPO and PPO steps, Qwen2.5-0.5B shape, XLA vs cuDNN, torch peer
#   5. decode_hlo  the optimised HLO of the 0.5B B=256 generation program (where decode time
#                  goes: copies of the KV cache, fusions a step), for reading offline
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rlr-gpu}
mkdir -p "$OUT"
if ! python3 -c "import ml_collections" 2>/dev/null; then
  pip install -q --no-index --no-deps --target /tmp/rlr-site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/rlr-site${PYTHONPATH:+:$PYTHONPATH}
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, '| flax', flax.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, print its table
  local name=$1 limit=$(( $2 * ${BUDGET_S:-540} / 540 )) start=$SECONDS
  shift 2
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  echo "== $name: exit $status after $(( SECONDS - start )) s (limit $limit s): $*"
  # the main table (the op profiles that follow it stay in the log)
  sed '/^op profile/,$d' "$OUT/$name.log" | grep -v "^{\|WARNING\|^I0\|^W0" | tail -15
}

part train_1p5b 190 python3 benchmarks/train_step.py --models qwen2.5-1.5b --steps dpo \
  --attention xla,cudnn --runs 3 --profile 20 --json "$OUT/train_1p5b.json"
part generate 190 python3 benchmarks/generate.py --batches 256 --decode unstacked,scanned \
  --runs 2 --hf-runs 1 --profile 20 --json "$OUT/generate.json"
part sampling 40 python3 benchmarks/sampling.py --json "$OUT/sampling.json"
part train_0p5b 90 python3 benchmarks/train_step.py --models qwen2.5-0.5b --steps dpo,ppo \
  --attention xla,cudnn --runs 3 --profile 20 --json "$OUT/train_0p5b.json"
part decode_hlo 30 env XLA_FLAGS="--xla_dump_to=$OUT/decode_hlo --xla_dump_hlo_as_text \
  --xla_dump_hlo_module_re=.*run.*" python3 benchmarks/generate.py --models qwen2.5-0.5b \
  --batches 256 --runs 1 --skip-hf
find "$OUT/decode_hlo" -type f ! -name '*after_optimizations.txt' -delete 2>/dev/null
find "$OUT/decode_hlo" -type d -empty -delete 2>/dev/null
ls -la "$OUT"

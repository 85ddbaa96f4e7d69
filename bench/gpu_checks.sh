#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, each step chosen by STEPS (default: all):
#   cuda-tests   tests/test_cuda.py (no host wait between training steps, fp16 with grad
#                scaling, GPU vs CPU prediction, the nccl+gloo backend) and
#                tests/test_device_decode.py (nvJPEG);
#   demo         `imageclf demo` end to end, timed (the first run a user makes);
#   leaderboard  bench_leaderboard.py's recipe (LB_LABEL, LB_RECIPE) on LB_DATA, one seed
#                after another (LB_SEEDS, default 0 1 2 3 4) while the next one still fits
#                before LB_DEADLINE seconds (default 300) have passed since the step began;
#   device       bench_device.py: resnet50 at 224, batch 128: ceiling, cold and warm epochs,
#                then the cold epoch with --decode device (nvJPEG), then --compile;
#   batch-predict  `predict MODEL DATA/val -o OUT` with a seeded random resnet18 at 224, batch
#                128, JPEGs decoded by Pillow (--decode cpu) and by nvJPEG (--decode device):
#                images/s of each, and whether their decisions agree.
# Each step has its own time limit and its results are copied out as soon as it ends, so a
# step that runs long costs only itself.
#
#   STEPS="cuda-tests demo" bash bench/gpu_checks.sh DATA [OUT]
#
# DATA: an Imagenette folder (train/, val/) for the device step, e.g. the 50 MiB copy that
# `python bench/bench_device.py --subset 250` makes in bench/work/subset-250 (unused by the
# other steps). LB_DATA: the leaderboard's data, e.g. the presized copy that
# `bench_leaderboard.py --widen 4:3 --export-presized DIR --presize 128` makes (92.8 MiB at
# JPEG q90: more than one device call carries, so send its folders over two calls).
# Set BENCH_COMMIT to the commit being measured: a lent machine's copy of .git can be stale.
# BENCH_ARGS are added to every bench_device.py call (a smoke run on a CPU: --device cpu
# --arch resnet18 --size 64 --presize 72 --bs 16 --warmup 1 --steps 2); EPOCHS sets the
# epochs (5).
set -uo pipefail
DATA=${1:?usage: gpu_checks.sh DATA [OUT]}
OUT=${2:-bench/results}
EPOCHS=${EPOCHS:-5}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  for f in bench/results/"$name".json; do [ -f "$f" ] && cp "$f" "$OUT/"; done
}

STEPS=${STEPS:-cuda-tests demo leaderboard device batch-predict}
want() { [[ " $STEPS " == *" $1 "* ]]; }

nvidia-smi -L || true
"$PY" -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, \
timm.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
if want cuda-tests; then
  step cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
      tests/test_device_decode.py
fi
if want demo; then
  demo_out=${DEMO_OUT:-$(mktemp -d)}  # DEMO_OUT: keep its data and run for a later command
  t0=$(date +%s%N)
  step demo 180 "$PY" -m imageclf demo --out "$demo_out/demo"
  echo "demo wall: $((($(date +%s%N) - t0) / 1000000)) ms" | tee -a "$OUT/demo.log"
fi
if want leaderboard; then
  : "${LB_DATA:?the leaderboard step needs LB_DATA}" "${LB_LABEL:?and LB_LABEL}"
  deadline=$((SECONDS + ${LB_DEADLINE:-300}))
  last=0
  for seed in ${LB_SEEDS:-0 1 2 3 4}; do
    left=$((deadline - SECONDS))
    if ((left < last + last / 5)); then
      echo "== leaderboard: seed $seed skipped, ${left}s left and a seed took ${last}s"
      break
    fi
    t0=$SECONDS
    step "leaderboard-$seed" "$left" "$PY" bench/bench_leaderboard.py --data "$LB_DATA" \
        --label "$LB_LABEL" ${LB_RECIPE:+--recipe "$LB_RECIPE"} --seeds "$seed"
    last=$((SECONDS - t0))
    cp bench/results/leaderboard.json "$OUT/" 2>/dev/null
  done
fi
if want device; then
  step device-cuda 150 "$PY" bench/bench_device.py --data "$DATA" --epochs "$EPOCHS" \
      --name device-cuda ${BENCH_ARGS:-}
  step device-cuda-nvjpeg 100 "$PY" bench/bench_device.py --data "$DATA" --epochs 2 \
      --decode device --name device-cuda-nvjpeg ${BENCH_ARGS:-}
  step device-cuda-compile 180 "$PY" bench/bench_device.py --data "$DATA" --epochs "$EPOCHS" \
      --compile --name device-cuda-compile ${BENCH_ARGS:-}
fi
if want batch-predict; then
  bp=$(mktemp -d)
  "$PY" -c "import sys; sys.path.insert(0, 'bench'); from common import random_resnet18; \
from pathlib import Path; random_resnet18(Path('$bp/model'), 224, 256)"
  for how in cpu device; do
    step "batch-predict-$how" 150 "$PY" -m imageclf predict "$bp/model" "$DATA/val" \
        -o "$bp/$how" --decode "$how" --bs 128 --json
  done
  "$PY" -c "import pyarrow.parquet as pq; a, b = (pq.read_table('$bp/' + h).to_pydict() \
for h in ('cpu', 'device')); same = sum(x == y for x, y in zip(a['decision'], b['decision'])); \
print(f'batch-predict: {same} of {len(a[\"decision\"])} decisions agree')" \
      | tee "$OUT/batch-predict-agree.log"
fi

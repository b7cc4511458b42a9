#!/usr/bin/env bash
# One-command GPU check (target: under 10 minutes on one H100-class GPU). Run from the repository root with the
# project installed:   bash infra/gpu_check.sh [OUT_DIR]
#   1. `crfgan bench train-step` GPU rows at 128³ and 256³, batch 4, the reference step sequence: CRF-GAN and HA-GAN
#      in fp32 (like for like, the published baseline) and with bf16 autocast + activation checkpointing (like for
#      like again), plus the labelled "CRF-GAN bf16+ckpt vs HA-GAN fp32" ratio.
#   2. A DDP smoke run of `crfgan train` on GPU workers (NCCL): 2 workers when the machine has 2 or more GPUs,
#      else 1 (NCCL refuses two ranks on one device), tiny config on the shipped scans, checkpoints and val_l1.
# Everything lands in OUT_DIR (default bench-results/gpu): the bench JSON, the logs, and the run folder.
set -euo pipefail
OUT=${1:-${OUT:-bench-results/gpu}}
mkdir -p "$OUT"
CRFGAN=${CRFGAN:-crfgan}
PY=${PYTHON:-python}
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_check: PyTorch sees no CUDA device" >&2
  exit 2
fi
echo "gpu_check: $NGPU GPU(s): $($PY -c "import torch; print(torch.cuda.get_device_name(0))")"

# 1. train-step bench (8 cases, each in a fresh process)
timeout 420 $CRFGAN bench train-step --device cuda --size 128,256 --batch 4 --iters 3 --variants reference \
  --amp bf16 --checkpointing --json "$OUT/train-step-gpu.json" 2>&1 | tee "$OUT/train-step-gpu.log"

# 2. DDP smoke run on GPU workers
WORKERS=$(( NGPU >= 2 ? 2 : 1 ))
[ "$WORKERS" -eq 1 ] && echo "gpu_check: one GPU only: the DDP smoke run uses 1 worker (2 need 2 GPUs)"
timeout 300 $CRFGAN preprocess --input crfgan/data/example_ct.nii.gz --input crfgan/data/FLAIR.nii.gz \
  --output "$OUT/shards" --config tiny data.val_fraction=0 2>&1 | tail -3
timeout 300 $CRFGAN train --data "$OUT/shards" --config tiny --no-mlflow --storage "$OUT/runs" --run-name ddp-smoke \
  train.use_gpu=true train.num_workers=$WORKERS train.iterations=40 train.log_every=10 train.checkpoint_every=20 \
  train.val_every=20 train.amp=bf16 2>&1 | tee "$OUT/ddp-smoke.log" | grep -E "^\[train\]|Error|error" || true
grep -q "\[train\] done: iteration 40" "$OUT/ddp-smoke.log" && echo "gpu_check: DDP smoke run OK ($WORKERS worker(s))" \
  || { echo "gpu_check: DDP smoke run FAILED, see $OUT/ddp-smoke.log" >&2; exit 1; }

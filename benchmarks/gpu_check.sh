#!/usr/bin/env bash
# GPU check: the paper profile's FG-NET path shrunk to two LOPO folds and two epochs on CUDA
# (ResNet-50 at 227 px, the official transforms and scheduler stepping, bf16 autocast,
# channels_last), on FG-NET-format synthetic faces at 256 px written in the real naming (no
# real data or pretrained weights are needed). Prints training throughput (img/s) per epoch
# and run, measured by the trainer over the training loop alone.
#   usage: benchmarks/gpu_check.sh [DEVICE]   (default cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${1:-cuda}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK/fgnet" <<'PY'
import sys
from ageest.data.synthetic import write_fgnet_like
write_fgnet_like(sys.argv[1], seed=0, size=256)
PY
"$PY" -m ageest run --dataset fgnet --data-dir "$WORK/fgnet" --protocol lopo --folds 0,1 \
    --val-fraction 0 --selection test_best_epoch_official --losses amr --seeds 42 \
    --model resnet50 --no-pretrained --optimizer adamw --lr 1e-3 --batch-size 64 --epochs 2 \
    --milestones 1 --lr-schedule official --image-size 227 --transforms paper --no-normalize \
    --device "$DEVICE" --amp bf16 --channels-last --num-workers 4 --workers 1 \
    --results-dir "$WORK/results" --no-aggregate
"$PY" - "$WORK/results" <<'PY'
import sys
from pathlib import Path
import pandas as pd
rows = []
for hist in sorted(Path(sys.argv[1]).glob("runs/*/fold-*/history.csv")):
    h = pd.read_csv(hist)
    for r in h.itertuples():
        rows.append((hist.parent.name, r.epoch, r.images_per_s, r.epoch_time_s))
        print(f"{hist.parent.name} epoch {r.epoch}: {r.images_per_s:.0f} img/s "
              f"(epoch {r.epoch_time_s:.1f} s)")
later = [r[2] for r in rows if r[1] > 1]  # epoch 1 includes cuDNN autotuning and warm-up
print(f"training throughput after warm-up: {sum(later) / max(1, len(later)):.0f} img/s "
      f"(mean of {len(later)} epochs)")
PY

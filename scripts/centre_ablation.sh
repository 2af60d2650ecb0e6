#!/usr/bin/env bash
# Medoid or centroid as the instance centre, on the demo's synthetic touching, bent and
# crescent-shaped cells (2D): for each data seed, the same images are prepared with each
# centre, trained with the demo's schedule, predicted and evaluated.
#
#     scripts/centre_ablation.sh OUT [SEED ...]      (default seeds: 0 1)
#
# Writes OUT/<centre><seed>.json (embedseg evaluate --json) and prints AP_dsb per image.
set -euo pipefail
out=${1:?usage: scripts/centre_ablation.sh OUT [SEED ...]}
shift
seeds=("${@:-0 1}")
mkdir -p "$out"
for seed in ${seeds[@]}; do
  data="$out/data$seed"
  rm -rf "$data"
  python -c "
from pathlib import Path
from embedseg_cli.demo import default_schedule, write_demo_data
from embedseg_cli.progress import NullProgress
write_demo_data(Path('$data'), default_schedule(2), $seed, NullProgress())"
  for centre in medoid centroid; do
    store="$out/$centre$seed.zarr"
    labels="$out/labels-$centre$seed"
    embedseg -q prepare "$data" --out "$store" --centre "$centre" --crop-size 64 \
      --voxel-size 1 1 1 --seed "$seed" --overwrite
    embedseg -q train "$store" --epochs 4 --steps-per-epoch 225 --batch-size 8 \
      --virtual-batch-multiplier 1 --lr 2e-3 --embedding-scale 64 --seed "$seed" --run centre
    embedseg -q predict "$data/test/images" --model "$store" --out "$labels" --overwrite
    embedseg evaluate "$labels" "$data/test/masks" --json > "$out/$centre$seed.json"
    python -c "
import json
rows = {round(r['threshold'], 2): r for r in json.load(open('$out/$centre$seed.json'))['per_image']}
print('seed $seed $centre', [round(rows[t]['ap_dsb'], 3) for t in (0.5, 0.6, 0.7, 0.8, 0.9)],
      'matched IoU', round(rows[0.5]['mean_matched_iou'], 3))"
  done
done

#!/usr/bin/env bash
# EP1 Dice of a training run's snapshots on its own fold (the learning curve of docs/training.md), plain and with
# the default inference-time pseudo-labelling. Usage: benchmarks/learning_curve.sh RUN_DIR DATASET DATA FOLD [evaluate args]
# e.g. benchmarks/learning_curve.sh runs/chaos_s1_fold0 chaos ../shared/data/chaos_t2spir 0
#      benchmarks/learning_curve.sh runs/mine_fold0 generic my_data 0 --label-map liver=1,spleen=6 --images series
set -euo pipefail
cd "$(dirname "$0")/.."
run="$1"; dataset="$2"; data="$3"; fold="$4"; shift 4
models=("untrained")
for f in $(ls "$run"/snapshots/model_*.pt | sort -t_ -k2 -n); do models+=("$f"); done
[ -f "$run/model.pt" ] && models+=("$run/model.pt")
for model in "${models[@]}"; do
  name=$(basename "$model" .pt)
  args=(--data "$data" --dataset "$dataset" --protocol ep1 --folds "$fold" --pseudo-label window --no-progress
        --out "$run/curve/$name")
  args+=(--model "$model")   # "untrained": the ImageNet network without few-shot training
  fewshot-monai evaluate "${args[@]}" "$@" > /dev/null 2>&1
  python - "$run/curve/$name/summary.json" "$name" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: plain {100 * s['plain']['dice_mean']:.1f}  window {100 * s['dice_mean']:.1f}", flush=True)
PY
done

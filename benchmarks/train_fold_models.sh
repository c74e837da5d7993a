#!/usr/bin/env bash
# Train the per-fold self-supervised models used by `fewshot-monai evaluate --model runs/models_<dataset>`:
# fold K's model never sees fold K's query and support scans. Each run checkpoints every 250 iterations and
# resumes when re-run; the final model is copied to runs/models_<dataset>/fold<K>_setting<S>.pt.
# Usage: benchmarks/train_fold_models.sh chaos|sabs|generic SETTING FOLD... [-- extra `fewshot-monai train` args]
# TAG=name keeps a variant apart: runs/<dataset>_s<S>_<name>_fold<K> and runs/models_<dataset>_<name>/, e.g.
#   TAG=25d benchmarks/train_fold_models.sh chaos 1 0 -- --iterations 1000 --set network.slice_context=1
# Your own folder (configs/train_generic_fold.yaml; setting 2 takes the label ids from EXCLUDE_LABELS):
#   benchmarks/train_fold_models.sh generic 1 0 1 2 3 4 -- --set data.root=my_data --set data.images=series
#   EXCLUDE_LABELS="[1,6]" benchmarks/train_fold_models.sh generic 2 0 -- --set data.root=my_data --set data.labels=masks
set -euo pipefail
cd "$(dirname "$0")/.."
dataset="$1"; setting="$2"; shift 2
folds=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do folds+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=("$@")
declare -A CONFIG=([chaos]=configs/train_chaos_fold.yaml [sabs]=configs/train_sabs_fold.yaml
                  [generic]=configs/train_generic_fold.yaml)
declare -A LABELS=([chaos]="[1,2,3,4]" [sabs]="[1,2,3,6]"    # setting 2: liver, kidneys, spleen slices dropped
                  [generic]="${EXCLUDE_LABELS:-}")
models="runs/models_${dataset}${TAG:+_$TAG}"
mkdir -p "$models"
for fold in "${folds[@]}"; do
  out="runs/${dataset}_s${setting}${TAG:+_$TAG}_fold${fold}"
  args=(--config "${CONFIG[$dataset]}" --fold "$fold" --out "$out" --no-progress)
  [ "$setting" = "2" ] && args+=(--set "data.exclude_labels=${LABELS[$dataset]}")
  [ -n "$(ls -A "$out/checkpoints" 2>/dev/null)" ] && args+=(--resume)   # a run that died before its first checkpoint starts over
  fewshot-monai train "${args[@]}" "${extra[@]}"
  cp "$out/model.pt" "$models/fold${fold}_setting${setting}.pt"
done

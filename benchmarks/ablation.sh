#!/usr/bin/env bash
# The accuracy ablation of docs/accuracy.md on one fold (choices are made on fold 0): each variant is one
# `fewshot-monai evaluate` run of the fold's queries, scored plain and with `window` pseudo-labelling in the same run
# (the variants `reference` and `self` use reference-guided pseudo-labels or query self-support instead of `window`).
# Usage: benchmarks/ablation.sh chaos|sabs FOLD PROTOCOL VARIANT... (variants below, joined with +: base prior1+adapt600)
# Needs runs/models_<dataset>/fold<k>_setting1.pt (benchmarks/train_fold_models.sh). Adapted networks are cached in
# runs/adapt_cache, so EP1 and EP2 runs of one variant fine-tune once.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}"
declare -A FOLDER=([chaos]=chaos_t2spir [sabs]=sabs_ct)
dataset="$1"; fold="$2"; protocol="$3"; shift 3
declare -A VARIANT=(
  [base]=""
  [prior05]="--inferer-option spatial_prior=0.5"
  [prior1]="--inferer-option spatial_prior=1"
  [prior2]="--inferer-option spatial_prior=2"
  [chunks5]="--n-chunks 5"
  [guard]="--inferer-option min_agreement=0.5"
  [regrange]="--z-range-from registration --registration-cache runs/regcache_${dataset}"
  [adapt300]="--adapt-iterations 300"
  [adapt600]="--adapt-iterations 600"
  [adapt600early]="--adapt-iterations 600 --adapt-option freeze=early"
  [adapt600head]="--adapt-iterations 600 --adapt-option freeze=backbone"
  [adapt1200]="--adapt-iterations 1200"
  [reference]="--pseudo-label reference"
  [self]="--pseudo-label self"
)
for variant in "$@"; do
  args=""
  for part in ${variant//+/ }; do   # "prior1+adapt600": both pieces together
    [ -n "${VARIANT[$part]+x}" ] || { echo "unknown variant $part" >&2; exit 2; }
    args="$args ${VARIANT[$part]}"
  done
  out="runs/ablation_${dataset}_f${fold}_${protocol}/${variant}"
  [ -f "$out/summary.json" ] && { echo "done: $out"; continue; }
  # shellcheck disable=SC2086
  fewshot-monai evaluate --data "$DATA/${FOLDER[$dataset]}" --dataset "$dataset" --protocol "$protocol" \
    --model "runs/models_${dataset}" --folds "$fold" --pseudo-label window --joint --no-progress \
    --adapt-cache runs/adapt_cache $args ${ABLATION_EXTRA:-} --out "$out"
done

#!/usr/bin/env bash
# The pseudo-labelling tables of docs/pseudo_labelling.md and docs/evaluation.md: 5 folds, 1-shot, setting 1, EP1 and
# EP2, plain vs a strategy (scored in the same run), with the registration baseline.
# Usage: benchmarks/evaluate_pseudo_labelling.sh DATASET MODEL STRATEGY [extra evaluate args]
#   DATASET chaos|sabs; MODEL "default" (zoo) or a .pt / per-fold folder (runs/models_chaos); STRATEGY window|slice
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}"
declare -A FOLDER=([chaos]=chaos_t2spir [sabs]=sabs_ct)
dataset="$1"; model="$2"; strategy="$3"; shift 3
tag=$( [ "$model" = "default" ] && echo default || basename "$model" .pt )
for protocol in ep1 ep2; do
  args=(--data "$DATA/${FOLDER[$dataset]}" --dataset "$dataset" --protocol "$protocol" --setting 1
        --folds 0,1,2,3,4 --shots 1 --pseudo-label "$strategy" --no-progress
        --out "runs/eval_${dataset}_${protocol}_s1_${tag}_${strategy}")
  [ "$model" != "default" ] && args+=(--model "$model")
  fewshot-monai evaluate "${args[@]}" "$@"
done

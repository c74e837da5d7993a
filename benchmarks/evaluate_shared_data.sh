#!/usr/bin/env bash
# Reproduce the "Measured on this machine" tables of docs/evaluation.md: the default model (training-free
# ImageNet Lite0 ALPNet) and the registration baseline, 5-fold, 1-shot, setting 1, EP1 and EP2, on the shared
# CHAOS-T2 and SABS copies. Outputs go to runs/ (git-ignored). Usage: benchmarks/evaluate_shared_data.sh [chaos|sabs]...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}"
declare -A FOLDER=([chaos]=chaos_t2spir [sabs]=sabs_ct)
datasets=("$@")
[ ${#datasets[@]} -eq 0 ] && datasets=(chaos sabs)
for dataset in "${datasets[@]}"; do
  for protocol in ep1 ep2; do
    fewshot-monai evaluate --data "$DATA/${FOLDER[$dataset]}" --dataset "$dataset" --protocol "$protocol" \
      --setting 1 --folds 0,1,2,3,4 --shots 1 --pseudo-label none --baseline registration \
      --out "runs/eval_${dataset}_${protocol}_s1"
  done
done

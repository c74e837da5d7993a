#!/usr/bin/env bash
# The self-supervision ablation of docs/accuracy.md ("Better self-supervision"): for each variant, train fold 0's
# model (benchmarks/train_fold_models.sh with TAG=<variant>) and score fold 0's queries with the chosen inference
# method (EP1, support adaptation 300, `window`, guard), into runs/ablation_<data>_f0_ep1/<variant>+adapt300+guard.
# Usage: benchmarks/selfsupervision_ablation.sh chaos|sabs VARIANT...   (variants: base seed1 25d lite1 lite2
#        lite1_25d lite2_25d it3000). Each run resumes; on this machine a variant takes 15-25 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset="$1"; shift
declare -A DATA=([chaos]=../shared/data/chaos_t2spir [sabs]=../shared/data/sabs_ct)
declare -A ARGS=(
  [base]="--iterations 1000"
  [seed1]="--iterations 1000 --set seed=1"
  [25d]="--iterations 1000 --set network.slice_context=1"
  [lite1]="--iterations 1000 --set network.encoder=lite1"
  [lite2]="--iterations 1000 --set network.encoder=lite2"
  [lite1_25d]="--iterations 1000 --set network.encoder=lite1 --set network.slice_context=1"
  [lite2_25d]="--iterations 1000 --set network.encoder=lite2 --set network.slice_context=1"
  [it3000]="--iterations 3000"
)
for variant in "$@"; do
  [ -n "${ARGS[$variant]:-}" ] || { echo "unknown variant $variant (known: ${!ARGS[*]})" >&2; exit 2; }
  tag=$([ "$variant" = base ] && echo "" || echo "$variant")
  models="runs/models_${dataset}${tag:+_$tag}"
  # shellcheck disable=SC2086
  TAG="$tag" benchmarks/train_fold_models.sh "$dataset" 1 0 -- ${ARGS[$variant]}
  name=$([ "$variant" = base ] && echo "adapt300+guard" || echo "${variant//_/+}+adapt300+guard")
  fewshot-monai evaluate --data "${DATA[$dataset]}" --dataset "$dataset" --protocol ep1 --model "$models" --folds 0 \
    --pseudo-label window --joint --no-progress --adapt-cache runs/adapt_cache --adapt-iterations 300 \
    --inferer-option min_agreement=0.5 --out "runs/ablation_${dataset}_f0_ep1/$name"
done

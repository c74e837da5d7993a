#!/usr/bin/env bash
# The headline figures of README.md and docs/accuracy.md: 5 folds, 1-shot, setting 1, EP1 and EP2, with the
# options chosen on fold 0 (docs/accuracy.md), the plain and joint predictions and the registration baseline
# scored in the same runs. Each run's summary.json is copied to docs/results/<dataset>_<protocol>/ and the README
# table is regenerated from those files (benchmarks/results_table.py).
# Usage: benchmarks/accuracy_5fold.sh chaos|sabs [ep1] [ep2]   (OUT=runs/final: the run folders' prefix)
# Needs the chosen fold models (below; benchmarks/train_fold_models.sh) and itk-elastix. The self-supervision
# recipe chosen on fold 0 (docs/accuracy.md, "Better self-supervision"), 1,000 iterations each:
#   CHAOS: 2.5D input        TAG=25d   benchmarks/train_fold_models.sh chaos 1 0 1 2 3 4 -- --iterations 1000 --set network.slice_context=1
#   SABS:  Lite1 encoder     TAG=lite1 benchmarks/train_fold_models.sh sabs 1 0 1 2 3 4 -- --iterations 1000 --set network.encoder=lite1
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}"
declare -A FOLDER=([chaos]=chaos_t2spir [sabs]=sabs_ct)
dataset="$1"; shift
protocols=("$@"); [ ${#protocols[@]} -eq 0 ] && protocols=(ep1 ep2)
# the options chosen on fold 0 of each data set (docs/accuracy.md); the pseudo-labelling guard: SABS fold 0 +2.5, CHAOS fold 0 neutral
CHOSEN=(--pseudo-label window --adapt-iterations "${ADAPT_ITERATIONS:-300}" --inferer-option min_agreement=0.5)
# session 10, chosen on fold 0 per data set (docs/accuracy.md "Session 10"): both add an ensemble of two support
# adaptations; CHAOS the atlas prior (the support label registered affinely onto each query tempers the
# foreground), SABS `keep_volume` (pseudo-labelling may move an organ but not grow it)
declare -A CHOSEN_FOR=([chaos]="--adapt-ensemble 2 --inferer-option atlas_prior=1"
                       [sabs]="--adapt-ensemble 2 --pseudo-label-option keep_volume=true")
declare -A MODELS=([chaos]=runs/models_chaos_25d [sabs]=runs/models_sabs_lite1)
# EP2: the network's range, each organ searched near the anchor organ's range (chosen on fold 0 in session 7)
EP2=(--z-range-from network --inferer-option range_anchor=auto)
OUT="${OUT:-runs/final}"
for protocol in "${protocols[@]}"; do
  out="${OUT}_${dataset}_${protocol}"
  read -r -a extra <<< "${CHOSEN_FOR[$dataset]}"
  [ "$protocol" = "ep2" ] && extra+=("${EP2[@]}")
  fewshot-monai evaluate --data "$DATA/${FOLDER[$dataset]}" --dataset "$dataset" --protocol "$protocol" \
    --setting 1 --folds 0,1,2,3,4 --shots 1 --model "${MODELS[$dataset]}" "${CHOSEN[@]}" "${extra[@]}" --joint \
    --baseline registration --registration-cache "runs/regcache_${dataset}" --adapt-cache runs/adapt_cache \
    --no-progress --out "$out"
  mkdir -p "docs/results/${dataset}_${protocol}"
  cp "$out/summary.json" "docs/results/${dataset}_${protocol}/summary.json"
done
python benchmarks/results_table.py --write

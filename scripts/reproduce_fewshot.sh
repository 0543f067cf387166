#!/usr/bin/env bash
# Few-shot learning (paper Sec. 3.3, App. E.3) with the authors' settings: every Omniglot preset and, when
# the pickles are present, both Mini-ImageNet presets, for penalty, approxgrad and rmd.
# Rows go to results/fewshot/runs.csv. Meant for a GPU: one Omniglot 5-way run is 5000
# meta-iterations at meta-batch 30 (hours on a CPU).
#   DATA_ROOT=../shared/data scripts/reproduce_fewshot.sh [extra Hydra overrides, e.g. seed=1]
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-../shared/data}
SOLVERS=${SOLVERS:-penalty,approxgrad,rmd}
RESULTS=${RESULTS:-results/fewshot}

omniglot="fewshot_omniglot_5w1s,fewshot_omniglot_5w5s,fewshot_omniglot_20w1s,fewshot_omniglot_20w5s"
bilevel-bench -m experiment="$omniglot" solver="$SOLVERS" data.root="$DATA_ROOT" \
  results_dir="$RESULTS" "$@"

if [ -f "$DATA_ROOT/miniimagenet/mini-imagenet-cache-train.pkl" ] ||
   [ -f "$DATA_ROOT/mini-imagenet-cache-train.pkl" ]; then
  # rmd differentiates through plain SGD steps: the presets' Adam rate 1e-3 is too small for it
  bilevel-bench -m experiment=fewshot_miniimagenet_5w1s,fewshot_miniimagenet_5w5s \
    solver=penalty,approxgrad data.root="$DATA_ROOT" results_dir="$RESULTS" "$@"
  bilevel-bench -m experiment=fewshot_miniimagenet_5w1s,fewshot_miniimagenet_5w5s \
    solver=rmd solver.lr_v=0.1 data.root="$DATA_ROOT" results_dir="$RESULTS" "$@"
else
  echo "Mini-ImageNet pickles not under $DATA_ROOT(/miniimagenet): skipping its presets" >&2
fi

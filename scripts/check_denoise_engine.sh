#!/usr/bin/env bash
# The small-scale denoising table's main rows again, with the batched engine: each setting as one
# batch of seeds 0-2 (runs=3), one after another on the CPU. Compares the engine with the rows
# of results/denoise/runs.csv, measured before it (same settings, one process per seed).
#   scripts/check_denoise_engine.sh [results_dir]   (default results/denoise/engine_check)
set -euo pipefail
OUT=${1:-results/denoise/engine_check}
# the preset's pre-training, retraining and baseline recipe as they were when these rows were
# measured (the preset has since taken the authors' Adam 1e-4 and 500 baseline epochs)
C=(experiment=denoise_mnist_small data.root=../shared/data task.eval_every=50 runs=3 "results_dir=$OUT"
   task.pretrain_lr=0.001 task.retrain_lr=0.001 task.baseline_epochs=null)
bilevel-bench "${C[@]}" solver=penalty solver.T=5 solver.lr_u=0.3 solver.lam0=1 task.epochs=30
bilevel-bench "${C[@]}" solver=penalty task.epochs=30
bilevel-bench "${C[@]}" solver=rmd task.epochs=30
bilevel-bench "${C[@]}" solver=approxgrad task.epochs=30
bilevel-bench "${C[@]}" solver=alternating task.epochs=30
for fit in noisy val clean+val; do
    bilevel-bench "${C[@]}" solver=erm task.fit_on=$fit task.epochs=100 solver.lr_v=0.001
done
bilevel-bench-report table "$OUT/runs.csv" --metric test_acc
bilevel-bench-report table "$OUT/runs.csv" --metric retrain_test_acc

#!/usr/bin/env bash
# Reduced-budget Omniglot 5-way 1-shot runs for penalty, approxgrad and rmd on a CPU
# (rows appended to results/fewshot/runs.csv). The authors' budget is
# experiment=fewshot_omniglot_5w1s (5000 meta-iterations, meta-batch 30, 15 queries);
# here: 100 meta-iterations, meta-batch 4, 5 training queries per class, and meta-test on
# 100 episodes with the authors' 15 queries and 100 Adam steps.
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-../shared/data}
for solver in penalty approxgrad rmd; do
  nice -n 10 bilevel-bench experiment=fewshot_omniglot_5w1s solver=$solver device=cpu \
    data.root="$DATA_ROOT" task.iters=100 task.eval_every=100 task.meta_batch=4 \
    task.queries=5 task.eval_queries=15 task.eval_episodes=100 results_dir=results/fewshot "$@"
done

#!/usr/bin/env bash
# Why RMD fell below its starting accuracy on Omniglot 5w1s (issue 12): short CPU runs that vary
# one setting at a time (the encoder's step lr_u, the unrolled head step lr_v, the heads' initial
# scale), 40 meta-iterations at meta-batch 4, 2 seeds per setting. Results: results/fewshot/README.md
#   scripts/probe_fewshot_rmd.sh [RESULTS_DIR]      (default results/fewshot/rmd_probe)
set -euo pipefail
out=${1:-results/fewshot/rmd_probe}
C=(experiment=fewshot_omniglot_5w1s data.root=../shared/data device=cpu task.iters=40
   task.eval_every=20 task.meta_batch=4 task.queries=5 task.eval_queries=15 task.eval_episodes=100
   runs=2 progress=false "results_dir=$out")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
bilevel-bench "${C[@]}" solver=penalty solver.lr_u=0.01
bilevel-bench "${C[@]}" solver=rmd solver.lr_u=0.01
bilevel-bench "${C[@]}" solver=rmd solver.lr_u=0.01 solver.lr_v=1.0
bilevel-bench "${C[@]}" solver=rmd solver.lr_u=0.01 solver.lr_v=0.01
bilevel-bench "${C[@]}" solver=rmd solver.lr_u=0.01 task.head_init_std=1.0
bilevel-bench "${C[@]}" solver=rmd solver.lr_u=0.001
bilevel-bench "${C[@]}" solver=penalty solver.lr_u=0.001

#!/usr/bin/env bash
# The paper's results that run on a CPU, then results/PAPER.md (scripts/paper_page.sh):
#   d11      App. D.1.1 (Franceschi et al.'s setting): penalty (the paper's T = 20), rmd,
#            approxgrad and the Val-Only / Train+Val / Oracle baselines, 5 seeds each (runs=5)
#   figs     Figs. 1-2: the four synthetic problems, T = 1, 5, 10, 20 trials, 40001 iterations
#   table4   Table 4: seconds per 10,000 upper iterations, single runs, one process per method
#            and T, 3 seeds (SEEDS=...)
#   scripts/reproduce_paper_cpu.sh [d11|figs|table4|all]   (default all; EXTRA="..." overrides)
# table4 times things: run it alone on an idle machine.
set -euo pipefail
what=${1:-all}
read -r -a EXTRA <<< "${EXTRA:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [[ $what == d11 || $what == all ]]; then
    D=(experiment=denoise_mnist_small data.root=../shared/data runs=5 task.eval_every=500
       results_dir=results/paper/d11 device=cpu progress=false "${EXTRA[@]}")
    for solver in penalty rmd approxgrad; do bilevel-bench "${D[@]}" solver=$solver; done
    for baseline in val_only train_val oracle; do bilevel-bench "${D[@]}" baseline=$baseline; done
fi
if [[ $what == figs || $what == all ]]; then
    scripts/reproduce_synthetic.sh results/synthetic_paper launcher=joblib hydra.launcher.n_jobs=2 \
        device=cpu progress=false "${EXTRA[@]}"
fi
if [[ $what == table4 || $what == all ]]; then
    # single runs (runs=1), one process per method and T; SEEDS="0,1,2" by default
    for solver in alternating rmd approxgrad penalty; do
        for T in 1 5 10; do
            extra=()  # ApproxGrad: T2 = T and lr_p = 1e-4, as in the authors' synthetic code
            [[ $solver == approxgrad ]] && extra=("solver.T2=$T" solver.lr_q=0.0001)
            bilevel-bench -m experiment=synthetic_paper solver=$solver "solver.T=$T" task.iters=10000 \
                task.eval_every=10000 dataset=smd20,smd21,smd23,smd24 "seed=${SEEDS:-0,1,2}" \
                device=cpu progress=false results_dir=results/paper/table4 "${extra[@]}" "${EXTRA[@]}"
        done
    done
fi
scripts/paper_page.sh

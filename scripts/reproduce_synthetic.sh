#!/usr/bin/env bash
# The paper's synthetic convergence study (Figs. 2-3): 4 problems x T in {1,5,10} x 20 trials for
# Alternating (the authors' "GD"), RMD, ApproxGrad and Penalty, at the authors' settings
# (experiment=synthetic_paper), then the table and the convergence plots.
#   scripts/reproduce_synthetic.sh [results_dir] [extra hydra overrides...]
# The 20 trials of a setting run as one batch (runs=20: one process, one row per trial).
# Long on a CPU (40001 upper steps per run); use launcher=joblib / slurm to spread it out.
set -euo pipefail
out=${1:-results/synthetic_paper}
shift || true
common=(experiment=synthetic_paper dataset=smd20,smd21,smd23,smd24 solver.T=1,5,10 runs=20
        "results_dir=$out" "$@")
bilevel-bench -m solver=penalty,rmd,alternating "${common[@]}"
for T in 1 5 10; do  # ApproxGrad: lr_p = 1e-4 and T2 = T as in the authors' synthetic code
  bilevel-bench -m solver=approxgrad solver.T2=$T solver.lr_q=0.0001 "${common[@]/solver.T=1,5,10/solver.T=$T}"
done
bilevel-bench-report table "$out/runs.csv" --metric upper_error --by dataset,solver.T --out "$out/table"
bilevel-bench-report plot "$out/runs.csv" --metric upper_error --out "$out/convergence.png"

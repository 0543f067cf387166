#!/usr/bin/env bash
# The paper's synthetic convergence study (its Figs. 1-2 and 7): 4 problems x T in {1,5,10} x 20
# trials for Alternating (the authors' "GD"), RMD, ApproxGrad and Penalty, at the authors' settings
# (experiment=synthetic_paper), then the table and the convergence plots.
#   scripts/reproduce_synthetic.sh [results_dir] [extra hydra overrides...]
# The 20 trials of a setting run as one batch (runs=20: one process, one row per trial).
# Long on a CPU (40001 upper steps per run); use launcher=joblib / slurm to spread it out.
# MODERN=1 adds the solvers after the paper (bome f2sa vpbgd soba stocbio amigo aid_cg) on the
# same grid: the preset's lr_u / lr_v and T, their other keys from configs/tuned/synthetic.yaml.
set -euo pipefail
out=${1:-results/synthetic_paper}
shift || true
common=(experiment=synthetic_paper dataset=smd20,smd21,smd23,smd24 solver.T=1,5,10 runs=20
        "results_dir=$out" "$@")
bilevel-bench -m solver=penalty,rmd,alternating "${common[@]}"
for T in 1 5 10; do  # ApproxGrad: lr_p = 1e-4 and T2 = T as in the authors' synthetic code
  bilevel-bench -m solver=approxgrad solver.T2=$T solver.lr_q=0.0001 "${common[@]/solver.T=1,5,10/solver.T=$T}"
done
if [[ "${MODERN:-0}" == 1 ]]; then
  bilevel-bench -m solver=bome,f2sa,vpbgd,soba,stocbio,amigo,aid_cg "${common[@]}"
fi
bilevel-bench-report table "$out/runs.csv" --metric upper_error --by dataset,solver.T --out "$out/table"
# the paper's style: every trial thin, the mean over trials thick; one figure per problem
bilevel-bench-report plot "$out/runs.csv" --metric upper_error --x step --trials --out "$out/convergence.png"

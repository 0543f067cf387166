#!/usr/bin/env bash
# A short untargeted MNIST poisoning run of every later solver, in results/poison/modern: the
# setting of scripts/measure_poison_cpu.sh (60 poisons, 100 upper iterations, 500-step pre- and
# retraining), seeds 0-2 as one batch (runs=3), with penalty at its own settings for reference.
# Not tuned: every solver takes the penalty run's
# steps (configs/tuned/poison.yaml: T = 20, Adam, lr_u = 0.1, lr_v = 1e-3), the implicit ones
# T2 = 20 iterations of their linear solve, F2SA's penalised copy lr_v, V-PBGD's gamma ramp half
# the run. So this shows that each method runs and moves the poisons, not how well it can do.
#   scripts/measure_poison_modern.sh [OUT [OVERRIDE...]]   (default results/poison/modern)
# SOLVERS="f2sa bome" limits it to those solvers.
set -euo pipefail
out=${1:-results/poison/modern}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(experiment=poison_untargeted data.root=../shared/data device=cpu progress=false
        task.iters=100 task.eval_every=20 task.pretrain.steps=500 task.pretrain.lr=0.01
        task.retrain.steps=500 task.retrain.lr=0.01 runs=3 "results_dir=$out"
        solver.T=20 solver.lr_u=0.1 solver.lr_v=0.001 solver.optimizer_u=adam
        solver.optimizer_v=adam "${@:2}")
extra_of() {
    case $1 in
        f2sa) echo 'solver.lr_penalised=${solver.lr_v}' ;;
        vpbgd) echo "solver.gamma_ramp_steps=50" ;;
        stocbio | amigo | aid_cg) echo "solver.T2=20" ;;
    esac
}
for solver in ${SOLVERS:-penalty bome f2sa vpbgd soba stocbio amigo aid_cg}; do
    # exit code 1: a run diverged or failed, and its row says so; 2 (a config error) stops here
    # shellcheck disable=SC2046
    bilevel-bench "${common[@]}" solver=$solver $(extra_of $solver) || [[ $? == 1 ]]
done
python scripts/summarize_poison.py "$out/runs.csv" > "$out/summary.md"

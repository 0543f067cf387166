#!/usr/bin/env bash
# A short few-shot run of every later solver on generated data (dataset=fake_fewshot: 20
# training and 10 held-out classes, each a random pattern plus noise), in
# results/fewshot/modern: 5-way 1-shot, a small conv-4 (16 channels), 100 meta-iterations of 4
# tasks, meta-test on 100 held-out episodes, seeds 0-2 as one batch (runs=3), with penalty at
# its own settings for reference. Not tuned: every
# solver takes the penalty run's steps (configs/tuned/fewshot.yaml: T = 20, lr_u = lr_v = 1e-2,
# Adam on the encoder), the implicit ones T2 = 20. bome, soba and vpbgd move the heads once per
# meta-iteration, so they refuse fresh heads (task.reset_lower=true, the default): their refusal
# is kept in refused/SOLVER.txt, and they run with the heads carried over
# (task.reset_lower=false).
#   scripts/measure_fewshot_modern.sh [OUT [OVERRIDE...]]   (default results/fewshot/modern)
# SOLVERS="f2sa bome" limits it to those solvers.
set -euo pipefail
out=${1:-results/fewshot/modern}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
common=(task=fewshot dataset=fake_fewshot model.channels=16 device=cpu progress=false
        task.ways=5 task.shots=1 task.queries=5 task.meta_batch=4 task.iters=100
        task.eval_every=50 task.eval_episodes=100 task.eval_queries=5 task.eval_steps=50
        task.eval_chunk=50 runs=3 "results_dir=$out" solver.T=20 solver.lr_u=0.01
        solver.lr_v=0.01 solver.optimizer_u=adam "${@:2}")
extra_of() {
    case $1 in
        f2sa) echo 'solver.lr_penalised=${solver.lr_v}' ;;
        stocbio | amigo | aid_cg) echo "solver.T2=20" ;;
        bome | soba | vpbgd) echo "task.reset_lower=false" ;;
    esac
}
mkdir -p "$out/refused"
for solver in ${SOLVERS:-penalty bome f2sa vpbgd soba stocbio amigo aid_cg}; do
    if [[ $(extra_of "$solver") == task.reset_lower=false ]]; then
        # the command a user would type first: it must stop with a clear error and no row
        refused=$out/refused/$solver.txt
        if bilevel-bench "${common[@]}" "solver=$solver" 2> "$refused"; then
            echo "solver=$solver ran with fresh heads; it should refuse them" >&2
            exit 1
        fi
        # the message as the user sees it, less the machine's path to its traceback
        sed -i 's/ (traceback in [^)]*)$//' "$refused"
    fi
    # exit code 1: a run diverged or failed, and its row says so; 2 (a config error) stops here
    # shellcheck disable=SC2046
    bilevel-bench "${common[@]}" "solver=$solver" $(extra_of "$solver") || [[ $? == 1 ]]
done
bilevel-bench-report table "$out/runs.csv" --metric test_acc --out "$out/test_acc" > /dev/null

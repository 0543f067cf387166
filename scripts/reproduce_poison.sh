#!/usr/bin/env bash
# Paper section "data poisoning" with the authors' settings (paper.md 3.4): 5000 upper iterations
# and 10001-step retraining per run; meant for a GPU (add device=cuda). Extra arguments are passed
# to every command, e.g.  scripts/reproduce_poison.sh data.root=/data results_dir=results/poison_full
# fmd is left out: dv/du of 60 MNIST poisons has 47,040 x 7,840 entries (about 4.4 GB, and 47,040
# Jacobian-vector products per lower step); it refuses above solver.max_jacobian_mb.
set -euo pipefail
BILEVEL_BENCH=${BILEVEL_BENCH:-bilevel-bench}

# untargeted MNIST: number of poisons swept over 1%..6% of the 1000 training points
$BILEVEL_BENCH -m experiment=poison_untargeted solver=penalty,approxgrad,rmd,alternating \
  task.num_poisons=10,20,30,40,50,60 seed=0,1,2 "$@"

# targeted 8 -> 3 MNIST
$BILEVEL_BENCH -m experiment=poison_targeted solver=penalty,approxgrad seed=0,1,2 "$@"

# clean-label dog-fish: one target per run (the seed picks it); needs the Koh & Liang npz under
# data.root/dogfish/ (or dataset.path=...) and torchvision's InceptionV3 weights
$BILEVEL_BENCH -m experiment=poison_clean_label solver=penalty seed="$(seq -s, 0 49)" "$@"

#!/usr/bin/env bash
# Data poisoning (paper Sec. 3.4) with the authors' settings (App. D.2): 5000 upper iterations
# and 10001-step retraining per run; meant for a GPU (add device=cuda). Extra arguments are passed
# to every command, e.g.  scripts/reproduce_poison.sh data.root=/data results_dir=results/poison_full
# Each command computes its seeds as one batch (runs=K from seed=0: seeds 0..K-1, one row each);
# a run of a batch gives what the single run of its seed gives, and the rows' runtime_s is the
# whole batch's.
# fmd is left out: dv/du of 60 MNIST poisons has 47,040 x 7,840 entries (about 4.4 GB per run, and
# 47,040 Jacobian-vector products per lower step); it refuses above solver.max_jacobian_mb.
set -euo pipefail
BILEVEL_BENCH=${BILEVEL_BENCH:-bilevel-bench}

# untargeted MNIST: number of poisons swept over 1%..6% of the 1000 training points
$BILEVEL_BENCH -m experiment=poison_untargeted solver=penalty,approxgrad,rmd,alternating \
  task.num_poisons=10,20,30,40,50,60 runs=3 "$@"

# targeted 8 -> 3 MNIST
$BILEVEL_BENCH -m experiment=poison_targeted solver=penalty,approxgrad runs=3 "$@"

# clean-label dog-fish: one target per run (the seed picks it), 50 runs; needs the Koh & Liang
# npz under data.root/dogfish/ (or dataset.path=...) and torchvision's InceptionV3 weights
$BILEVEL_BENCH experiment=poison_clean_label solver=penalty runs=50 "$@"

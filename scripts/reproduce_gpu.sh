#!/usr/bin/env bash
# Everything issue 15 measures on one GPU, in order, within a time budget:
#   1. the GPU tests (tests/test_gpu.py: capture = eager, no host sync, runs=K on CUDA);
#   2. scripts/bench_engine.py on CUDA;
#   3. scripts/bench_step.py: the MNIST CNN penalty lower step with capture off/on x precision
#      fp32/tf32/bf16, single run and runs=8 (after 4, step_table: every paper solver on both
#      CNNs, captured);
#   4. timed 2-epoch penalty runs of the paper's MNIST setting per precision (the 100-epoch cost
#      is extrapolated from their curves: curve.csv time_s per epoch);
#   5. as many paper-table runs as fit: Table 2 (MNIST 25% then 50% noise: penalty, approxgrad,
#      rmd, then the baselines oracle, val_only, train_val; runs=5), Table 3 (Omniglot 5w1s,
#      5w5s, 20w1s, 20w5s: penalty, approxgrad, rmd), Table 5 (MNIST poisoning, untargeted at
#      1%..6% and targeted: penalty, approxgrad; label flips come with every row; runs=5).
#
#   scripts/reproduce_gpu.sh OUT_DIR [BUDGET_MINUTES]          (default budget: 9 minutes)
#   DRY_RUN=1 scripts/reproduce_gpu.sh /tmp/x 60                (print the plan, run nothing)
#
# Each step is started only if its estimated cost fits in what is left of the budget, and is
# stopped (SIGINT) when the budget runs out; a skipped step's command goes to
# OUT_DIR/remaining.sh, so the next GPU session knows exactly what is left. A paper-table run
# gets max_train_minutes=min(TABLE_MINUTES, what fits), at least MIN_TABLE_MINUTES; its rows
# say the upper steps (epochs) reached. Rows, logs and CSVs go to OUT_DIR:
#   reproduce_gpu.log (the plan and each step's exit code and seconds), env.txt, tests/,
#   bench/*.csv, speed/, table2/, table3/, table5/ (runs.csv + configs.jsonl + run folders),
#   logs/<step>.log, remaining.sh.
# Results to commit go under results/<task>/gpu/ (see the README, "GPU runs").
#
# Environment:
#   ARCHIVE=FILE     also pack OUT_DIR into FILE (.tar.gz, outside OUT_DIR) after every step: the
#                    device tool returns at most 8 files, so use ARCHIVE=$OUT/gpu_results.tar.gz
#   PYTHON=python3   the Python that has torch
#   DATA=.data       data.root (scripts/prepare_gpu_carry.sh fills .data/ and .whl/)
#   DEVICE=cuda:0    TABLE_MINUTES=10   MIN_TABLE_MINUTES=2
#   STEPS=tests,bench_engine,bench_step,speed,step_table,table2,table3,table5
#                    the groups to run, in this order (e.g. STEPS=tests,bench_step,speed)
#   RESUME_FROM=DIR  a previous OUT_DIR (or a folder of committed table2/ table3/ table5/ rows):
#                    its runs.csv rows are copied first, so finished runs are skipped
# Hydra and omegaconf are not on the GPU image: when `import hydra` fails, the wheels in .whl/
# are installed into a private folder put on PYTHONPATH (nothing is fetched).
set -uo pipefail  # no -e: a failed step is logged and the next one still runs

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [BUDGET_MINUTES]" >&2
    exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
BUDGET_MINUTES=${2:-9}
if ! [[ "$BUDGET_MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "BUDGET_MINUTES=$BUDGET_MINUTES: give the budget in minutes, e.g. 9 or 8.5" >&2
    exit 2
fi
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-$REPO/.data}
DEVICE=${DEVICE:-cuda:0}
TABLE_MINUTES=${TABLE_MINUTES:-10}
MIN_TABLE_MINUTES=${MIN_TABLE_MINUTES:-2}
STEPS=${STEPS:-tests,bench_engine,bench_step,speed,step_table,table2,table3,table5}
ARCHIVE=${ARCHIVE:-}
cd "$REPO" || exit 2

budget_s=$(awk -v m="$BUDGET_MINUTES" 'BEGIN { printf "%d", m * 60 }')
started=$(date +%s)
virtual_elapsed=0  # DRY_RUN: the estimated seconds of the steps planned so far
mkdir -p "$OUT/logs"
{
    echo "# Steps of reproduce_gpu.sh that did not fit its budget, one command each. Run them from the"
    echo "# repo root with PYTHONPATH set as reproduce_gpu.sh sets it, or rerun reproduce_gpu.sh with"
    echo "# RESUME_FROM=<this folder> (finished runs are skipped)."
} > "$OUT/remaining.sh"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/reproduce_gpu.log"; }

elapsed() {
    if ((DRY_RUN)); then echo "$virtual_elapsed"; else echo $(($(date +%s) - started)); fi
}

left() { echo $((budget_s - $(elapsed))); }

pack() {  # the device tool returns few files: one archive of everything, refreshed per step
    [[ -z "$ARCHIVE" ]] && return 0
    ((DRY_RUN)) && return 0
    tar -czf "$ARCHIVE.partial" -C "$OUT" . && mv "$ARCHIVE.partial" "$ARCHIVE"
    cp "$OUT/reproduce_gpu.log" "$(dirname "$ARCHIVE")/" 2>/dev/null || true
}

quoted() { printf '%q ' "$@"; }

# step NAME SECONDS COMMAND...: run COMMAND if SECONDS (its estimated cost) fit in the budget
step() {
    local name=$1 cost=$2
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < cost)); then
        log "SKIP $name: needs about ${cost}s, ${remaining}s left"
        echo "$(quoted "$@")" >> "$OUT/remaining.sh"
        return 0
    fi
    log "RUN  $name (${remaining}s left): $(quoted "$@")"
    if ((DRY_RUN)); then
        virtual_elapsed=$((virtual_elapsed + cost))
        return 0
    fi
    local t0 rc
    t0=$(date +%s)
    timeout --signal=INT --kill-after=30 "$remaining" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    log "DONE $name: exit $rc after $(($(date +%s) - t0))s"
    pack
}

# the longest max_train_minutes (in half minutes) that fits with OVERHEAD seconds beside it,
# capped at TABLE_MINUTES; empty when less than MIN_TABLE_MINUTES fits
table_minutes() {
    awk -v left="$(left)" -v overhead="$1" -v cap="$TABLE_MINUTES" -v floor="$MIN_TABLE_MINUTES" \
        'BEGIN { m = int(2 * (left - overhead) / 60) / 2; if (m > cap) m = cap;
                 if (m >= floor) print m }'
}

BENCH=("$PYTHON" -m bilevel_bench.cli)

# table_run TABLE NAME OVERHEAD OVERRIDES...: one paper-table computation (runs=K in one process)
table_run() {
    local table=$1 name=$2 overhead=$3
    shift 3
    local minutes
    minutes=$(table_minutes "$overhead")
    local command=("${BENCH[@]}" "$@" "device=$DEVICE" "data.root=$DATA" "results_dir=$OUT/$table"
        "progress=false" "hydra.run.dir=$OUT/$table/runs/$name")
    if [[ -z "$minutes" ]]; then
        log "SKIP $table/$name: under ${MIN_TABLE_MINUTES} min of training fits"
        echo "$(quoted "${command[@]}" "max_train_minutes=$TABLE_MINUTES")" >> "$OUT/remaining.sh"
        return 0
    fi
    step "$table-$name" "$(awk -v m="$minutes" -v o="$overhead" 'BEGIN { printf "%d", m * 60 + o }')" \
        "${command[@]}" "max_train_minutes=$minutes"
}

GROUPS_KNOWN="tests bench_engine bench_step speed step_table table2 table3 table5"
for group in ${STEPS//,/ }; do
    if [[ " $GROUPS_KNOWN " != *" $group "* ]]; then
        echo "STEPS=$STEPS: no group '$group'; the groups are: $GROUPS_KNOWN" >&2
        exit 2
    fi
done
log "reproduce_gpu.sh: budget ${BUDGET_MINUTES} min, out $OUT, steps $STEPS, dry run $DRY_RUN"

# --- set-up: Hydra from the carried wheels, the repo on the path ----------------------------------
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BILEVEL_BENCH_CACHE=${BILEVEL_BENCH_CACHE:-/tmp/bilevel-bench-cache}
if ((DRY_RUN)); then
    log "would install .whl/*.whl into /tmp/bilevel-bench-site when hydra is missing"
elif ! "$PYTHON" -c "import hydra, omegaconf" 2> /dev/null; then
    site=/tmp/bilevel-bench-site
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$REPO"/.whl/*.whl; then
        log "FAILED to install the wheels in .whl/ (run scripts/prepare_gpu_carry.sh and carry .whl)"
        exit 1
    fi
    export PYTHONPATH="$site:$PYTHONPATH"
fi
if ! ((DRY_RUN)); then
    {
        date -u
        nvidia-smi 2>&1 | head -15
        "$PYTHON" -c "import torch, hydra; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU'); \
print('hydra', hydra.__version__)"
        git -C "$REPO" rev-parse HEAD 2>&1
        git -C "$REPO" status --short 2>&1 | head -40
    } > "$OUT/env.txt" 2>&1
fi
if [[ -n "${RESUME_FROM:-}" ]]; then
    for table in table2 table3 table5 speed; do
        for file in runs.csv configs.jsonl; do
            if [[ -f "$RESUME_FROM/$table/$file" && ! -f "$OUT/$table/$file" ]]; then
                mkdir -p "$OUT/$table" && cp "$RESUME_FROM/$table/$file" "$OUT/$table/$file"
            fi
        done
    done
    log "rows of finished runs copied from $RESUME_FROM (those runs are skipped)"
fi

# --- the groups of steps (STEPS names them, in the order they run) -----------------------------
group_tests() {  # 1. the GPU tests (a hung test is stopped after 120 s where pytest-timeout is)
    mkdir -p "$OUT/tests"
    local limit=()
    if ((DRY_RUN)) || "$PYTHON" -c "import pytest_timeout" 2> /dev/null; then
        limit=(--timeout=120)
    fi
    step tests 240 "$PYTHON" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider "${limit[@]}" \
        --junitxml="$OUT/tests/junit.xml"
}

group_bench_engine() {  # 2. the engine benchmark on CUDA
    mkdir -p "$OUT/bench"
    step bench_engine 120 "$PYTHON" scripts/bench_engine.py --device "$DEVICE" --runs 1 8 \
        --repeats 5 --pairs 10 --out "$OUT/bench/engine_cuda.csv"
}

group_bench_step() {  # 3. one lower step: capture x precision, single run and runs=8 (one process)
    mkdir -p "$OUT/bench"
    step bench_step 180 "$PYTHON" scripts/bench_step.py --device "$DEVICE" --models mnist_cnn \
        --solvers penalty --repeats 20 --runs 1 8 --capture off on --precision fp32 tf32 bf16 \
        --out "$OUT/bench/step_penalty_grid.csv"
}

group_speed() {  # 4. the paper's MNIST penalty run, 2 epochs per precision (extrapolated to 100)
    local precision
    for precision in fp32 tf32 bf16; do
        step "speed_$precision" 150 "${BENCH[@]}" experiment=denoise_mnist solver=penalty \
            solver.nu0=1e-6 task.epochs=2 "precision=$precision" "device=$DEVICE" \
            "data.root=$DATA" "results_dir=$OUT/speed" progress=false \
            "hydra.run.dir=$OUT/speed/runs/penalty_$precision"
    done
}

group_step_table() {  # every paper solver on both CNNs, captured (the step-cost table)
    mkdir -p "$OUT/bench"
    step step_all_solvers 120 "$PYTHON" scripts/bench_step.py --device "$DEVICE" --repeats 10 \
        --capture on --out "$OUT/bench/step_all_on_fp32.csv"
}

group_table2() {  # MNIST denoising, 25% then 50% noise, 5 seeds per computation
    local noise tag baseline
    for noise in 0.25 0.5; do
        tag=mnist$(awk -v n="$noise" 'BEGIN { printf "%d", n * 100 }')
        local setting=(experiment=denoise_mnist runs=5)
        [[ $noise == 0.5 ]] && setting+=(task.noise=0.5)  # the preset is the 25% column
        table_run table2 "${tag}_penalty" 90 "${setting[@]}" solver=penalty solver.nu0=1e-6
        table_run table2 "${tag}_approxgrad" 90 "${setting[@]}" solver=approxgrad \
            solver.lr_v=1e-6 solver.lr_q=1e-5
        table_run table2 "${tag}_rmd" 90 "${setting[@]}" solver=rmd
        for baseline in oracle val_only train_val; do
            table_run table2 "${tag}_$baseline" 90 "${setting[@]}" "baseline=$baseline"
        done
    done
}

group_table3() {  # Omniglot few-shot (meta-test on the presets' 600 episodes)
    local preset solver
    for preset in 5w1s 5w5s 20w1s 20w5s; do
        for solver in penalty approxgrad rmd; do
            table_run table3 "omniglot_${preset}_$solver" 120 \
                "experiment=fewshot_omniglot_$preset" "solver=$solver"
        done
    done
}

group_table5() {  # MNIST poisoning; every row also scores label flips of as many points
    local poisons solver
    for poisons in 10 20 30 40 50 60; do
        for solver in penalty approxgrad; do
            table_run table5 "untargeted_${poisons}_$solver" 150 experiment=poison_untargeted \
                "task.num_poisons=$poisons" "solver=$solver" runs=5
        done
    done
    for solver in penalty approxgrad; do
        table_run table5 "targeted_$solver" 150 experiment=poison_targeted "solver=$solver" runs=5
    done
}

for group in ${STEPS//,/ }; do
    "group_$group"
done

left_over=$(grep -vc '^#' "$OUT/remaining.sh")
log "finished after $(elapsed)s of ${budget_s}s; $left_over step(s) left for another session" \
    "(their commands: $OUT/remaining.sh)"
pack

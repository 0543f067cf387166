#!/usr/bin/env bash
# results/PAPER.md from the committed runs: every number of the paper beside ours.
set -euo pipefail
runs=()
for file in results/paper/*/runs.csv results/synthetic/runs.csv results/synthetic_paper/runs.csv \
            results/denoise/runs.csv results/denoise/gpu/*/runs.csv results/fewshot/runs.csv \
            results/poison/runs.csv; do
    [[ -f $file ]] && runs+=("$file")
done
bilevel-bench-report paper "${runs[@]}" --out results/PAPER.md

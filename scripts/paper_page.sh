#!/usr/bin/env bash
# results/PAPER.md from the committed runs: every number of the paper beside ours, then the
# paper's Figs. 1-2 (synthetic convergence) as our plots and final distances.
#   scripts/paper_page.sh
set -euo pipefail
runs=()
for file in results/paper/*/runs.csv results/synthetic/runs.csv results/synthetic_paper/runs.csv \
            results/denoise/runs.csv results/denoise/gpu/*/runs.csv results/fewshot/runs.csv \
            results/poison/runs.csv; do
    [[ -f $file ]] && runs+=("$file")
done
bilevel-bench-report paper "${runs[@]}" --out results/PAPER.md

figs=results/synthetic_paper
if [[ -f $figs/runs.csv ]]; then
    bilevel-bench-report table "$figs/runs.csv" --metric upper_error --by dataset,solver.T \
        --out "$figs/table" > /dev/null
    {
        echo
        echo "## Figs. 1-2 (synthetic convergence)"
        echo
        echo "The paper plots these as curves only. Ours: the four problems, T = 1, 5, 10, 20 trials each"
        echo "(\`runs=20\`), the authors' step sizes and 40001 upper iterations"
        echo "(\`scripts/reproduce_paper_cpu.sh figs\`). Each figure: distance to the optimum against"
        echo "upper iterations, every trial thin and the mean over trials thick"
        echo "(\`bilevel-bench-report plot $figs/runs.csv --metric upper_error --x step --trials\`)."
        echo
        for png in "$figs"/convergence_*.png; do
            [[ -f $png ]] && echo "![$(basename "$png" .png)](synthetic_paper/$(basename "$png"))"
        done
        echo
        echo "Distance to the optimum after the last iteration, mean ± s.d. over the 20 trials:"
        echo
        cat "$figs/table.md"
    } >> results/PAPER.md
fi

"""Does a short retraining reach the same model as the authors' 10001 Adam steps at 1e-3?

The lower problem of the MNIST attacks (softmax regression + 0.0025 ||W||^2) is strongly convex,
so every budget that converges ends at the same W. This trains on the authors' untargeted split
(seed 0) with several budgets and writes training loss, test accuracy and time to a CSV.

    python scripts/check_poison_retrain_budget.py --data-root ../shared/data \
        --out results/poison/retrain_budget.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from bilevel_bench.data import poison_sets
from bilevel_bench.tasks.poison_problems import SoftmaxRegression, TrainingBudget

BUDGETS = [(10001, 1e-3), (1000, 1e-2), (500, 1e-2), (300, 3e-2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", type=Path, default=Path("results/poison/retrain_budget.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pools = poison_sets.mnist_pools(args.data_root, download=False)
    sizes = OmegaConf.create({"train": 1000, "val": 1000, "test": 8000})
    split = poison_sets.untargeted_split(pools, sizes, torch.Generator().manual_seed(0))
    # one run (a leading run dimension of 1), as the task retrains each run
    train = (pools.images[split.train][None], pools.labels[split.train][None])
    x_test, y_test = pools.images[split.test][None], pools.labels[split.test][None]
    model = SoftmaxRegression(784, 10, bias=False, weight_decay=0.0025)
    rows = []
    for steps, lr in BUDGETS:
        start = model.init([torch.Generator().manual_seed(1)])
        began = time.perf_counter()
        v = model.fit(start, TrainingBudget(steps, lr), [train])
        rows.append(
            {
                "steps": steps,
                "lr": lr,
                "train_loss": float(model.loss(v, [train])[0]),
                "test_acc": 100 * float((model.predict(v, x_test) == y_test).float().mean()),
                "time_s": time.perf_counter() - began,
            }
        )
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()

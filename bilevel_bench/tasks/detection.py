"""How well per-example weights find the noisy labels: low weight = flagged as noisy."""

from __future__ import annotations

import torch


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive` labels (Mann-Whitney U,
    ties counted half). NaN when one of the two classes is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # ranked in float32: scores equal to 7 digits tie, so float64 rounding noise (a batched run
    # against a single one) cannot reorder the many examples whose weights never moved
    _, inverse, counts = torch.unique(scores.float(), return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based mean rank of each distinct value
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_metrics(weights: torch.Tensor, is_noisy: torch.Tensor, threshold: float) -> dict:
    """Precision, recall, F1 (percent) of `weights <= threshold` as a noisy-label detector, and
    the AUROC of the weights (1 = every noisy example weighs less than every clean one)."""
    flagged = weights <= threshold
    true_pos = float((flagged & is_noisy).sum())
    precision = true_pos / max(float(flagged.sum()), 1.0)
    recall = true_pos / max(float(is_noisy.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "detect_precision": 100 * precision,
        "detect_recall": 100 * recall,
        "detect_f1": 100 * f1,
        "weight_auroc": auroc(-weights, is_noisy),
    }

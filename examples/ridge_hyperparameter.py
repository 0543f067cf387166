"""Bring your own problem: learn the ridge penalty of a linear model on validation data.

    lower:  w*(u) = argmin_w  |X_train w - y_train|^2 / n + exp(u) |w|^2
    upper:  min_u  |X_val w*(u) - y_val|^2 / n

Run it with every solver:
    PYTHONPATH=examples bilevel-bench task.problem._target_=ridge_hyperparameter.RidgeHyperparameter
"""

import torch

from bilevel_bench.problem import BilevelProblem


class RidgeHyperparameter(BilevelProblem):
    name = "ridge"

    def __init__(self, n_samples=40, n_features=30, noise=1.0, seed=0, device="cpu"):
        gen = torch.Generator().manual_seed(seed)
        true_w = torch.randn(n_features, generator=gen)
        x = torch.randn(2 * n_samples, n_features, generator=gen)
        y = x @ true_w + noise * torch.randn(2 * n_samples, generator=gen)
        self.x_train, self.x_val = x[:n_samples].to(device), x[n_samples:].to(device)
        self.y_train, self.y_val = y[:n_samples].to(device), y[n_samples:].to(device)
        self.device = device

    def init_variables(self, generator):
        log_penalty = torch.zeros(1, device=self.device)
        weights = torch.zeros(self.x_train.shape[1], device=self.device)
        return {"log_penalty": log_penalty}, {"w": weights}

    def g(self, u, v, batch):
        fit = ((self.x_train @ v["w"] - self.y_train) ** 2).mean()
        return fit + u["log_penalty"].exp().squeeze() * (v["w"] ** 2).sum()

    def f(self, u, v, batch):
        return ((self.x_val @ v["w"] - self.y_val) ** 2).mean()

    def project_u(self, u):
        # keep the penalty in [e^-8, e^4]: a box constraint, applied after every upper step
        return {"log_penalty": u["log_penalty"].clamp(-8.0, 4.0)}

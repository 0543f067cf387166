"""Shared pieces of scripts/bench_*.py: a fixed example-weighting problem and solver configs.

The problem: learn example weights (the paper's importance-learning shape) for a small MLP. u
holds U logits; training example i gets weight sigmoid(u[i mod U]), so U changes while the data,
the network and therefore the cost of one gradient stay the same.

    g(u, v) = sum_i w_i CE(mlp_v(x_i), y_i) / sum_i w_i      (train set, lower level)
    f(u, v) = mean_j CE(mlp_v(x_j), y_j)                     (validation set, upper level)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bilevel_bench.problem import BilevelProblem
from bilevel_bench.solvers import SOLVERS


class WeightedMLPProblem(BilevelProblem):
    """Example weighting for a one-hidden-layer MLP; U groups of examples share one weight.

    Batched: the data is shared, every run has its own MLP [K, ...] and weights [K, U]."""

    name = "weighted_mlp"
    batched = True

    def __init__(self, upper_dim, examples, inputs, hidden, classes, device, seed=0):
        gen = torch.Generator().manual_seed(seed)
        teacher = torch.randn(inputs, classes, generator=gen)

        def labelled(n):
            x = torch.randn(n, inputs, generator=gen)
            return x.to(device), (x @ teacher).argmax(dim=1).to(device)

        self.train, self.val = labelled(examples), labelled(examples)
        self.group = (torch.arange(examples) % upper_dim).to(device)
        self.shapes = {
            "w1": (inputs, hidden),
            "b1": (hidden,),
            "w2": (hidden, classes),
            "b2": (classes,),
        }
        self.upper_dim, self.device = upper_dim, device

    def init_variables(self, generators):
        runs = [
            {k: 0.1 * torch.randn(s, generator=generator) for k, s in self.shapes.items()}
            for generator in generators
        ]
        v = {k: torch.stack([run[k] for run in runs]).to(self.device) for k in self.shapes}
        u = {"logits": torch.zeros(len(generators), self.upper_dim, device=self.device)}
        return u, v

    @staticmethod
    def losses(v, data):
        """[K, n] per-example cross-entropy of every run's MLP on the shared data."""
        x, y = data
        runs, inputs, hidden = v["w1"].shape
        # the input is shared: one matrix product for the first layer of all K runs
        first = x @ v["w1"].transpose(0, 1).reshape(inputs, runs * hidden)
        activations = torch.tanh(
            first.view(len(x), runs, hidden).transpose(0, 1) + v["b1"][:, None]
        )
        logits = torch.baddbmm(v["b2"][:, None], activations, v["w2"])
        return F.cross_entropy(logits.transpose(1, 2), y.expand(runs, len(y)), reduction="none")

    def f(self, u, v, batch):
        return self.losses(v, self.val).mean(1)

    def g(self, u, v, batch):
        weights = torch.sigmoid(u["logits"])[:, self.group]
        return (weights * self.losses(v, self.train)).sum(1) / weights.sum(1)


def solver_config(name: str, T: int, **overrides):
    """The solver's declared defaults with T set; ApproxGrad solves with T2 = T as the authors."""
    values = {"name": name, **{k: p.default for k, p in SOLVERS[name].params.items()}}
    values["T"] = T
    if name == "approxgrad":
        values["T2"] = T
    values.update(overrides)
    return OmegaConf.create(values)

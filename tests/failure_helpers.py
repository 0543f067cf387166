"""Users' problems with a mistake each, for test_failure_paths.py (imported by `_target_`)."""

from __future__ import annotations

import torch

from bilevel_bench.problem import BilevelProblem


class Quadratic3(BilevelProblem):
    """min_u |v - 1|^2 s.t. v = argmin |v - u|^2, in R^3: correct, the base of the others."""

    def init_variables(self, generator):
        return {"u": torch.zeros(3)}, {"v": torch.zeros(3)}

    def f(self, u, v, batch):
        return ((v["v"] - 1.0) ** 2).sum()

    def g(self, u, v, batch):
        return ((v["v"] - u["u"]) ** 2).sum()


class Float64Variables(Quadratic3):
    """Creates its variables in float64 whatever dtype= says."""

    def init_variables(self, generator):
        return {"u": torch.zeros(3, dtype=torch.float64)}, {
            "v": torch.zeros(3, dtype=torch.float64)
        }


class BrokenConstructor(Quadratic3):
    """A bug in the constructor: a failure of the run, not a config error."""

    name = "broken"

    def __init__(self):
        self.scale = 1 / 0


class NoLowerObjective(BilevelProblem):
    def init_variables(self, generator):
        return {"u": torch.zeros(3)}, {"v": torch.zeros(3)}

    def f(self, u, v, batch):
        return ((v["v"] - 1.0) ** 2).sum()


class FloatObjective(Quadratic3):
    def f(self, u, v, batch):
        return 1.0


class VectorObjective(Quadratic3):
    def g(self, u, v, batch):
        return (v["v"] - u["u"]) ** 2  # not reduced: one value per coordinate

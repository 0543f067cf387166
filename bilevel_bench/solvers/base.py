"""What every solver shares: optimisers over variable dicts, projected updates, lower steps.

A solver owns the variables' optimisers and performs one *upper step* per call of `step()`:
whatever lower-level work its method needs, then one update of u. The runner only ever calls
`step()`, `state_dict()` and `load_state_dict()`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.problem import BilevelProblem, BoundObjectives, Variables, project_in_place

# sparse_adam is lazy Adam (torch.optim.SparseAdam): only the coordinates with a nonzero
# gradient move and update their moments. For per-example upper variables (denoising weights)
# dense Adam keeps moving every example off-batch on stale momentum.
OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "sparse_adam": torch.optim.SparseAdam,
}


def make_optimizer(name: str, variables: Variables, lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](list(variables.values()), lr=lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Solver:
    """Base class. Subclasses set `name`, extend `params` and implement `step`."""

    name: ClassVar[str] = "base"
    #: False for baselines that only train the lower level (u keeps its initial value).
    updates_upper: ClassVar[bool] = True
    #: Config rules checked before any work; subclasses add their own keys.
    params: ClassVar[dict[str, checks.Check]] = {
        "T": checks.positive_int,
        "lr_u": checks.positive,
        "lr_v": checks.positive,
        "optimizer_u": checks.one_of(*OPTIMIZERS),
        "optimizer_v": checks.one_of(*OPTIMIZERS),
    }

    def __init__(
        self,
        problem: BilevelProblem,
        u: Variables,
        v: Variables,
        cfg: Any,
        generator: torch.Generator,
    ):
        self.problem, self.u, self.v, self.cfg, self.generator = problem, u, v, cfg, generator
        self.T = int(cfg.T)
        self.lr_u, self.lr_v = float(cfg.lr_u), float(cfg.lr_v)
        self.opt_u = make_optimizer(cfg.optimizer_u, u, self.lr_u)
        self.opt_v = make_optimizer(cfg.optimizer_v, v, self.lr_v)

    @classmethod
    def validate(cls, cfg: Any) -> None:
        checks.check_section("solver", cfg, cls.params)

    # --- the contract -------------------------------------------------------------------------
    def step(self) -> dict[str, torch.Tensor | float]:
        """One upper step. Returns cheap diagnostics (tensors are fine: read only at eval time)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"opt_u": self.opt_u.state_dict(), "opt_v": self.opt_v.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_u.load_state_dict(state["opt_u"])
        self.opt_v.load_state_dict(state["opt_v"])

    # --- shared pieces ------------------------------------------------------------------------
    def bind_fixed_u(self, upper_batch, lower_batch) -> BoundObjectives:
        """Objectives for the lower phase: u is constant, so no graph is built through it."""
        return self.problem.bind(autodiff.detached(self.u), upper_batch, lower_batch)

    def bind_live_u(self, upper_batch, lower_batch) -> BoundObjectives:
        return self.problem.bind(self.u, upper_batch, lower_batch)

    def apply_u(self, direction: Variables) -> None:
        apply_update(self.opt_u, self.u, direction, self.problem.project_u)

    def apply_v(self, direction: Variables) -> None:
        apply_update(self.opt_v, self.v, direction, self.problem.project_v)

    def descend_lower(self, objective, steps: int) -> Variables:
        """`steps` optimiser steps on v for objective(v); returns the last gradient."""
        last = None
        for _ in range(steps):
            last = autodiff.grad(objective(self.v), self.v)
            self.apply_v(last)
        return last


def apply_update(
    optimizer: torch.optim.Optimizer, variables: Variables, direction: Variables, projector
) -> None:
    """Hand `direction` to the optimiser as the gradient, step, then project (constraints)."""
    sparse = isinstance(optimizer, torch.optim.SparseAdam)
    for name, tensor in variables.items():
        gradient = direction[name].detach()
        tensor.grad = gradient.to_sparse() if sparse else gradient
    optimizer.step()
    project_in_place(variables, projector)
    for tensor in variables.values():
        tensor.grad = None


def unrolled_sgd_step(bound: BoundObjectives, v: Variables, lr: float, project, differentiable):
    """v - lr * grad_v g(v), projected: the lower map that RMD and FMD differentiate through."""
    gv = autodiff.grad(bound.g(v), v, create_graph=differentiable)
    stepped = {k: v[k] - lr * gv[k] for k in v}
    stepped = project(stepped)
    if differentiable:
        return stepped
    return {k: t.detach().requires_grad_() for k, t in stepped.items()}


def require_sgd_lower(cfg: Any, solver: str) -> None:
    if cfg.optimizer_v != "sgd":
        raise checks.ConfigError(
            f"solver.optimizer_v={cfg.optimizer_v!r} is not supported by {solver}: it "
            f"differentiates through plain gradient steps on v. Use solver.optimizer_v=sgd"
        )

"""The solver contract: `init(u, v, stream) -> state` and `step(state) -> (state, diagnostics)`.

The state is a dict of tensors holding everything that changes during a run: the variables, the
optimisers' moments and learning rates, the solver's schedules, multipliers and linear-system
iterate, and the random stream (key and step counter). Every tensor has a leading run
dimension K. A checkpoint is the state; no solver writes state_dict code.

No step synchronises with the device: decisions on values are `torch.where` per run, loops
have fixed trip counts, and diagnostics stay tensors until the runner evaluates.

Hyper-parameters are declared once, as `params = {name: Param(default, check, doc)}`. The
declarations become the Hydra config group `solver` (bilevel_bench.solvers registers them), with
per-task tuned values from configs/tuned/<task>.yaml, and validation rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from omegaconf import OmegaConf

from bilevel_bench import autodiff, checks, optim
from bilevel_bench.problem import BilevelProblem, BoundObjectives, Stream, Variables

State = dict[str, Any]


@dataclass(frozen=True)
class Param:
    """One solver hyper-parameter: its default, its check and a one-line doc."""

    default: Any
    check: checks.Check
    doc: str


class Solver:
    """Base class. Subclasses set `name`, extend `params` and implement `update`."""

    name: ClassVar[str] = "base"
    #: False for baselines that only train the lower level (u keeps its initial value).
    updates_upper: ClassVar[bool] = True
    #: True for methods that move v by one step per upper step (single loop, or joint steps on
    #: (u, v)): on a problem that replaces v after every upper step v would never be trained.
    single_lower_step: ClassVar[bool] = False
    #: False for methods without a rule for equality constraints h(u, v) = 0.
    handles_constraints: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        "T": Param(10, checks.positive_int, "lower steps per upper step"),
        "lr_u": Param(0.01, checks.positive, "learning rate of the upper variables u"),
        "lr_v": Param(0.01, checks.positive, "learning rate of the lower variables v"),
        "optimizer_u": Param(
            "adam",
            checks.one_of(*optim.OPTIMIZERS),
            "sgd | adam | sparse_adam (lazy Adam: only coordinates with a nonzero gradient move)",
        ),
        "optimizer_v": Param("adam", checks.one_of(*optim.OPTIMIZERS), "sgd | adam | sparse_adam"),
    }

    def __init__(self, problem: BilevelProblem, cfg: Any):
        """`problem` is batched (bilevel_bench.problem.batched); `cfg` the solver section."""
        # plain values: reading an OmegaConf interpolation in every step costs more than the step
        resolved = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        self.problem, self.cfg = problem, SimpleNamespace(**resolved)
        self.T = int(cfg.T)
        self.opt_u, self.opt_v = optim.make(cfg.optimizer_u), optim.make(cfg.optimizer_v)

    @classmethod
    def validate(cls, cfg: Any) -> None:
        """Every declared key present and valid, no undeclared key (typos fail loudly)."""
        unknown = sorted(set(cfg) - set(cls.params) - {"name"})
        if unknown:
            raise checks.ConfigError(
                f"solver.{unknown[0]} is not a hyper-parameter of solver={cls.name}; its "
                f"hyper-parameters are: {checks.names(cls.params)}"
            )
        checks.check_section("solver", cfg, {k: p.check for k, p in cls.params.items()})

    @classmethod
    def check_problem(cls, u: Variables, v: Variables) -> None:
        """Refuse a problem this solver cannot serve (before any step), with a ConfigError."""
        if cls.updates_upper and not u:
            raise checks.ConfigError(
                f"solver={cls.name} optimises upper variables, but this problem has none "
                "(e.g. a denoising baseline with task.fit_on != weighted): use solver=erm"
            )

    def check_bound_problem(self) -> None:
        """Refusals that need the problem itself (called by init, before any step)."""
        if not self.handles_constraints and self.problem.h is not None:
            raise checks.ConfigError(
                f"solver={self.name} has no rule for equality constraints h(u, v) = 0, and this "
                "problem defines h: use solver=penalty"
            )
        if self.single_lower_step and lower_is_reset(self.problem):
            raise checks.ConfigError(
                f"solver={self.name} moves the lower variables by one step per upper step, but "
                "this problem replaces them after every upper step (few-shot: fresh heads per "
                "meta-batch), so they would never be trained: use task.reset_lower=false, or a "
                "solver with an inner loop (f2sa, stocbio, amigo, aid_cg, approxgrad, penalty)"
            )

    # --- the contract -------------------------------------------------------------------------
    def init(self, u: Variables, v: Variables, stream: Stream) -> State:
        self.check_bound_problem()
        return {
            "u": u,
            "v": v,
            "opt_u": self.opt_u.init(u, self.cfg.lr_u) if u else {},
            "opt_v": self.opt_v.init(v, self.cfg.lr_v),
            "stream": stream,
            **self.init_extra(u, v),
        }

    def init_extra(self, u: Variables, v: Variables) -> State:
        """Solver-specific state (schedules, multipliers, warm starts)."""
        return {}

    def step(self, state: State) -> tuple[State, dict[str, torch.Tensor]]:
        """One upper step: draw the batches, the solver's update, the problem's own change."""
        upper_batch, lower_batch = self.problem.sample_batches(state["stream"])
        state, diagnostics = self.update(state, upper_batch, lower_batch)
        stream = {**state["stream"], "step": state["stream"]["step"] + 1}
        u, v = self.problem.after_step(state["u"], state["v"], stream)
        return {**state, "u": u, "v": v, "stream": stream}, diagnostics

    def update(self, state: State, upper_batch, lower_batch):
        """The method itself: whatever lower-level work it needs, then one update of u."""
        raise NotImplementedError

    # --- shared pieces ------------------------------------------------------------------------
    def bind_fixed_u(self, state: State, upper_batch, lower_batch) -> BoundObjectives:
        """Objectives for the lower phase: u is constant, so no graph is built through it."""
        return self.problem.bind(state["u"], upper_batch, lower_batch)

    def step_u(self, state: State, direction: Variables) -> State:
        u, moments = self.opt_u.update(state["u"], autodiff.detached(direction), state["opt_u"])
        return {**state, "u": self.problem.project_u(u), "opt_u": moments}

    def step_v(self, state: State, direction: Variables) -> State:
        v, moments = self.opt_v.update(state["v"], autodiff.detached(direction), state["opt_v"])
        return {**state, "v": self.problem.project_v(v), "opt_v": moments}

    def descend_lower(self, state: State, objective, steps: int):
        """`steps` optimiser steps on v for objective(v); returns (state, last gradient)."""
        last = None
        for _ in range(steps):
            v = autodiff.leaves(state["v"])
            last = autodiff.grad(objective(v), v)
            state = self.step_v(state, last)
        return state, last


def lower_is_reset(problem: BilevelProblem) -> bool:
    """Whether the problem's after_step replaces v at every upper step (few-shot heads with
    task.reset_lower): copies of v warm-started across upper steps then belong to another
    lower problem, and must restart from the fresh v."""
    return bool(getattr(problem, "reset_lower", False))


def descend_copy(problem: BilevelProblem, objective, copy: Variables, lr, steps: int):
    """`steps` plain gradient steps (step lr: a number or one per run, [K]) on a solver's own
    copy of the lower variables (BOME's v_hat, V-PBGD's omega); returns it detached, projected."""
    for _ in range(steps):
        x = autodiff.leaves(copy)
        gradient = autodiff.grad(objective(x), x)
        copy = problem.project_v(autodiff.add(autodiff.detached(x), gradient, scale=-lr))
    return copy


def with_lr(moments: State, lr: torch.Tensor) -> State:
    """An optimiser state with its per-run learning rate replaced (a scheduled step size)."""
    return {**moments, "lr": lr}


def require_sgd_lower(cfg: Any, solver: str) -> None:
    if cfg.optimizer_v != "sgd":
        raise checks.ConfigError(
            f"solver.optimizer_v={cfg.optimizer_v!r} is not supported by {solver}: it "
            f"differentiates through plain gradient steps on v. Use solver.optimizer_v=sgd"
        )


# The later methods' reference code takes plain gradient steps on both levels: their default.
_REFERENCE_SGD_DOC = "sgd as the reference code | adam | sparse_adam"
REFERENCE_SGD = {
    "optimizer_u": Param("sgd", checks.one_of(*optim.OPTIMIZERS), _REFERENCE_SGD_DOC),
    "optimizer_v": Param("sgd", checks.one_of(*optim.OPTIMIZERS), _REFERENCE_SGD_DOC),
}

"""Penalty method (Mehra & Hamm, 2021): replace v = argmin g by the stationarity condition
grad_v g = 0 and penalise it, so no inverse Hessian or linear solve is ever needed.

    h_upper(u, v) = f + <nu, grad_v g> + gamma/2 ||grad_v g||^2  (+ <mu, h> + gamma/2 ||h||^2)
    h_lower(u, v) = h_upper + lam * g

T steps on v for h_lower, then one step on u for h_upper. When the squared gradient norms of
both fall below eps^2 the schedule tightens: gamma *= c_gamma, eps *= c_eps, lam *= c_lam,
nu += gamma * grad_v g (augmented-Lagrangian multiplier), learning rates *= lr_decay.
"""

from __future__ import annotations

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import Solver, set_learning_rate


class Penalty(Solver):
    name = "penalty"
    params = {
        **Solver.params,
        "gamma0": checks.positive,
        "c_gamma": checks.at_least_one,
        "eps0": checks.positive,
        "c_eps": checks.fraction,
        "lam0": checks.non_negative,
        "c_lam": checks.fraction,
        "nu0": checks.number,
        "lr_decay": checks.fraction,
        "multiplier": checks.boolean,
        "quartic_tolerance": checks.boolean,
    }

    def __init__(self, problem, u, v, cfg, generator):
        super().__init__(problem, u, v, cfg, generator)
        self.gamma, self.eps, self.lam = float(cfg.gamma0), float(cfg.eps0), float(cfg.lam0)
        self.use_multiplier = bool(cfg.multiplier)
        # nu multiplies grad_v g, so it has v's shapes; the authors initialise it to nu0 * ones.
        self.nu = {k: torch.full_like(t, float(cfg.nu0)).detach() for k, t in v.items()}
        self.mu = None  # multiplier of the equality constraint h, shaped on first use
        self.tightenings = 0

    def _penalised(self, bound, v):
        """(h_upper, f, g, grad_v g) at v; grad_v g keeps its graph for second-order terms."""
        f, g = bound.f(v), bound.g(v)
        gv = autodiff.grad(g, v, create_graph=True)
        value = f + autodiff.dot(self.nu, gv) + 0.5 * self.gamma * autodiff.norm_sq(gv)
        if bound.h is not None:
            constraint = bound.h(v)
            if self.mu is None:
                self.mu = torch.zeros_like(constraint).detach()
            value = value + (self.mu * constraint).sum() + 0.5 * self.gamma * (constraint**2).sum()
        return value, f, g, gv

    def step(self):
        upper_batch, lower_batch = self.problem.sample_batches(self.generator)

        fixed_u = self.bind_fixed_u(upper_batch, lower_batch)
        lower_sq = torch.zeros(())
        for _ in range(self.T):
            value, _, g, _ = self._penalised(fixed_u, self.v)
            direction = autodiff.grad(value + self.lam * g, self.v)
            lower_sq = autodiff.norm_sq(direction).detach()
            self.apply_v(direction)

        live_u = self.bind_live_u(upper_batch, lower_batch)
        value, f, _, gv = self._penalised(live_u, self.v)
        direction = autodiff.grad(value, self.u)
        upper_sq = autodiff.norm_sq(direction).detach()
        self.apply_u(direction)

        constraint = live_u.h(self.v).detach() if live_u.h is not None else None
        self._maybe_tighten(upper_sq, lower_sq, autodiff.detached(gv), constraint)
        return {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(gv).detach().sqrt(),
            "gamma": self.gamma,
            "eps": self.eps,
        }

    def _maybe_tighten(self, upper_sq, lower_sq, gv, constraint) -> None:
        if self.cfg.quartic_tolerance:  # the authors' code squares the squared norms again
            measure = upper_sq**2 + lower_sq**2
        else:
            measure = upper_sq + lower_sq
        if not bool(measure < self.eps**2):
            return
        cfg = self.cfg
        self.gamma *= float(cfg.c_gamma)
        self.eps *= float(cfg.c_eps)
        self.lam *= float(cfg.c_lam)
        if self.use_multiplier:
            self.nu = {k: self.nu[k] + self.gamma * gv[k] for k in self.nu}
            if constraint is not None and self.mu is not None:
                self.mu = self.mu + self.gamma * constraint
        self.lr_u *= float(cfg.lr_decay)
        self.lr_v *= float(cfg.lr_decay)
        set_learning_rate(self.opt_u, self.lr_u)
        set_learning_rate(self.opt_v, self.lr_v)
        self.tightenings += 1

    def state_dict(self):
        return {
            **super().state_dict(),
            "schedule": {
                "gamma": self.gamma,
                "eps": self.eps,
                "lam": self.lam,
                "lr_u": self.lr_u,
                "lr_v": self.lr_v,
                "tightenings": self.tightenings,
            },
            "nu": self.nu,
            "mu": self.mu,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        schedule = state["schedule"]
        self.gamma, self.eps, self.lam = schedule["gamma"], schedule["eps"], schedule["lam"]
        self.lr_u, self.lr_v = schedule["lr_u"], schedule["lr_v"]
        self.tightenings = schedule["tightenings"]
        self.nu, self.mu = state["nu"], state["mu"]

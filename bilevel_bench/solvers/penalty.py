"""Penalty method (Mehra & Hamm, 2021): replace v = argmin g by the stationarity condition
grad_v g = 0 and penalise it, so no inverse Hessian or linear solve is ever needed.

    h_upper(u, v) = f + <nu, grad_v g> + gamma/2 ||grad_v g||^2  (+ <mu, h> + gamma/2 ||h||^2)
    h_lower(u, v) = h_upper + lam * g

T steps on v for h_lower, then one step on u for h_upper. In every run whose squared gradient
norms both fall below eps^2 the schedule tightens: gamma *= c_gamma, eps *= c_eps,
lam *= c_lam, nu += gamma * grad_v g (augmented-Lagrangian multiplier), learning rates *=
lr_decay. The test and the tightening are per run, with torch.where (no host sync).
"""

from __future__ import annotations

import torch

from bilevel_bench import autodiff, checks
from bilevel_bench.solvers.base import Param, Solver


class Penalty(Solver):
    name = "penalty"
    params = {
        **Solver.params,
        "gamma0": Param(
            0.01, checks.positive, "penalty on |grad_v g|^2 (rho in the authors' code)"
        ),
        "c_gamma": Param(1.1, checks.at_least_one, "gamma *= c_gamma when the schedule tightens"),
        "eps0": Param(0.01, checks.positive, "tighten when |grad_u h|^2 + |grad_v h|^2 < eps^2"),
        "c_eps": Param(0.9, checks.fraction, "eps *= c_eps when the schedule tightens"),
        "lam0": Param(0.01, checks.non_negative, "weight of g in the lower objective"),
        "c_lam": Param(0.9, checks.fraction, "lam *= c_lam when the schedule tightens"),
        "nu0": Param(0.0, checks.number, "initial multiplier on grad_v g (augmented Lagrangian)"),
        "multiplier": Param(True, checks.boolean, "nu += gamma grad_v g when it tightens"),
        "lr_decay": Param(0.9, checks.fraction, "learning rates *= lr_decay when it tightens"),
        "quartic_tolerance": Param(
            False, checks.boolean, "the authors' code quirk: test (|.|^2)^2 against eps^2"
        ),
    }

    def init_extra(self, u, v):
        cfg = self.cfg
        runs, device = len(next(iter(v.values()))), next(iter(v.values())).device

        def schedule(value):
            return torch.full((runs,), float(value), dtype=torch.float64, device=device)

        state = {
            "gamma": schedule(cfg.gamma0),
            "eps": schedule(cfg.eps0),
            "lam": schedule(cfg.lam0),
            "tightenings": torch.zeros(runs, dtype=torch.int64, device=device),
            # nu multiplies grad_v g, so it has v's shapes; the authors start it at nu0 * ones
            "nu": {k: torch.full_like(t, float(cfg.nu0)) for k, t in v.items()},
        }
        if self.problem.h is not None:  # the multiplier of h = 0 has h's shape
            state["mu"] = torch.zeros_like(self.problem.h(u, v))
        return state

    def _penalised(self, state, bound, v):
        """(h_upper, f, g, grad_v g) per run; grad_v g keeps its graph for second-order terms."""
        f, g = bound.f(v), bound.g(v)
        gv = autodiff.grad(g, v, create_graph=True)
        half_gamma = (0.5 * state["gamma"]).to(f.dtype)
        value = f + autodiff.dot(state["nu"], gv) + half_gamma * autodiff.norm_sq(gv)
        if bound.h is not None:
            constraint = bound.h(v)
            runs = len(constraint)
            value = (
                value
                + (state["mu"] * constraint).reshape(runs, -1).sum(1)
                + half_gamma * (constraint**2).reshape(runs, -1).sum(1)
            )
        return value, f, g, gv

    def update(self, state, upper_batch, lower_batch):
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        lower_sq = None
        for _ in range(self.T):
            v = autodiff.leaves(state["v"])
            value, _, g, _ = self._penalised(state, fixed_u, v)
            direction = autodiff.grad(value + state["lam"].to(g.dtype) * g, v)
            lower_sq = autodiff.norm_sq(direction)
            state = self.step_v(state, direction)

        u, v = autodiff.leaves(state["u"]), autodiff.leaves(state["v"])
        live_u = self.problem.bind(u, upper_batch, lower_batch)
        value, f, _, gv = self._penalised(state, live_u, v)
        direction = autodiff.grad(value, u)
        upper_sq = autodiff.norm_sq(direction)
        state = self.step_u(state, direction)

        constraint = live_u.h(v).detach() if live_u.h is not None else None
        state = self._tighten(state, upper_sq, lower_sq, autodiff.detached(gv), constraint)
        return state, {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(gv).detach().sqrt(),
            "gamma": state["gamma"],
            "eps": state["eps"],
        }

    def _tighten(self, state, upper_sq, lower_sq, gv, constraint):
        cfg = self.cfg
        if cfg.quartic_tolerance:  # the authors' code squares the squared norms again
            measure = upper_sq**2 + lower_sq**2
        else:
            measure = upper_sq + lower_sq
        tight = measure < (state["eps"] ** 2).to(measure.dtype)

        def scaled(value, factor):
            return torch.where(tight, value * float(factor), value)

        gamma = scaled(state["gamma"], cfg.c_gamma)
        state = {
            **state,
            "gamma": gamma,
            "eps": scaled(state["eps"], cfg.c_eps),
            "lam": scaled(state["lam"], cfg.c_lam),
            "tightenings": state["tightenings"] + tight.long(),
        }
        if cfg.multiplier:
            stepped = autodiff.add(state["nu"], gv, scale=gamma)
            state["nu"] = autodiff.where(tight, stepped, state["nu"])
            if constraint is not None:
                runs = len(constraint)
                moved = state["mu"] + autodiff.per_run(gamma, constraint) * constraint
                state["mu"] = torch.where(tight.reshape((runs,) + (1,) * (moved.dim() - 1)),
                                          moved, state["mu"])  # fmt: skip
        for moments in ("opt_u", "opt_v"):
            if state[moments]:  # an erm-like problem without upper variables has no opt_u
                lr = scaled(state[moments]["lr"], cfg.lr_decay)
                state[moments] = {**state[moments], "lr": lr}
        return state

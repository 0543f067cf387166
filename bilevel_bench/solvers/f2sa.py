"""F2SA (Kwon, Kwon, Wright, Nowak; ICML 2023): fully first-order stochastic approximation.

Two lower copies and a growing multiplier lam:
- `v`: the lower problem alone (the reference's z): v <- v - alpha_t grad_v g(u, v);
- `v_penalised` (the reference's v): y <- y - gamma_t (grad_v f(u, y) + lam grad_v g(u, y));
T such iterations, then one step on u along
    grad_u f(u, y) + lam (grad_u g(u, y) - grad_u g(u, v)),
and lam <- lam + delta_t. The state's v is the lower problem's iterate: what the task evaluates.

Every step size is a schedule in the state, c / (t + 1)^a with benchopt's powers (alpha 4/7,
gamma 5/7, u 4/7, delta 1/7) and c = lr_v, lr_penalised, lr_u, delta0. gamma_t lam_t then grows
like t^(1/7), and the penalised copy's effective step on g, gamma_t lam_t, eventually exceeds
2/L: `bound_step_lam` caps it at its initial value gamma_0 lam_0, the paper's step condition
gamma_t <= c / (lam_t L) with c fixed by the tuned first step (false: benchopt, unbounded).

Tune lr_penalised with lr_v (benchopt uses one c for every step). The estimate
lam (grad_u g(u, y) - grad_u g(u, v)) assumes both copies near their minimisers: a penalised
copy that moves far faster than v fits what v has not fitted yet, and on denoising that is the
noisy labels, so their weights rise (results/denoise_modern/README.md has the runs).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from bilevel_bench import autodiff, checks, schedules
from bilevel_bench.solvers.base import REFERENCE_SGD, Param, Solver, lower_is_reset, with_lr


class F2SA(Solver):
    name = "f2sa"
    handles_constraints = False
    params = {
        **Solver.params,
        **REFERENCE_SGD,
        "optimizer_v": replace(REFERENCE_SGD["optimizer_v"], doc="sgd (both lower copies) | adam"),
        "lr_penalised": Param(0.01, checks.positive, "c of gamma_t, the penalised copy's step"),
        "power_u": Param(4 / 7, checks.non_negative, "lr_u / (t+1)^a (0 = constant)"),
        "power_v": Param(4 / 7, checks.non_negative, "lr_v / (t+1)^a"),
        "power_penalised": Param(5 / 7, checks.non_negative, "lr_penalised / (t+1)^a"),
        "lam0": Param(1.0, checks.positive, "initial multiplier lam"),
        "delta0": Param(0.1, checks.non_negative, "lam grows by delta0 / (t+1)^power_delta"),
        "power_delta": Param(1 / 7, checks.non_negative, "decay of lam's increments"),
        "bound_step_lam": Param(
            True,
            checks.boolean,
            "cap gamma_t lam_t at gamma_0 lam_0 (the paper's step condition; default) | false: "
            "benchopt's reference code, unbounded",
        ),
    }

    def init_extra(self, u, v):
        cfg = self.cfg
        runs, device = schedules.runs_of(v)
        return {
            "v_penalised": {k: t.clone() for k, t in v.items()},  # own storage, as vpbgd's omega
            "opt_penalised": self.opt_v.init(v, cfg.lr_penalised),
            "lam": torch.full((runs,), float(cfg.lam0), dtype=torch.float64, device=device),
            "lr_u_t": schedules.decay(runs, device, cfg.lr_u, cfg.power_u),
            "lr_v_t": schedules.decay(runs, device, cfg.lr_v, cfg.power_v),
            "lr_penalised_t": schedules.decay(runs, device, cfg.lr_penalised, cfg.power_penalised),
            "delta_t": schedules.decay(runs, device, cfg.delta0, cfg.power_delta),
        }

    def penalised_lr(self, state):
        lr = schedules.value(state["lr_penalised_t"])
        if self.cfg.bound_step_lam:
            cap = float(self.cfg.lr_penalised) * float(self.cfg.lam0) / state["lam"]
            lr = torch.minimum(lr, cap)
        return lr

    def update(self, state, upper_batch, lower_batch):
        state = {
            **state,
            "opt_u": with_lr(state["opt_u"], schedules.value(state["lr_u_t"])),
            "opt_v": with_lr(state["opt_v"], schedules.value(state["lr_v_t"])),
            "opt_penalised": with_lr(state["opt_penalised"], self.penalised_lr(state)),
        }
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        lam = state["lam"].to(next(iter(state["v"].values())).dtype)

        def penalised(y):
            return fixed_u.f(y) + lam * fixed_u.g(y)

        gv = None
        for _ in range(self.T):
            y = autodiff.leaves(state["v_penalised"])
            y, moments = self.opt_v.update(
                y, autodiff.grad(penalised(y), y), state["opt_penalised"]
            )
            state = {**state, "v_penalised": self.problem.project_v(autodiff.detached(y))}
            state["opt_penalised"] = moments
            v = autodiff.leaves(state["v"])
            gv = autodiff.grad(fixed_u.g(v), v)
            state = self.step_v(state, gv)

        u = autodiff.leaves(state["u"])
        live = self.problem.bind(u, upper_batch, lower_batch)
        f = live.f(state["v_penalised"])
        gap = live.g(state["v_penalised"]) - live.g(state["v"])
        state = self.step_u(state, autodiff.grad(f + lam * gap, u))

        delta = schedules.value(state["delta_t"])
        state = {
            **state,
            "lam": state["lam"] + delta,
            **{k: schedules.advance(state[k]) for k in ("lr_u_t", "lr_v_t", "lr_penalised_t")},
            "delta_t": schedules.advance(state["delta_t"]),
        }
        return state, {
            "upper_loss": f.detach(),
            "lower_grad_norm": autodiff.norm_sq(gv).sqrt(),
            "lam": state["lam"],
        }

    def step(self, state):
        state, diagnostics = super().step(state)
        if lower_is_reset(self.problem):  # fresh heads: the penalised copy restarts with them
            state = {**state, "v_penalised": {k: t.clone() for k, t in state["v"].items()}}
        return state, diagnostics

"""V-PBGD (Shen & Chen; ICML 2023, "On Penalty-based Bilevel Gradient Descent"): value-gap
penalty, first order.

A copy omega of the lower variables, warm-started and never reset, follows argmin_v g(u, .):
    omega <- T plain gradient steps on g(u, .) (step lr_omega);
then one joint step on (u, v) along the gradient of
    min(1/gamma, 1) [f(u, v) + gamma (g(u, v) - g(u, omega))],   omega held constant,
with gamma ramping linearly from gamma_init to gamma_max over gamma_ramp_steps upper steps (a
schedule in the state). The min(1/gamma, 1) keeps the step size meaningful as gamma grows.
Declared defaults: the reference code's linear hyper-cleaning (lr_u = lr_v = 0.1,
lr_omega = 0.01, gamma 0 -> 0.2 over 30000 steps, T = 1).
"""

from __future__ import annotations

import torch

from bilevel_bench import autodiff, checks, schedules
from bilevel_bench.solvers.base import REFERENCE_SGD, Param, Solver, descend_copy


class VPBGD(Solver):
    name = "vpbgd"
    single_lower_step = True  # the joint step moves v once per upper step
    handles_constraints = False
    params = {
        **Solver.params,
        **REFERENCE_SGD,
        "T": Param(1, checks.positive_int, "gradient steps on omega per upper step"),
        "lr_u": Param(0.1, checks.positive, "learning rate of u in the joint step"),
        "lr_v": Param(0.1, checks.positive, "learning rate of v in the joint step"),
        "lr_omega": Param(0.01, checks.positive, "step of the plain gradient steps on omega"),
        "gamma_init": Param(0.0, checks.non_negative, "penalty gamma at the first upper step"),
        "gamma_max": Param(0.2, checks.positive, "gamma after the ramp"),
        "gamma_ramp_steps": Param(
            30000, checks.non_negative_int, "upper steps of the linear ramp (0 = gamma_max)"
        ),
    }

    def init_extra(self, u, v):
        cfg = self.cfg
        runs, device = schedules.runs_of(v)
        gamma = schedules.ramp(
            runs, device, cfg.gamma_init, cfg.gamma_max, int(cfg.gamma_ramp_steps)
        )
        # a copy with storage of its own: state entries never share tensors (engine.capture
        # keeps one static buffer per entry)
        return {"omega": {k: t.clone() for k, t in v.items()}, "gamma": gamma}

    def update(self, state, upper_batch, lower_batch):
        fixed_u = self.bind_fixed_u(state, upper_batch, lower_batch)
        omega = descend_copy(
            self.problem, fixed_u.g, state["omega"], float(self.cfg.lr_omega), self.T
        )

        u, v = autodiff.leaves(state["u"]), autodiff.leaves(state["v"])
        live = self.problem.bind(u, upper_batch, lower_batch)
        f = live.f(v)
        gap = live.g(v) - live.g(omega)
        gamma = schedules.value(state["gamma"]).to(f.dtype)
        objective = (f + gamma * gap) / torch.clamp(gamma, min=1.0)  # min(1/gamma, 1) [...]
        direction_u, direction_v = autodiff.grad_pair(objective, u, v)

        state = self.step_u(state, direction_u)
        state = self.step_v(state, direction_v)
        state = {**state, "omega": omega, "gamma": schedules.advance(state["gamma"])}
        return state, {"upper_loss": f.detach(), "value_gap": gap.detach(), "gamma": gamma}

"""Functional optimisers over batched runs: `init(params, lr) -> state`, `update(params, grads,
state) -> (params, state)`, with every number that changes (learning rate, step count, moments)
in the state and one learning rate per run.

torch.optim cannot hold per-run learning rates nor return its state as tensors, hence these few
lines. The arithmetic follows torch.optim (same operations in the same order), so a single run
reproduces what torch.optim.Adam computed. Learning rates and step counts are float64, as
torch.optim's Python floats are; they are rounded to the variables' dtype where they are used.
"""

from __future__ import annotations

import torch

from bilevel_bench.problem import Variables

State = dict
_HALF = torch.tensor(0.5, dtype=torch.float64)  # a CPU scalar: usable beside tensors anywhere


def _per_run(scalars: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] numbers (already in like's dtype) shaped to broadcast against like [K, ...]."""
    return scalars.view(scalars.shape + (1,) * (like.dim() - 1))


def _runs(params: Variables) -> tuple[int, torch.device]:
    first = next(iter(params.values()))
    return first.shape[0], first.device


class SGD:
    """v - lr * grad."""

    def init(self, params: Variables, lr: float) -> State:
        runs, device = _runs(params)
        return {"lr": torch.full((runs,), float(lr), dtype=torch.float64, device=device)}

    def update(self, params: Variables, grads: Variables, state: State):
        lr = state["lr"].to(next(iter(params.values())).dtype)
        return {k: p - _per_run(lr, p) * grads[k] for k, p in params.items()}, state


class Adam:
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8), one step count and learning rate per run."""

    betas = (0.9, 0.999)
    eps = 1e-8

    def init(self, params: Variables, lr: float) -> State:
        runs, device = _runs(params)
        return {
            "lr": torch.full((runs,), float(lr), dtype=torch.float64, device=device),
            "step": torch.zeros(runs, dtype=torch.float64, device=device),
            "exp_avg": {k: torch.zeros_like(t) for k, t in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(t) for k, t in params.items()},
        }

    def _corrections(self, state: State):
        """(step counts, bias corrections) with the corrections computed as torch.optim does.

        The runs of a batch step together, so one count serves them all: it is computed once, as
        a 0-dim tensor, because torch's vectorised float64 pow and sqrt (used for 4 or more
        elements) round differently from the scalar path and from Python. pow(x, 0.5), not sqrt:
        torch.optim takes this root in Python (x ** 0.5, correctly rounded).
        """
        beta1, beta2 = self.betas
        step = state["step"] + 1
        count = step.max()
        return step, 1 - beta1**count, torch.pow(1 - beta2**count, _HALF)

    def update(self, params: Variables, grads: Variables, state: State):
        beta1, beta2 = self.betas
        step, correction1, correction2_sqrt = self._corrections(state)
        dtype = next(iter(params.values())).dtype
        neg_step_size = (-(state["lr"] / correction1)).to(dtype)
        correction2_sqrt = correction2_sqrt.to(dtype)
        new_params, exp_avg, exp_avg_sq = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            exp_avg[k] = torch.lerp(state["exp_avg"][k], g, 1 - beta1)
            # in place on a tensor made here: the state's own tensors are never changed
            exp_avg_sq[k] = state["exp_avg_sq"][k].mul(beta2).addcmul_(g, g, value=1 - beta2)
            denom = exp_avg_sq[k].sqrt().div_(correction2_sqrt).add_(self.eps)
            new_params[k] = (_per_run(neg_step_size, p) * exp_avg[k]).div_(denom).add_(p)
        state = {**state, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        return new_params, state


class LazyAdam(Adam):
    """torch.optim.SparseAdam without sparse tensors: only coordinates whose gradient is nonzero
    move and update their moments (per-example variables: examples off the minibatch keep their
    weights and moments, instead of drifting on stale momentum as with dense Adam)."""

    def update(self, params: Variables, grads: Variables, state: State):
        beta1, beta2 = self.betas
        step, correction1, correction2_sqrt = self._corrections(state)
        step_size = state["lr"] * correction2_sqrt / correction1
        step_size = step_size.to(next(iter(params.values())).dtype)
        new_params, exp_avg, exp_avg_sq = {}, {}, {}
        for k, p in params.items():
            g, old_avg, old_avg_sq = grads[k], state["exp_avg"][k], state["exp_avg_sq"][k]
            touched = g != 0
            avg = torch.where(touched, old_avg + (g - old_avg) * (1 - beta1), old_avg)
            avg_sq = torch.where(
                touched, old_avg_sq + (g * g - old_avg_sq) * (1 - beta2), old_avg_sq
            )
            moved = p - _per_run(step_size, p) * (avg / (avg_sq.sqrt() + self.eps))
            new_params[k] = torch.where(touched, moved, p)
            exp_avg[k], exp_avg_sq[k] = avg, avg_sq
        state = {**state, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        return new_params, state


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "sparse_adam": LazyAdam}


def make(name: str):
    return OPTIMIZERS[name]()

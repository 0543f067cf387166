"""Gradients, second-order products and per-run arithmetic over dicts of tensors.

Every tensor has a leading run dimension K. Runs share no variables, so differentiating the sum
of the per-run values gives each run its own gradient; Hessian-vector and mixed products are
double backward passes of the same kind. No Hessian is ever formed. Reductions (`dot`,
`norm_sq`) are per run and return [K]; per-run scalars multiply through `per_run`.
"""

from __future__ import annotations

import torch

from bilevel_bench.problem import Variables


def detached(variables: Variables) -> Variables:
    return {name: t.detach() for name, t in variables.items()}


def leaves(variables: Variables) -> Variables:
    """Fresh leaves that require grad (the state holds plain tensors)."""
    return {name: t.detach().requires_grad_() for name, t in variables.items()}


def grad(
    values: torch.Tensor,
    wrt: Variables,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Variables:
    """d sum(values) / d wrt as a dict; variables that values do not depend on get zeros."""
    if not values.requires_grad:  # depends on none of them (e.g. f without u in denoising)
        return zeros_like(wrt)
    grads = torch.autograd.grad(
        values.sum(),
        list(wrt.values()),
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return _named(wrt, grads)


def _named(wrt: Variables, grads) -> Variables:
    """Gradients by name, zeros for the variables the output did not depend on."""
    return {
        n: (g if g is not None else torch.zeros_like(wrt[n]))
        for n, g in zip(wrt, grads, strict=True)
    }


def grad_pair(values: torch.Tensor, u: Variables, v: Variables) -> tuple[Variables, Variables]:
    """(d sum(values) / d u, d sum(values) / d v) from one backward pass."""
    both = torch.autograd.grad(
        values.sum(), [*u.values(), *v.values()], retain_graph=True, allow_unused=True
    )
    tensors = [*u.values(), *v.values()]
    grads = [
        g if g is not None else torch.zeros_like(t) for g, t in zip(both, tensors, strict=True)
    ]
    return dict(zip(u, grads[: len(u)], strict=True)), dict(zip(v, grads[len(u) :], strict=True))


def vjp(outputs: Variables, wrt: Variables, cotangent: Variables, create_graph=False) -> Variables:
    """sum_k <outputs[k], cotangent[k]> differentiated w.r.t. wrt (graph of outputs retained).

    With outputs = grad_v g this is H_vv @ cotangent (wrt = v) or H_uv @ cotangent (wrt = u),
    for every run at once.
    """
    grads = torch.autograd.grad(
        list(outputs.values()),
        list(wrt.values()),
        grad_outputs=[cotangent[k] for k in outputs],
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
    )
    return _named(wrt, grads)


def per_run(scalars: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] per-run numbers shaped to broadcast against `like` ([K, ...]), in its dtype."""
    return scalars.to(like.dtype).reshape(scalars.shape + (1,) * (like.dim() - scalars.dim()))


def _per_run_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def dot(a: Variables, b: Variables) -> torch.Tensor:
    """[K] per-run inner products."""
    return sum(_per_run_sum(a[k] * b[k]) for k in a)


def norm_sq(a: Variables) -> torch.Tensor:
    """[K] per-run squared Euclidean norms."""
    return sum(_per_run_sum(t * t) for t in a.values())


def add(a: Variables, b: Variables, scale: torch.Tensor | float = 1.0) -> Variables:
    """a + scale * b, with `scale` a number or one number per run."""
    if isinstance(scale, torch.Tensor):
        return {k: a[k] + per_run(scale, b[k]) * b[k] for k in a}
    return {k: a[k] + scale * b[k] for k in a}


def scale(a: Variables, factor: torch.Tensor) -> Variables:
    """factor * a with one factor per run."""
    return {k: per_run(factor, t) * t for k, t in a.items()}


def where(condition: torch.Tensor, a: Variables, b: Variables) -> Variables:
    """Per run: a where condition [K] holds, b elsewhere."""
    return {k: torch.where(_broadcast(condition, a[k]), a[k], b[k]) for k in a}


def _broadcast(condition: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return condition.reshape(condition.shape + (1,) * (like.dim() - condition.dim()))


def zeros_like(a: Variables) -> Variables:
    return {k: torch.zeros_like(t) for k, t in a.items()}


def numel_per_run(a: Variables) -> int:
    return sum(t[0].numel() for t in a.values())


def finite_per_run(*dicts: Variables) -> torch.Tensor:
    """[K] bool: every number of the run is finite (a host sync when read: evaluation only)."""
    checks = [torch.isfinite(t).reshape(t.shape[0], -1).all(1) for d in dicts for t in d.values()]
    return torch.stack(checks).all(0)

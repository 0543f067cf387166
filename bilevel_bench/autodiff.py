"""Gradients and second-order products over dicts of tensors, by automatic differentiation.

Hessian-vector and mixed products are double backward passes; no Hessian is ever formed.
"""

from __future__ import annotations

import torch

from bilevel_bench.problem import Variables


def detached(variables: Variables) -> Variables:
    return {name: t.detach() for name, t in variables.items()}


def grad(
    output: torch.Tensor,
    wrt: Variables,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Variables:
    """d output / d wrt as a dict; variables that output does not depend on get zeros."""
    names = list(wrt)
    grads = torch.autograd.grad(
        output,
        [wrt[n] for n in names],
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return {
        n: (g if g is not None else torch.zeros_like(wrt[n]))
        for n, g in zip(names, grads, strict=True)
    }


def vjp(outputs: Variables, wrt: Variables, cotangent: Variables, create_graph=False) -> Variables:
    """sum_k <outputs[k], cotangent[k]> differentiated w.r.t. wrt (graph of outputs retained).

    With outputs = grad_v g this is H_vv @ cotangent (wrt = v) or H_uv @ cotangent (wrt = u).
    """
    return grad(dot(outputs, cotangent), wrt, create_graph=create_graph, retain_graph=True)


def dot(a: Variables, b: Variables) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def norm_sq(a: Variables) -> torch.Tensor:
    return sum((t * t).sum() for t in a.values())


def add(a: Variables, b: Variables, scale: float = 1.0) -> Variables:
    """a + scale * b"""
    return {k: a[k] + scale * b[k] for k in a}


def zeros_like(a: Variables) -> Variables:
    return {k: torch.zeros_like(t) for k, t in a.items()}


def numel(a: Variables) -> int:
    return sum(t.numel() for t in a.values())


def all_finite(*dicts: Variables) -> bool:
    return all(bool(torch.isfinite(t).all()) for d in dicts for t in d.values())

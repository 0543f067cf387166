"""The one interface every solver talks to.

    min_u f(u, v*(u))   s.t.  v*(u) = argmin_v g(u, v)   (optionally h(u, v) = 0, projections)

Variables are dicts name -> tensor, so a problem can name its blocks ("weights", "poisons", ...)
and a solver never needs to know their shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Variables = dict[str, torch.Tensor]
Batch = Any


@dataclass
class BoundObjectives:
    """f and g as functions of v alone, for a fixed u and fixed batches.

    Solvers call `problem.bind(...)` once per upper step (with u detached for the lower phase,
    live for the upper phase) and then evaluate `f(v)` / `g(v)` many times. A problem whose
    u-dependent work does not depend on v (e.g. a shared encoder in few-shot learning) overrides
    `bind` to do that work once instead of at every lower step.
    """

    f: Callable[[Variables], torch.Tensor]
    g: Callable[[Variables], torch.Tensor]
    h: Callable[[Variables], torch.Tensor] | None = None


class BilevelProblem:
    """Subclass and implement `init_variables`, `f` and `g`; everything else is optional."""

    #: Human-readable name used in the result row's `dataset` column.
    name: str = "custom"

    # --- required -----------------------------------------------------------------------------
    def init_variables(self, generator: torch.Generator) -> tuple[Variables, Variables]:
        """Return fresh (u, v): dicts of tensors. The runner makes them leaves that require grad."""
        raise NotImplementedError

    def f(self, u: Variables, v: Variables, batch: Batch) -> torch.Tensor:
        """Upper objective (scalar)."""
        raise NotImplementedError

    def g(self, u: Variables, v: Variables, batch: Batch) -> torch.Tensor:
        """Lower objective (scalar)."""
        raise NotImplementedError

    # --- optional -----------------------------------------------------------------------------
    #: Equality constraints h(u, v) = 0 (a tensor). None means unconstrained.
    h: Callable[[Variables, Variables], torch.Tensor] | None = None

    def project_u(self, u: Variables) -> Variables:
        """Projection onto the feasible set of u (boxes, balls). Identity by default."""
        return u

    def project_v(self, v: Variables) -> Variables:
        return v

    def sample_batch(self, split: str, generator: torch.Generator) -> Batch:
        """A minibatch for `split` ("upper" for f, "lower" for g). Default: full batch (None)."""
        return None

    def sample_batches(self, generator: torch.Generator) -> tuple[Batch, Batch]:
        """(upper_batch, lower_batch) for one upper step.

        Override when the two are coupled, e.g. few-shot episodes whose support set feeds g and
        whose query set feeds f.
        """
        return self.sample_batch("upper", generator), self.sample_batch("lower", generator)

    def bind(self, u: Variables, upper_batch: Batch, lower_batch: Batch) -> BoundObjectives:
        h = None
        if self.h is not None:
            h = lambda v: self.h(u, v)  # noqa: E731
        return BoundObjectives(
            f=lambda v: self.f(u, v, upper_batch),
            g=lambda v: self.g(u, v, lower_batch),
            h=h,
        )

    def optimum(self) -> tuple[Variables, Variables] | None:
        """Known solution (u*, v*), or None when unknown."""
        return None

    def upper_error(self, u: Variables, v: Variables) -> float | None:
        """Distance of u to the solution (set). Default: Euclidean distance to optimum()'s u*."""
        best = self.optimum()
        if best is None:
            return None
        u_star, _ = best
        squared = sum(((u[k].detach() - u_star[k].to(u[k])) ** 2).sum() for k in u_star)
        return float(torch.sqrt(squared))


def project_in_place(variables: Variables, projector: Callable[[Variables], Variables]) -> None:
    """Apply a problem's projection to leaf variables without breaking optimiser references."""
    projected = projector(variables)
    if projected is variables:
        return
    with torch.no_grad():
        for name, tensor in variables.items():
            target = projected[name]
            if target is not tensor:
                tensor.copy_(target)

"""The one interface every solver talks to.

    min_u f(u, v*(u))   s.t.  v*(u) = argmin_v g(u, v)   (optionally h(u, v) = 0, projections)

Variables are dicts name -> tensor, so a problem can name its blocks ("weights", "poisons", ...)
and a solver never needs to know their shapes.

The engine runs K runs (seeds) of a problem as one computation: every variable carries a leading
run dimension and f, g return one value per run. A problem says how it meets that with
`batched`:
- `batched = False` (the default, for problems of your own): write f, g, h, the projections,
  `sample_batches` and `after_step` for ONE run. The engine runs them over the K runs with
  torch.func.vmap. The one rule: they must be vmappable, i.e. no in-place updates of the
  variables, no `.item()` / `float()` / Python `if` on tensor values, and no torch random
  functions (draw random numbers with `bilevel_bench.keys` from the key `sample_batches` gets).
- `batched = True`: the problem handles the run dimension itself (the built-in tasks do, to keep
  one copy of their data and to use batched kernels): `init_variables` gets one generator per
  run, f and g return a [K] tensor, `upper_error` a list of K numbers.

Runs never share variables, so the gradient of the summed per-run values is every run's own
gradient, and so are Hessian-vector products: solvers differentiate `values.sum()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bilevel_bench.checks import ConfigError

Variables = dict[str, torch.Tensor]
Batch = Any
#: {"key": [K] int64, "step": [K] int64}: a run's random stream (see bilevel_bench.keys).
Stream = dict[str, torch.Tensor]


@dataclass
class BoundObjectives:
    """f and g (and h) as functions of v alone, for a fixed u and fixed batches.

    Solvers call `problem.bind(...)` once per upper step (with u detached for the lower phase,
    live for the upper phase) and then evaluate `f(v)` / `g(v)` many times. A problem whose
    u-dependent work does not depend on v (e.g. a shared encoder in few-shot learning) overrides
    `bind` to do that work once instead of at every lower step.
    """

    f: Callable[[Variables], torch.Tensor]
    g: Callable[[Variables], torch.Tensor]
    h: Callable[[Variables], torch.Tensor] | None = None


REQUIRED = {
    "init_variables": "init_variables(generator) -> (u, v), the starting variables",
    "f": "f(u, v, batch), the upper objective",
    "g": "g(u, v, batch), the lower objective",
}


def missing_method(problem: Any, method: str) -> str:
    cls = problem if isinstance(problem, type) else type(problem)
    return (
        f"{cls.__name__} does not define {REQUIRED[method]}: every BilevelProblem subclass "
        "implements init_variables, f and g (see bilevel_bench/problem.py)"
    )


def missing_methods(cls: type) -> list[str]:
    """The required methods `cls` leaves to BilevelProblem (which only raises)."""
    return [m for m in REQUIRED if getattr(cls, m) is getattr(BilevelProblem, m)]


class BilevelProblem:
    """Subclass and implement `init_variables`, `f` and `g`; everything else is optional."""

    #: Human-readable name used in the result row's `dataset` column.
    name: str = "custom"
    #: See the module docstring: False = written for one run (vmapped by the engine).
    batched: ClassVar[bool] = False

    # --- required -----------------------------------------------------------------------------
    def init_variables(self, generator: torch.Generator) -> tuple[Variables, Variables]:
        """Fresh (u, v) for one run: dicts of tensors (batched problems: see the module doc)."""
        raise NotImplementedError(missing_method(self, "init_variables"))

    def f(self, u: Variables, v: Variables, batch: Batch) -> torch.Tensor:
        """Upper objective (a scalar; one per run when batched)."""
        raise NotImplementedError(missing_method(self, "f"))

    def g(self, u: Variables, v: Variables, batch: Batch) -> torch.Tensor:
        """Lower objective (a scalar; one per run when batched)."""
        raise NotImplementedError(missing_method(self, "g"))

    # --- optional -----------------------------------------------------------------------------
    #: Equality constraints h(u, v) = 0 (a tensor). None means unconstrained.
    h: Callable[[Variables, Variables], torch.Tensor] | None = None

    def project_u(self, u: Variables) -> Variables:
        """Projection onto the feasible set of u (boxes, balls). Identity by default."""
        return u

    def project_v(self, v: Variables) -> Variables:
        return v

    def sample_batches(self, stream: Stream) -> tuple[Batch, Batch]:
        """(upper_batch, lower_batch) for the upper step numbered stream["step"].

        A pure function of the run's key and step (draw with bilevel_bench.keys), so that a
        resumed run draws the same batches. Default: full batch (None, None).
        """
        return None, None

    def bind(self, u: Variables, upper_batch: Batch, lower_batch: Batch) -> BoundObjectives:
        h = None
        if self.h is not None:
            h = lambda v: self.h(u, v)  # noqa: E731
        return BoundObjectives(
            f=lambda v: self.f(u, v, upper_batch),
            g=lambda v: self.g(u, v, lower_batch),
            h=h,
        )

    def after_step(self, u: Variables, v: Variables, stream: Stream) -> tuple[Variables, Variables]:
        """The problem's own change to the variables after each upper step (stream["step"] = the
        steps done), e.g. fresh few-shot heads or per-epoch re-normalised weights. Identity by
        default."""
        return u, v

    def optimum(self) -> tuple[Variables, Variables] | None:
        """Known solution (u*, v*) of one run, or None when unknown."""
        return None

    def upper_error(self, u: Variables, v: Variables):
        """Distance of u to the solution (set): a float (one run), a list of K floats (batched),
        or None. Default: Euclidean distance to optimum()'s u*."""
        best = self.optimum()
        if best is None:
            return None
        u_star, _ = best
        if not self.batched:
            squared = sum(((u[k].detach() - u_star[k].to(u[k])) ** 2).sum() for k in u_star)
            return float(torch.sqrt(squared))
        squared = sum(
            ((u[k].detach() - u_star[k].to(u[k])) ** 2).reshape(len(u[k]), -1).sum(1)
            for k in u_star
        )
        return squared.sqrt().tolist()


class VmappedProblem(BilevelProblem):
    """A one-run problem run over K runs with torch.func.vmap (the engine's view of it)."""

    batched = True

    def __init__(self, problem: BilevelProblem):
        self.inner = problem
        self.name = problem.name
        if problem.h is not None:
            self.h = lambda u, v: self._vmap("h", lambda u_, v_: problem.h(u_, v_), u, v)
        self._overrides = {
            method: getattr(type(problem), method) is not getattr(BilevelProblem, method)
            for method in ("project_u", "project_v", "sample_batches", "after_step")
        }

    def _vmap(self, what: str, fn, *args, in_dims=0):
        try:
            return torch.func.vmap(fn, in_dims=in_dims)(*args)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            raise ConfigError(
                f"{type(self.inner).__name__}.{what} cannot run several runs at once: problems "
                "written for one run (batched = False) must be vmappable: no in-place updates of "
                "the variables, no .item() / float() / Python `if` on tensor values, no torch "
                f"random functions (use bilevel_bench.keys). torch.func.vmap said: {err}"
            ) from err

    def init_variables(self, generators):
        runs = [self.inner.init_variables(generator) for generator in generators]
        return tuple(
            {name: torch.stack([run[side][name] for run in runs]) for name in runs[0][side]}
            for side in (0, 1)
        )

    @staticmethod
    def _batch_dims(batch):
        return None if batch is None else 0

    def bind(self, u, upper_batch, lower_batch):
        problem = self.inner
        dims = (0, 0, self._batch_dims(upper_batch), self._batch_dims(lower_batch))

        def objective(which):
            def per_run(u_, v_, upper_, lower_):
                value = getattr(problem.bind(u_, upper_, lower_), which)(v_)
                return value if which == "h" else _scalar(value, problem, which)

            return lambda v: self._vmap(
                which, per_run, u, v, upper_batch, lower_batch, in_dims=dims
            )

        return BoundObjectives(
            f=objective("f"),
            g=objective("g"),
            h=objective("h") if problem.h is not None else None,
        )

    def f(self, u, v, batch):
        return self.bind(u, batch, None).f(v)

    def g(self, u, v, batch):
        return self.bind(u, None, batch).g(v)

    def project_u(self, u):
        if not self._overrides["project_u"]:
            return u
        return self._vmap("project_u", self.inner.project_u, u)

    def project_v(self, v):
        if not self._overrides["project_v"]:
            return v
        return self._vmap("project_v", self.inner.project_v, v)

    def sample_batches(self, stream):
        if not self._overrides["sample_batches"]:
            return None, None
        return self._vmap("sample_batches", self.inner.sample_batches, stream)

    def after_step(self, u, v, stream):
        if not self._overrides["after_step"]:
            return u, v
        return self._vmap("after_step", self.inner.after_step, u, v, stream)

    def optimum(self):
        return self.inner.optimum()

    def upper_error(self, u, v):
        runs = len(next(iter(u.values())))
        errors = [
            self.inner.upper_error(
                {k: t[run] for k, t in u.items()}, {k: t[run] for k, t in v.items()}
            )
            for run in range(runs)
        ]
        return None if errors[0] is None else errors


def _scalar(value: Any, problem: BilevelProblem, which: str) -> torch.Tensor:
    """A one-run objective's value, checked: torch would otherwise fail later with a message about
    vmap or gradients that names neither the method nor the rule."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value
    got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise TypeError(
        f"{type(problem).__name__}.{which} must return a scalar tensor (one number per run), got "
        f"{got}: build it from the variables with torch operations and reduce it, e.g. .sum()"
    )


def batched(problem: BilevelProblem) -> BilevelProblem:
    """The problem as the engine sees it: with a leading run dimension on everything."""
    return problem if problem.batched else VmappedProblem(problem)

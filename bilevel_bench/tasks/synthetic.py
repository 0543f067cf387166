"""The authors' synthetic bilevel problems (paper section 3.1) and a random strongly convex quadratic
with a closed-form hypergradient; plus the task that runs any BilevelProblem by `_target_`.

Variables are d = n_blocks * block_dim dimensional; A (rank-deficient problems) is block-diagonal
with one Gaussian rank x block_dim block per block, as in the authors' code. The built-in
problems are batched: u and v are [K, d], one row per run, and f, g return [K].
"""

from __future__ import annotations

import inspect
import math

import torch
from hydra.utils import get_class

from bilevel_bench import autodiff
from bilevel_bench.checks import ConfigError
from bilevel_bench.problem import BilevelProblem, missing_method, missing_methods
from bilevel_bench.tasks.base import Task


def _sum(x: torch.Tensor) -> torch.Tensor:
    """Per-run sum over the coordinates."""
    return x.sum(-1)


class BoxedProblem(BilevelProblem):
    """u, v in R^dim, initialised uniformly in the box [-box, box] and projected onto it."""

    batched = True

    def __init__(self, dim: int, box: float | None, device="cpu", dtype=None):
        self.dim, self.box, self.device = dim, box, torch.device(device)
        self.dtype = dtype or torch.get_default_dtype()

    def _tensor(self, data):
        return torch.as_tensor(data, dtype=self.dtype, device=self.device)

    def init_variables(self, generators):
        half_width = self.box if self.box is not None else 1.0

        def draw(generator):
            return (
                torch.rand(self.dim, generator=generator, dtype=self.dtype) * 2 - 1
            ) * half_width

        runs = [(draw(generator), draw(generator)) for generator in generators]
        u = torch.stack([pair[0] for pair in runs]).to(self.device)
        v = torch.stack([pair[1] for pair in runs]).to(self.device)
        return {"u": u}, {"v": v}

    def _clip(self, x):
        if self.box is None:
            return x
        return {k: t.clamp(-self.box, self.box) for k, t in x.items()}

    def project_u(self, u):
        return self._clip(u)

    def project_v(self, v):
        return self._clip(v)


class SMD20(BoxedProblem):
    """f = |u|^2 + |v|^2 - 1, g = |1 - u - v|^2; optimum u = v = 0.5."""

    name = "smd20"

    def f(self, u, v, batch):
        return _sum(u["u"] ** 2) + _sum(v["v"] ** 2) - 1

    def g(self, u, v, batch):
        return _sum((1 - u["u"] - v["v"]) ** 2)

    def optimum(self):
        half = torch.full((self.dim,), 0.5, dtype=self.dtype, device=self.device)
        return {"u": half}, {"v": half.clone()}


class SMD21(BoxedProblem):
    """f = |v|^2 - |u - v|^2, g = |u - v|^2 (the paper's toy v^2 - (u-v)^2); optimum (0, 0)."""

    name = "smd21"

    def f(self, u, v, batch):
        return _sum(v["v"] ** 2) - _sum((u["u"] - v["v"]) ** 2)

    def g(self, u, v, batch):
        return _sum((u["u"] - v["v"]) ** 2)

    def optimum(self):
        zero = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        return {"u": zero}, {"v": zero.clone()}


class RankDeficientProblem(BoxedProblem):
    """Shared set-up of SMD23 / SMD24: a block-diagonal A of rank n_blocks * rank."""

    def __init__(self, block_dim=10, n_blocks=2, rank=5, box=5.0, seed=0, device="cpu", dtype=None):
        super().__init__(block_dim * n_blocks, box, device, dtype)
        gen = torch.Generator().manual_seed(seed)
        blocks = [
            torch.randn(rank, block_dim, generator=gen, dtype=torch.float64)
            for _ in range(n_blocks)
        ]
        a = torch.block_diag(*blocks)
        # projector onto A's row space: P = A^T (A A^T)^-1 A
        p = a.T @ torch.linalg.solve(a @ a.T, a)
        self.a, self.projector = self._tensor(a), self._tensor(p)

    def _apply_a(self, x):
        """A x for every run's row x."""
        return x @ self.a.T


class SMD23(RankDeficientProblem):
    """f = |v|^2 - |A(u - v)|^2, g = |A(u - v)|^2. Solutions: u in null(A); error = |P u|."""

    name = "smd23"

    def f(self, u, v, batch):
        return _sum(v["v"] ** 2) - _sum(self._apply_a(u["u"] - v["v"]) ** 2)

    def g(self, u, v, batch):
        return _sum(self._apply_a(u["u"] - v["v"]) ** 2)

    def upper_error(self, u, v):
        return torch.linalg.vector_norm(u["u"].detach() @ self.projector.T, dim=-1).tolist()


class SMD24(RankDeficientProblem):
    """f = |u|^2 + |v|^2, g = |A(1 - u - v)|^2. Unique solution u* = v* = P 1 / 2."""

    name = "smd24"

    def f(self, u, v, batch):
        return _sum(u["u"] ** 2) + _sum(v["v"] ** 2)

    def g(self, u, v, batch):
        return _sum(self._apply_a(1 - u["u"] - v["v"]) ** 2)

    def optimum(self):
        half_p1 = 0.5 * self.projector.sum(dim=1)
        return {"u": half_p1}, {"v": half_p1.clone()}


class Quadratic(BilevelProblem):
    """Random strongly convex quadratic bilevel problem with closed-form answers.

    g = 1/2 v^T H v - v^T B u,   f = 1/2 |v - a|^2 + rho/2 |u|^2
    v*(u) = H^-1 B u,  grad F(u) = M^T (M u - a) + rho u  with M = H^-1 B

    Batched: u [K, upper_dim], v [K, lower_dim]; the closed forms take one run's u.
    """

    name = "quadratic"
    batched = True

    def __init__(
        self, upper_dim=5, lower_dim=8, condition=10.0, rho=0.1, seed=0, device="cpu", dtype=None
    ):
        self.device = torch.device(device)
        self.dtype = dtype or torch.get_default_dtype()
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(
            torch.randn(lower_dim, lower_dim, generator=gen, dtype=torch.float64)
        )
        eigenvalues = torch.logspace(0, math.log10(condition), lower_dim, dtype=torch.float64)
        h = q @ torch.diag(eigenvalues) @ q.T
        b = torch.randn(lower_dim, upper_dim, generator=gen, dtype=torch.float64)
        a = torch.randn(lower_dim, generator=gen, dtype=torch.float64)
        as_tensor = lambda x: x.to(self.dtype).to(self.device)  # noqa: E731
        self.hessian, self.b, self.a = as_tensor(h), as_tensor(b), as_tensor(a)
        self.rho = rho
        self.upper_dim, self.lower_dim = upper_dim, lower_dim
        self.lipschitz = float(eigenvalues.max())

    def init_variables(self, generators):
        runs = [
            (
                torch.randn(self.upper_dim, generator=generator, dtype=self.dtype),
                torch.randn(self.lower_dim, generator=generator, dtype=self.dtype),
            )
            for generator in generators
        ]
        u = torch.stack([pair[0] for pair in runs]).to(self.device)
        v = torch.stack([pair[1] for pair in runs]).to(self.device)
        return {"u": u}, {"v": v}

    def f(self, u, v, batch):
        return 0.5 * _sum((v["v"] - self.a) ** 2) + 0.5 * self.rho * _sum(u["u"] ** 2)

    def g(self, u, v, batch):
        lower = v["v"]
        return 0.5 * _sum(lower * (lower @ self.hessian.T)) - _sum(lower * (u["u"] @ self.b.T))

    def lower_solution(self, u):
        return torch.linalg.solve(self.hessian, self.b @ u)

    def hypergradient(self, u):
        """Exact d/du f(u, v*(u)) for one run's u."""
        m = torch.linalg.solve(self.hessian, self.b)
        return m.T @ (m @ u - self.a) + self.rho * u

    def optimum(self):
        m = torch.linalg.solve(self.hessian, self.b)
        lhs = m.T @ m + self.rho * torch.eye(self.upper_dim, dtype=self.dtype, device=self.device)
        u_star = torch.linalg.solve(lhs, m.T @ self.a)
        return {"u": u_star}, {"v": self.lower_solution(u_star)}


BUILTIN_PROBLEMS = {cls.name: cls for cls in (SMD20, SMD21, SMD23, SMD24, Quadratic)}


class SyntheticTask(Task):
    """Full-batch problems: the metrics are distance to the solution, f and |grad_v g|."""

    def evaluate(self, u, v):
        problem = self.problem
        with torch.enable_grad():
            v_live = autodiff.leaves(v)
            upper_batch, lower_batch = problem.sample_batches(self.eval_stream)
            bound = problem.bind(autodiff.detached(u), upper_batch, lower_batch)
            f = bound.f(v_live)
            gv = autodiff.grad(bound.g(v_live), v_live)
        upper_loss = f.detach().tolist()
        lower_grad_norm = autodiff.norm_sq(gv).sqrt().tolist()
        errors = problem.upper_error(u, v)
        metrics = []
        for run in range(self.runs):
            point = {"upper_loss": upper_loss[run], "lower_grad_norm": lower_grad_norm[run]}
            if errors is not None:
                point["upper_error"] = errors[run]
            metrics.append(point)
        return metrics


def _problem_class(target: str) -> type[BilevelProblem]:
    """The class task.problem._target_ names; a ConfigError when it is not a usable problem."""
    try:
        cls = get_class(target)
    except Exception as err:  # hydra wraps import errors; say which key to fix
        raise ConfigError(f"task.problem._target_={target!r} could not be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, BilevelProblem)):
        raise ConfigError(
            f"task.problem._target_={target!r} is not a subclass of "
            "bilevel_bench.problem.BilevelProblem"
        )
    missing = missing_methods(cls)
    if missing:
        raise ConfigError(missing_method(cls, missing[0]))
    return cls


def _named(cls: type) -> str:
    name = getattr(cls, "name", BilevelProblem.name)
    return cls.__name__ if name == BilevelProblem.name else str(name)


def dataset_name(cfg) -> str:
    """The rows' dataset column before the problem is built (a run whose problem fails to build
    still names it): the built-in problem, or your class's `name` (else its class name)."""
    target = cfg.task.problem.get("_target_")
    if target is None:
        return str(cfg.dataset.name)
    try:
        return _named(get_class(target))
    except Exception:  # not importable: the run fails on that, with its own message
        return str(target).rsplit(".", 1)[-1]


def build(cfg, device, seeds) -> SyntheticTask:
    problem_cfg = dict(cfg.task.problem)
    target = problem_cfg.pop("_target_", None)
    dtype = getattr(torch, cfg.dtype)
    if target is None:
        dataset = dict(cfg.dataset)
        name = dataset.pop("name")
        if name not in BUILTIN_PROBLEMS:
            raise ConfigError(
                f"dataset={name} is not a synthetic problem; choose one of "
                f"{', '.join(BUILTIN_PROBLEMS)} or set task.problem._target_=your.module.Class"
            )
        cls, kwargs = BUILTIN_PROBLEMS[name], dataset
    else:
        cls, kwargs = _problem_class(target), problem_cfg
    # The runner fills device / dtype for constructors that accept them (documented contract).
    parameters = inspect.signature(cls).parameters
    for key, value in (("device", device), ("dtype", dtype)):
        if key in parameters and key not in kwargs:
            kwargs[key] = value
    try:  # arguments that do not fit are a config error; what the constructor raises is a failure
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        key = "task.problem" if target is not None else "dataset"
        raise ConfigError(
            f"{cls.__name__} cannot be constructed from {key}: {err}; its arguments are "
            f"{', '.join(parameters) or 'none'}"
        ) from err
    problem = cls(**kwargs)
    dataset_name = getattr(problem, "name", cls.__name__)
    if dataset_name == BilevelProblem.name:
        dataset_name = cls.__name__
    return SyntheticTask(problem, cfg, dataset_name, seeds, device)

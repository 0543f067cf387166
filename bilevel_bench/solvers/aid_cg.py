"""AID-CG (Grazzi et al. ICML 2020; Ji, Yang, Liang ICML 2021): approximate implicit
differentiation with conjugate gradients, as its own label in the results.

T plain gradient steps on v, then T2 CG iterations on H q = grad_v f (warm-started from the
previous q), hypergradient grad_u f - J q: ApproxGrad with linsolve=cg and no damping, sharing
its code (bilevel_bench.hypergrad.ConjugateGradient).
"""

from __future__ import annotations

from bilevel_bench.solvers.approxgrad import ApproxGrad, fixed_solve


class AIDCG(ApproxGrad):
    name = "aid_cg"
    handles_constraints = False
    params = fixed_solve(
        "cg",
        "cg: AID-CG is ApproxGrad's conjugate-gradient solve",
        T2=(10, "CG iterations per upper step"),
    )

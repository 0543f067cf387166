"""stocBiO (Ji, Yang, Liang; ICML 2021): the Neumann-series approximation of H^-1.

T gradient steps on v; then q = eta sum_{i=0..Q} (I - eta H)^i grad_v f, which tends to
+H^-1 grad_v f for eta < 2 / L; hypergradient grad_u f - J q. ApproxGrad with linsolve=neumann
(bilevel_bench.hypergrad.Neumann, no warm start). Defaults: the reference code's T = 10,
Q = 10 (T2 = Q + 1 = 11 terms), eta = lr_q = 0.1. Left out: the stochastic version's fresh
minibatch per term (the engine draws one lower batch per upper step; every term uses it).
"""

from __future__ import annotations

from bilevel_bench.solvers.approxgrad import ApproxGrad, fixed_solve


class StocBiO(ApproxGrad):
    name = "stocbio"
    handles_constraints = False
    params = fixed_solve(
        "neumann",
        "neumann: stocBiO is ApproxGrad's truncated Neumann sum",
        T2=(11, "terms of the Neumann sum, Q + 1 (reference Q = 10)"),
        lr_q=(0.1, "eta of the Neumann sum (reference 0.1); needs eta < 2 / L of g"),
    )

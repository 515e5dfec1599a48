"""Parabolic obstacle problems: the free-boundary (PDE) side of optimal stopping.

``fb.solve(fb.black_scholes(kind="put", strike=40.0, rate=0.06, vol=0.2, maturity=1.0))`` prices
an American put by Crank–Nicolson with a Rannacher start and an exact LCP solve per step, and
returns the value on the grid with interpolation, delta, gamma and the exercise boundary.
See ``docs/freeboundary.md``.
"""

from .lcp import (
    LCPConvergenceError,
    brennan_schwartz,
    matvec,
    policy_iteration,
    psor,
    thomas,
    ul_factor,
    ul_solve,
)
from .mesh import SinhMesh, UniformMesh, build_mesh
from .problem import ObstacleProblem, black_scholes, brownian_linear_cost, gbm_log_coefficients
from .solve import LCP_METHODS, Result, solve

__all__ = [
    "ObstacleProblem", "black_scholes", "brownian_linear_cost", "gbm_log_coefficients",
    "UniformMesh", "SinhMesh", "build_mesh", "solve", "Result", "LCP_METHODS",
    "LCPConvergenceError", "brennan_schwartz", "psor", "policy_iteration", "thomas",
    "ul_factor", "ul_solve", "matvec",
]

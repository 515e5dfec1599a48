"""Layer 1 of odedepth: numerical methods with no neural-network notions.

Submodules (import them directly, e.g. ``from solvers import ode``):

- :mod:`solvers.ode`: batched explicit Runge--Kutta solvers with per-sample step control,
  horizons, dense output, terminal events with differentiable event times and adjoints.
- :mod:`solvers.sde`: stochastic flows with per-sample stopping.
- :mod:`solvers.stopping`: discrete-time optimal stopping on simulated paths.
- :mod:`solvers.freeboundary`: parabolic obstacle problems (free boundaries).

Depends on torch, numpy and scipy only; never on :mod:`odedepth`.
"""

"""Event-boundary stopping: a learned function whose zero level set ends integration.

g_phi(t, h) = a (t / t1) + net_phi(features(t, h, prediction)) with a > 0 learnable (softplus),
so that the score drifts upwards with depth and a sample that learns nothing stops by the drift.
Used as a terminal event of the ODE solver, its zero crossing tau(x) is differentiable: by the
implicit function theorem,

    d tau / d phi = -(d g / d phi) / (d g / d t + grad_h g . f(tau, h(tau))),

which :func:`solvers.ode.solve` propagates, so the objective l(y_hat(tau), y) + c tau
(:func:`odedepth.losses.stopped_objective`) trains phi end to end.

Reference: Chen, Amos, Nickel, "Learning neural event functions for ordinary differential
equations", ICLR 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import StoppingRule
from .hazard import RuleFeatures

__all__ = ["EventBoundaryRule"]


class EventBoundaryRule(StoppingRule):
    """A learned signed score g_phi(t, h); stop at its first zero crossing.

    **Arguments:**

    - `features`: a :class:`RuleFeatures`.
    - `hidden`: hidden width (0: linear in the features).
    - `init_stop`: fraction of the horizon at which the initial rule stops (it starts as
      g = drift (t / t1 - init_stop), with the network's output scaled down).
    - `drift`: initial slope a of the time term.
    """

    def __init__(self, features: RuleFeatures, hidden: int = 16, init_stop: float = 0.5,
                 drift: float = 4.0):
        super().__init__()
        if not isinstance(features, RuleFeatures):
            raise TypeError(f"EventBoundaryRule: features must be RuleFeatures, got "
                            f"{type(features).__name__}")
        if not 0.0 < init_stop <= 1.0:
            raise ValueError(f"EventBoundaryRule: init_stop must lie in (0, 1], got {init_stop}")
        if not (math.isfinite(drift) and drift > 0):
            raise ValueError(f"EventBoundaryRule: drift must be positive, got {drift}")
        self.features = features
        k = features.n_features
        self.net = (nn.Sequential(nn.Linear(k, hidden), nn.Tanh(), nn.Linear(hidden, 1))
                    if hidden else nn.Linear(k, 1))
        last = self.net[-1] if hidden else self.net
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.fill_(-drift * init_stop)
        self.raw_drift = nn.Parameter(torch.tensor(math.log(math.expm1(drift))))

    def score(self, depth: Tensor, state: Tensor | None, logits: Tensor | None) -> Tensor:
        x = self.features(depth, state, logits)
        drift = nn.functional.softplus(self.raw_drift).to(x.dtype)
        return drift * x[:, 0] + self.net(x)[:, 0]

"""Hazard stopping: a learned halting intensity, the continuous analogue of ACT / PonderNet.

A sample at depth t with state h halts in [t, t + dt) with probability lambda(t, h) dt, given it
has not halted before, where lambda = softplus(net(features)) >= 0. Its survival is
S(t) = P(tau > t) = exp(-Lambda(t)), Lambda(t) = int_0^t lambda ds, and the stopping time has the
density lambda(t) S(t) on [0, T) with the remaining mass S(T) at the horizon T. The expected
objective E[l(tau) + c tau + int_0^tau gamma l ds] is then an integral along the trajectory
(see :class:`odedepth.losses.FlowObjective`), exact and differentiable, with no sampling.

At inference the rule is deterministic: a sample stops when its survival falls to `survival`
(default 0.5, the median of tau), i.e. when Lambda(t) >= -log(survival). The cumulative hazard
Lambda is integrated *with* the state by :meth:`odedepth.flows.ODEBlock.solve` (the rule declares
one running integral, `n_aug = 1`), so halting is an event of the solver.

On a discrete trajectory (exits after blocks) the same intensity gives PonderNet-style halting
probabilities p_k = S_{k-1} (1 - exp(-lambda_k Delta_k)), the last exit taking the rest.

References: Graves, "Adaptive computation time for recurrent neural networks", 2016;
Banino, Balaguer, Blundell, "PonderNet: learning to ponder", 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..trajectory import DepthTrajectory
from .base import StoppingRule, first_true_or_last

__all__ = ["RuleFeatures", "HazardRule"]

_FEATURE_KINDS = ("confidence", "state", "both")


class RuleFeatures(nn.Module):
    """The inputs a learned stopping rule may look at: depth, state, prediction (never the label).

    **Arguments:**

    - `kind`: `"confidence"`: `[t/t1, max prob, top-1 minus top-2 prob, normalised entropy,
      -log max prob]` from the logits (5 features, independent of the architecture);
      `"state"`: `[t/t1, h]` (flattened state); `"both"`: the concatenation.
    - `t1`: depth scale (the horizon the rule is trained on).
    - `state_dim`: flattened state size, required for `"state"` and `"both"`.

    **Returns:** `features(t, h, logits)` -> `(batch, n_features)`.
    """

    def __init__(self, kind: str = "confidence", t1: float = 1.0, state_dim: int | None = None):
        super().__init__()
        if kind not in _FEATURE_KINDS:
            raise ValueError(f"RuleFeatures: kind must be one of {_FEATURE_KINDS}, got {kind!r}")
        if not (math.isfinite(t1) and t1 > 0):
            raise ValueError(f"RuleFeatures: t1 must be positive and finite, got {t1}")
        if kind != "confidence" and (state_dim is None or state_dim < 1):
            raise ValueError(f"RuleFeatures: kind={kind!r} needs a positive state_dim")
        self.kind, self.t1, self.state_dim = kind, float(t1), state_dim

    @property
    def n_features(self) -> int:
        n = 1
        if self.kind in ("confidence", "both"):
            n += 4
        if self.kind in ("state", "both"):
            n += self.state_dim
        return n

    def forward(self, t: Tensor, h: Tensor | None, logits: Tensor | None) -> Tensor:
        ref = logits if logits is not None else h
        if ref is None:
            raise ValueError("RuleFeatures: needs the state or the logits")
        b = ref.shape[0]
        t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
        t = t.expand(b) if t.dim() == 0 else t
        if t.shape != (b,):
            raise ValueError(f"RuleFeatures: depth must have shape ({b},), got {tuple(t.shape)}")
        parts = [(t / self.t1)[:, None]]
        if self.kind in ("confidence", "both"):
            if logits is None or logits.dim() != 2 or logits.shape[1] < 2:
                raise ValueError("RuleFeatures: confidence features need logits of shape "
                                 f"(batch, n_classes >= 2), got "
                                 f"{None if logits is None else tuple(logits.shape)}")
            logp = logits.log_softmax(dim=-1)
            p = logp.exp()
            top2 = p.topk(2, dim=-1).values
            ent = -(p * logp).sum(-1) / math.log(logits.shape[1])
            parts += [top2[:, :1], (top2[:, 0] - top2[:, 1])[:, None], ent[:, None],
                      -logp.amax(-1, keepdim=True)]
        if self.kind in ("state", "both"):
            if h is None or h[0].numel() != self.state_dim:
                raise ValueError(f"RuleFeatures: state must have {self.state_dim} features per "
                                 f"sample, got {None if h is None else tuple(h.shape)}")
            parts.append(h.reshape(b, -1))
        return torch.cat(parts, dim=1)


class HazardRule(StoppingRule):
    """A learned halting intensity lambda_phi(t, h) >= 0 (softplus of a small network).

    **Arguments:**

    - `features`: a :class:`RuleFeatures` (what the rule looks at).
    - `hidden`: hidden width of the intensity network (0 = linear in the features).
    - `survival`: inference threshold in (0, 1): stop once S(t) <= survival (0.5 = median).
    - `init_rate`: initial intensity (per unit depth), e.g. ~1/T.

    Use with :meth:`odedepth.flows.ODEBlock.solve` (`stop=rule`) for per-sample halting, with
    :class:`odedepth.losses.FlowObjective` for training, or on a
    :class:`~odedepth.DepthTrajectory` (:meth:`stop_index`, :meth:`halting_probs`).
    """

    memoryless = False  # the decision depends on the integral of the hazard, not only on (t, h)
    n_aug = 1  # ... which ODEBlock integrates with the state: one extra channel

    def __init__(self, features: RuleFeatures, hidden: int = 16, survival: float = 0.5,
                 init_rate: float = 1.0):
        super().__init__()
        if not isinstance(features, RuleFeatures):
            raise TypeError(f"HazardRule: features must be RuleFeatures, got "
                            f"{type(features).__name__}")
        if not 0.0 < survival < 1.0:
            raise ValueError(f"HazardRule: survival must lie in (0, 1), got {survival}")
        if not (math.isfinite(init_rate) and init_rate > 0):
            raise ValueError(f"HazardRule: init_rate must be positive, got {init_rate}")
        self.features = features
        k = features.n_features
        if hidden:
            self.net = nn.Sequential(nn.Linear(k, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(k, 1)
        last = self.net[-1] if hidden else self.net
        with torch.no_grad():  # start from a near-constant intensity init_rate
            last.weight.mul_(0.1)
            last.bias.fill_(math.log(math.expm1(init_rate)))
        self.survival = float(survival)

    @property
    def threshold(self) -> float:
        """Cumulative-hazard level -log(survival) at which inference stops."""
        return -math.log(self.survival)

    def hazard(self, depth: Tensor, state: Tensor | None, logits: Tensor | None) -> Tensor:
        """`(batch,)` intensity lambda(t, h) >= 0."""
        return nn.functional.softplus(self.net(self.features(depth, state, logits))[:, 0])

    # ------------------------------------------------------------- continuous (with ODEBlock)
    def aug_rates(self, t: Tensor, h: Tensor, logits: Tensor | None) -> Tensor:
        """d Lambda / dt = lambda(t, h), as a `(batch, 1)` running integral."""
        return self.hazard(t, h, logits)[:, None]

    def aug_score(self, t: Tensor, h: Tensor, logits: Tensor | None, a: Tensor) -> Tensor:
        """Signed score Lambda(t) + log(survival): crosses zero where S(t) = survival."""
        return a[:, 0] - self.threshold

    def score(self, depth, state, logits):
        raise ValueError("HazardRule depends on the integrated hazard: halt a flow with "
                         "ODEBlock.solve(stop=rule) or use stop_index on a DepthTrajectory")

    def event_fn(self, head=None):
        raise ValueError("HazardRule needs its cumulative hazard integrated with the state: "
                         "pass it as ODEBlock.solve(stop=rule, head=head)")

    # --------------------------------------------------------------- discrete (trajectories)
    def cumulative_hazard(self, traj: DepthTrajectory) -> Tensor:
        """`(batch, n)` Lambda at each depth of a trajectory: sum_{j<=k} lambda_j Delta_j with
        Delta_j = d_j - d_{j-1} (d_{-1} = 0), the right-point rule of the integral."""
        if not isinstance(traj, DepthTrajectory):
            raise TypeError(f"HazardRule expects a DepthTrajectory, got {type(traj).__name__}")
        b, n = traj.batch_size, traj.n_depths
        d = traj.depth_grid()
        flat_states = None if traj.states is None else traj.states.reshape(
            b * n, *traj.states.shape[2:])
        lam = self.hazard(d.reshape(-1), flat_states,
                          traj.outputs.reshape(b * n, *traj.outputs.shape[2:])).reshape(b, n)
        delta = torch.diff(d, dim=1, prepend=torch.zeros_like(d[:, :1]))
        return (lam * delta).cumsum(dim=1)

    def halting_probs(self, traj: DepthTrajectory) -> Tensor:
        """`(batch, n)` probability of halting at each depth (PonderNet form; rows sum to 1,
        the last visited depth takes the remaining mass)."""
        lam_cum = self.cumulative_hazard(traj)
        surv = torch.exp(-lam_cum)
        prev = torch.cat([torch.ones_like(surv[:, :1]), surv[:, :-1]], dim=1)
        p = prev - surv
        valid = traj.valid_mask()
        last = traj.last_index()
        p = torch.where(valid, p, torch.zeros_like(p))
        at_last = torch.nn.functional.one_hot(last, traj.n_depths).to(p.dtype).bool()
        return torch.where(at_last, prev, p)

    def stop_index(self, traj: DepthTrajectory) -> Tensor:
        """First depth where the survival falls to `survival` (else the last visited)."""
        lam_cum = self.cumulative_hazard(traj)
        return first_true_or_last((lam_cum >= self.threshold) & traj.valid_mask(),
                                  traj.last_index())

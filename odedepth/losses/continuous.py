"""Objectives along continuous-depth flows, and the expected stopped loss on trajectories.

The objective of a sample with state h(t), head output y_hat(t) = head(h(t)), label y and a
stopping time tau <= T is

    J = E[ l(y_hat(tau), y) + c tau + int_0^tau gamma(s) l(y_hat(s), y) ds ] + regularisers,

with c >= 0 the running cost per unit depth and gamma >= 0 the stage-cost weight (the continuous
form of the stage costs of Puttschneider et al. 2025: intermediate outputs are penalised too).

For a hazard rule (halting density lambda S on [0, T), atom S(T) at T; see
:class:`odedepth.stopping.HazardRule`) the expectation is an integral along the trajectory:

    J = int_0^T S(t) [ lambda(t) l(t) + c + gamma(t) l(t) ] dt + S(T) l(T),

since E[tau] = int_0^T S dt and E[int_0^tau gamma l ds] = int_0^T gamma l S ds. :class:`FlowObjective`
integrates it (and the regularisers) as extra channels of the ODE state, so the value is exact to
the solver's tolerance and differentiable with respect to the flow, the head and the rule.

Regularisers, all running integrals:

- kinetic energy int ||f(t, h)||^2 dt and Jacobian Frobenius norm int ||d f / d h||_F^2 dt, the
  latter by Hutchinson's estimator E_eps ||eps^T (d f / d h)||^2 with one Gaussian eps per sample
  (Finlay, Jacobsen, Nurbekyan, Oberman, "How to train your neural ODE", ICML 2020);
- **ours**: a depth regulariser rewarding diminishing returns, int_0^T w(t) ||f(t, h)||^2 dt with
  w increasing (w(t) = exp(kappa t / T) or t / T). Late motion costs more than early motion, so the
  flow does its work early and the gain from going deeper decays: the "diminishing returns"
  condition under which Qi (2025, "Optimal depth of neural networks") proves the optimal stopping
  depth finite on an infinite horizon. Qi's own L_depth is not public; this form is ours.

Squared norms are averaged over the state's entries (not summed) so that weights transfer across
widths.

End-time sampling (Ghosh et al., "STEER", NeurIPS 2020): :func:`sample_end_time` draws T' ~ U(T - b,
T + b) per sample during training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..flows.ode_block import Augmentation, FlowSolution, ODEBlock
from ..stopping.base import StoppingRule
from ..trajectory import DepthTrajectory

__all__ = ["FlowObjective", "ObjectiveValue", "flow_objective", "stopped_objective",
           "expected_stopped_loss", "sample_end_time", "depth_weight"]


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def _check_nonneg(name: str, value: float, who: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{who}: {name} must be a finite number >= 0, got {value}")
    return v


def depth_weight(t: Tensor, kind: str = "exp", kappa: float = 2.0, t1: float = 1.0) -> Tensor:
    """The increasing weight w(t) of the depth regulariser (ours): `"exp"`: exp(kappa t / t1);
    `"linear"`: t / t1. `t1` > 0 and `kappa` >= 0 (so that w never decreases)."""
    if not (math.isfinite(t1) and t1 > 0):
        raise ValueError(f"depth_weight: the horizon t1 must be a positive finite number, got {t1}")
    if not (math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"depth_weight: kappa must be a finite number >= 0 (w increasing), "
                         f"got {kappa}")
    if kind == "exp":
        return torch.exp(kappa * t / t1)
    if kind == "linear":
        return t / t1
    raise ValueError(f"depth_weight: kind must be 'exp' or 'linear', got {kind!r}")


@dataclass
class ObjectiveValue:
    """Per-sample parts of the objective (all `(batch,)`) and the solve behind them.

    - `total`: what to minimise (mean it over the batch): stopped loss + c E[tau] + stage cost
      + weighted regularisers.
    - `stopped_loss`: E[l(tau)]; `expected_tau`: E[tau]; `stage`: E[int_0^tau gamma l ds].
    - `kinetic`, `jacobian`, `depth_reg`: the raw regulariser integrals (None when off).
    - `solution`: the :class:`~odedepth.flows.FlowSolution`.
    """

    total: Tensor
    stopped_loss: Tensor
    expected_tau: Tensor
    stage: Tensor
    kinetic: Tensor | None
    jacobian: Tensor | None
    depth_reg: Tensor | None
    solution: FlowSolution


class FlowObjective(Augmentation):
    """The expected stopped objective and the regularisers as running integrals of a flow.

    **Arguments:**

    - `head`: maps states to logits.
    - `rule`: a :class:`~odedepth.stopping.HazardRule` (stopping time distributed by its
      intensity) or None (stop at the horizon T: the fixed-depth objective).
    - `cost`: running cost c >= 0 per unit depth.
    - `stage_weight`: gamma >= 0, a number or a callable gamma(t) -> `(batch,)`.
    - `loss_fn`: `loss_fn(logits, target) -> (batch,)`, cross-entropy by default.
    - `kinetic`, `jacobian`, `depth_reg`: weights (>= 0) of the kinetic, Jacobian-Frobenius
      (Hutchinson) and depth (ours) regularisers; 0 switches a channel off.
    - `depth_kind`, `kappa`: the weight w(t) of the depth regulariser (:func:`depth_weight`),
      on the scale `t1`.

    Channels, in order: [Lambda, int S lambda l, int S gamma l, int S] (with a rule) or [stage]
    (without), then
    kinetic, jacobian, depth as switched on. Per-sample extras passed to the solver are
    `(target, eps)` (eps: the Hutchinson probe, fixed along each sample's trajectory).
    """

    def __init__(self, head: nn.Module, *, rule: StoppingRule | None = None, cost: float = 0.0,
                 stage_weight: float | Callable = 0.0, loss_fn: Callable | None = None,
                 kinetic: float = 0.0, jacobian: float = 0.0, depth_reg: float = 0.0,
                 depth_kind: str = "exp", kappa: float = 2.0, t1: float = 1.0):
        who = "FlowObjective"
        if rule is not None and not hasattr(rule, "hazard"):
            raise TypeError(f"{who}: rule must be a HazardRule (a halting intensity) or None, "
                            f"got {type(rule).__name__}; for event rules use stopped_objective")
        self.head, self.rule = head, rule
        self.cost = _check_nonneg("cost", cost, who)
        if callable(stage_weight):
            self.gamma = stage_weight
            self.use_stage = True
        else:
            g = _check_nonneg("stage_weight", stage_weight, who)
            self.gamma = (lambda t, g=g: torch.full_like(t, g))
            self.use_stage = g > 0
        self.loss_fn = _ce if loss_fn is None else loss_fn
        self.w_kin = _check_nonneg("kinetic", kinetic, who)
        self.w_jac = _check_nonneg("jacobian", jacobian, who)
        self.w_depth = _check_nonneg("depth_reg", depth_reg, who)
        depth_weight(torch.zeros(1), depth_kind, kappa, t1)  # validates depth_kind, kappa and t1
        self.depth_kind, self.kappa, self.t1 = depth_kind, float(kappa), float(t1)
        self.n_main = 4 if rule is not None else 1
        self.needs_state_grad = self.w_jac > 0
        self.n_aug = self.n_main + (self.w_kin > 0) + (self.w_jac > 0) + (self.w_depth > 0)

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        out = self.loss_fn(self.head(h), y)
        if out.shape != (h.shape[0],):
            raise ValueError(f"FlowObjective: loss_fn must return shape (batch,), got "
                             f"{tuple(out.shape)}")
        return out

    def rates(self, t, h, dh, a, args):
        y, eps = args
        b = h.shape[0]
        cols = []
        if self.rule is not None or self.use_stage:
            ell = self._loss(h, y)
        if self.rule is not None:
            lam = self.rule.hazard(t, h, self.head(h))
            surv = torch.exp(-a[:, 0])
            gam = self.gamma(t) if self.use_stage else 0.0
            cols += [lam, surv * lam * ell, surv * gam * ell, surv]
        else:
            cols.append(self.gamma(t) * ell if self.use_stage else h.new_zeros(b))
        flat_dh = dh.reshape(b, -1)
        sq = flat_dh.pow(2).mean(dim=1)
        if self.w_kin > 0:
            cols.append(sq)
        if self.w_jac > 0:
            cols.append(_hutchinson_jacobian(t, h, dh, eps))
        if self.w_depth > 0:
            cols.append(depth_weight(t, self.depth_kind, self.kappa, self.t1) * sq)
        return torch.stack(cols, dim=1)


def _hutchinson_jacobian(t, h, dh, eps) -> Tensor:
    """||eps^T df/dh||^2 / n_entries, an unbiased estimate of ||df/dh||_F^2 / n_entries."""
    if not (h.requires_grad and dh.requires_grad):
        raise ValueError("jacobian regulariser: the state must require grad inside the solve "
                         "(ODEBlock arranges it when the augmentation sets needs_state_grad)")
    (vjp,) = torch.autograd.grad(dh, h, grad_outputs=eps.reshape(dh.shape),
                                 create_graph=torch.is_grad_enabled())
    return vjp.reshape(h.shape[0], -1).pow(2).mean(dim=1)


def flow_objective(block: ODEBlock, h0: Tensor, target: Tensor, objective: FlowObjective, *,
                   t1: float | Tensor | None = None, generator: torch.Generator | None = None,
                   **solve_kw) -> ObjectiveValue:
    """Integrate `objective` along the flow of `block` from `h0` and assemble J per sample.

    **Arguments:**

    - `block`: the :class:`~odedepth.flows.ODEBlock`.
    - `h0`: `(batch, *state)` initial states; `target`: `(batch,)` labels (or whatever
      `loss_fn` takes).
    - `objective`: a :class:`FlowObjective`.
    - `t1`: horizon override (a `(batch,)` tensor for end-time sampling).
    - `generator`: for the Hutchinson probes.
    - `solve_kw`: passed to :meth:`ODEBlock.solve` (e.g. `method="rk4", dt=0.1`).

    **Returns:** an :class:`ObjectiveValue`; minimise `value.total.mean()`.
    """
    if not isinstance(objective, FlowObjective):
        raise TypeError(f"flow_objective: objective must be a FlowObjective, got "
                        f"{type(objective).__name__}")
    if target.shape[:1] != h0.shape[:1]:
        raise ValueError(f"flow_objective: target has {target.shape[0]} samples, h0 "
                         f"{h0.shape[0]}")
    eps = torch.randn(h0.shape, dtype=h0.dtype, device=h0.device, generator=generator) \
        if objective.w_jac > 0 else h0.new_zeros(h0.shape[0], 1)
    sol = block.solve(h0, t1=t1, aug=objective, args=(target, eps), **solve_kw)
    a = sol.aug
    ell_T = objective._loss(sol.h, target)
    T = sol.t
    if objective.rule is not None:
        surv_T = torch.exp(-a[:, 0])
        stopped_loss = a[:, 1] + surv_T * ell_T  # density lambda S on [0, T), atom S(T) at T
        stage, e_tau = a[:, 2], a[:, 3]
        total = stopped_loss + objective.cost * e_tau + stage
    else:
        e_tau = T
        stage = a[:, 0]
        stopped_loss = ell_T
        total = ell_T + objective.cost * T + stage
    k = objective.n_main
    kin = jac = dep = None
    if objective.w_kin > 0:
        kin = a[:, k]
        total = total + objective.w_kin * kin
        k += 1
    if objective.w_jac > 0:
        jac = a[:, k]
        total = total + objective.w_jac * jac
        k += 1
    if objective.w_depth > 0:
        dep = a[:, k]
        total = total + objective.w_depth * dep
    return ObjectiveValue(total=total, stopped_loss=stopped_loss, expected_tau=e_tau,
                          stage=stage, kinetic=kin, jacobian=jac, depth_reg=dep, solution=sol)


def stopped_objective(block: ODEBlock, h0: Tensor, target: Tensor, rule: StoppingRule,
                      head: nn.Module, *, cost: float = 0.0, loss_fn: Callable | None = None,
                      t1: float | None = None, **solve_kw):
    """l(head(h(tau)), y) + c tau per sample, with tau the event time of `rule` on the flow.

    Gradients reach the rule's parameters through the event time (implicit function theorem in
    the solver: d tau / d phi = -(d g / d phi) / (dg/dt + grad_h g . f) at the crossing), so an
    :class:`~odedepth.stopping.EventBoundaryRule` trains end to end on it. Samples that never
    cross stop at the horizon (there the gradient w.r.t. the rule is zero).

    **Returns:** `(objective (batch,), FlowSolution)`.
    """
    c = _check_nonneg("cost", cost, "stopped_objective")
    if target.shape[:1] != h0.shape[:1]:
        raise ValueError(f"stopped_objective: target has {target.shape[0]} samples, h0 "
                         f"{h0.shape[0]}")
    sol = block.solve(h0, t1=t1, stop=rule, head=head, **solve_kw)
    loss_fn = _ce if loss_fn is None else loss_fn
    return loss_fn(head(sol.h), target) + c * sol.t, sol


def expected_stopped_loss(traj: DepthTrajectory, target: Tensor, halting, cost_per_depth: float
                          = 0.0, *, stage_weight: float = 0.0, loss_fn: Callable | None = None,
                          use_cost: bool = False, reduction: str = "mean") -> Tensor:
    """Expected stopped objective on a discrete trajectory (exits after blocks or checkpoints).

    E_k[ l_k + c d_k + gamma sum_{j<k} l_j (d_{j+1} - d_j) ] with k distributed by the halting
    probabilities p (rows summing to 1 over visited depths), d_k the depth (or the cumulative
    cost of the trajectory if `use_cost`), l_k the loss of the output at depth k.

    **Arguments:**

    - `traj`: a :class:`~odedepth.DepthTrajectory`; `target`: labels `(batch,)`.
    - `halting`: `(batch, n)` halting probabilities, or a rule: one with `halting_probs(traj)`
      (e.g. :class:`~odedepth.stopping.HazardRule`, PonderNet form) or any
      :class:`~odedepth.stopping.StoppingRule` (deterministic: all mass at its `stop_index`).
    - `cost_per_depth`: c >= 0; `stage_weight`: gamma >= 0.
    - `loss_fn`: `(logits, target) -> (batch,)`, cross-entropy by default.
    - `reduction`: `"mean"`, `"sum"` or `"none"`.

    **Returns:** the reduced objective (differentiable in the outputs and the probabilities).
    """
    if not isinstance(traj, DepthTrajectory):
        raise TypeError(f"expected_stopped_loss: traj must be a DepthTrajectory, got "
                        f"{type(traj).__name__}")
    c = _check_nonneg("cost_per_depth", cost_per_depth, "expected_stopped_loss")
    g = _check_nonneg("stage_weight", stage_weight, "expected_stopped_loss")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"expected_stopped_loss: reduction must be mean/sum/none, got {reduction!r}")
    b, n = traj.batch_size, traj.n_depths
    if isinstance(halting, Tensor):
        p = halting
    elif hasattr(halting, "halting_probs"):
        p = halting.halting_probs(traj)
    elif isinstance(halting, StoppingRule):
        idx = halting.stop_index(traj)
        p = nn.functional.one_hot(idx, n).to(traj.outputs.dtype)
    else:
        raise TypeError("expected_stopped_loss: halting must be a (batch, n) tensor or a "
                        f"StoppingRule, got {type(halting).__name__}")
    if p.shape != (b, n):
        raise ValueError(f"expected_stopped_loss: halting probabilities must have shape ({b}, "
                         f"{n}), got {tuple(p.shape)}")
    valid = traj.valid_mask()
    if (p < -1e-6).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("expected_stopped_loss: halting probabilities must be >= 0 and sum to 1")
    if (p[~valid].abs() > 1e-6).any():
        raise ValueError("expected_stopped_loss: halting mass on depths a sample did not visit")
    ell = traj.losses(target, _ce if loss_fn is None else loss_fn)
    ell = torch.where(valid, ell, torch.zeros_like(ell))
    d = traj.cost_grid() if use_cost else traj.depth_grid()
    stage = torch.zeros_like(ell)
    if g > 0 and n > 1:
        seg = ell[:, :-1] * (traj.depth_grid()[:, 1:] - traj.depth_grid()[:, :-1])
        stage[:, 1:] = g * seg.cumsum(dim=1)
    per = (p * (ell + c * d + stage)).sum(dim=1)
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


def sample_end_time(t1: float, batch: int, spread: float, *, generator=None, device=None,
                    dtype=None) -> Tensor:
    """End-time sampling (STEER; Ghosh et al. 2020): `(batch,)` horizons ~ U(t1 - b, t1 + b).

    **Arguments:** `t1` > 0 the nominal horizon; `spread` b in [0, t1).
    """
    if not (math.isfinite(t1) and t1 > 0):
        raise ValueError(f"sample_end_time: t1 must be positive and finite, got {t1}")
    if not 0.0 <= spread < t1:
        raise ValueError(f"sample_end_time: spread must lie in [0, t1), got {spread}")
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    return t1 - spread + 2.0 * spread * u

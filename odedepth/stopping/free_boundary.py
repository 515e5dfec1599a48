"""Free-boundary stopping: stop where stopping costs no more than continuing.

Along a flow (or a network with exits) a sample at depth t_k may stop and pay

    cost_k = l_k + c t_k + gamma sum_{j<k} l_j (t_{j+1} - t_j)

(the loss of its prediction there, the running cost and the stage cost so far), or continue.
The optimal rule stops on the *free boundary* where the loss of stopping q(t, h) meets the
continuation value C(t, h), the best expected cost reachable from (t, h) by going on
(Qi 2025, "Optimal depth of neural networks": the forward pass as an optimal stopping problem;
its continuous-depth form is an obstacle problem whose free boundary is this set).

Neither function can read the label at inference, so both are regressions on label-free
features of the prediction (confidence, margin, entropy; see
:class:`~odedepth.stopping.RuleFeatures`), fitted on training trajectories backward in depth by
Longstaff--Schwartz (realised future cost of the rule already fitted for later depths), with
:func:`solvers.stopping.longstaff_schwartz` (rewards = -cost). The signed score is

    score(t, h) = C(t, h) - q(t, h)   (stop where >= 0),

defined at the fitted checkpoints and interpolated linearly in t between them, so that it is a
continuous function of depth and serves as a terminal event of the ODE solver.

Reference: Longstaff & Schwartz, "Valuing American options by simulation: a simple least-squares
approach", Rev. Financ. Stud. 14 (2001).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from solvers import stopping as _stopping

from ..trajectory import DepthTrajectory
from .base import StoppingRule
from .hazard import RuleFeatures

__all__ = ["FreeBoundaryRule"]


class FreeBoundaryRule(StoppingRule):
    """Loss of stopping q(t, h) against continuation value C(t, h), fitted by regression.

    **Arguments:**

    - `features`: a :class:`RuleFeatures` (the time column is dropped: each checkpoint has its
      own regression, as in Longstaff--Schwartz).
    - `cost`: running cost c >= 0 per unit depth; `stage_weight`: gamma >= 0.
    - `basis`: regression basis of :func:`solvers.stopping.longstaff_schwartz` (`"poly1"`,
      `"poly2"`, `"poly3"`).
    - `ridge`: relative Tikhonov weight of the regressions.
    - `margin`: stop where C - q >= margin (0: the boundary itself).

    Call :meth:`fit` on training trajectories before use. A fitted rule's `state_dict` (the
    checkpoints `grid`, regression coefficients `coef` and standardisation `shift`, `scale`)
    loads into a fresh instance built with the same arguments, with
    ``nn.Module.load_state_dict`` or :func:`odedepth.checkpoint.load_state_dict`.
    """

    def __init__(self, features: RuleFeatures, cost: float, stage_weight: float = 0.0,
                 basis: str = "poly2", ridge: float = 1e-6, margin: float = 0.0):
        super().__init__()
        if not isinstance(features, RuleFeatures):
            raise TypeError(f"FreeBoundaryRule: features must be RuleFeatures, got "
                            f"{type(features).__name__}")
        for name, v in (("cost", cost), ("stage_weight", stage_weight)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"FreeBoundaryRule: {name} must be a finite number >= 0, got {v}")
        if basis not in ("poly1", "poly2", "poly3"):
            raise ValueError(f"FreeBoundaryRule: basis must be poly1, poly2 or poly3, got {basis!r}")
        self.features = features
        self.cost, self.stage_weight = float(cost), float(stage_weight)
        self.basis, self.ridge, self.margin = basis, float(ridge), float(margin)
        self.fit_result = None
        self._monomials = None
        for name in self._lazy_buffers:
            self.register_buffer(name, None)

    #: buffers that are None until :meth:`fit` (or a load) sizes them from the data
    _lazy_buffers = ("grid", "coef", "shift", "scale")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Load a fitted rule into a fresh one: the fit's buffers are allocated with the
        incoming shapes and dtypes before the usual copy (all four or none)."""
        given = [n for n in self._lazy_buffers if prefix + n in state_dict]
        if given and len(given) < len(self._lazy_buffers):
            absent = [prefix + n for n in self._lazy_buffers if n not in given]
            error_msgs.append(f"FreeBoundaryRule: a fitted state needs all of "
                              f"{list(self._lazy_buffers)}; missing {absent}")
            return
        for n in given:
            v = state_dict[prefix + n]
            if self._buffers.get(n) is None and isinstance(v, Tensor):
                self._buffers[n] = torch.empty_like(v)
        if given:
            self._monomials = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ------------------------------------------------------------------------------ fitting
    def _x(self, depth, state, logits) -> Tensor:
        return self.features(depth, state, logits)[:, 1:]  # drop t / t1

    def stopping_costs(self, traj: DepthTrajectory, target: Tensor,
                       loss_fn: Callable | None = None) -> Tensor:
        """`(batch, n)` realised cost of stopping at each depth (see the module docstring)."""
        ell = traj.losses(target, loss_fn)
        d = traj.depth_grid()
        cost = ell + self.cost * d
        if self.stage_weight > 0 and traj.n_depths > 1:
            stage = torch.zeros_like(ell)
            stage[:, 1:] = (ell[:, :-1] * d.diff(dim=1)).cumsum(dim=1)
            cost = cost + self.stage_weight * stage
        return cost

    @torch.no_grad()
    def fit(self, traj: DepthTrajectory, target: Tensor, loss_fn: Callable | None = None):
        """Fit q and C on trajectories (all samples must share the depths and visit them all).

        **Arguments:** `traj` (states needed only for state features), `target` labels,
        `loss_fn` `(logits, target) -> (batch,)` (cross-entropy by default).

        **Returns:** `self`. `self.fit_result` keeps the :class:`solvers.stopping.StoppingFit`
        (its `value` is minus the in-sample mean cost of the fitted rule).
        """
        if not isinstance(traj, DepthTrajectory):
            raise TypeError(f"FreeBoundaryRule.fit: traj must be a DepthTrajectory, got "
                            f"{type(traj).__name__}")
        if traj.depths.dim() != 1 or traj.n_depths < 2:
            raise ValueError("FreeBoundaryRule.fit: needs depths shared by the batch, at least 2")
        if traj.valid is not None and not traj.valid.all():
            raise ValueError("FreeBoundaryRule.fit: every sample must visit every depth")
        if target.shape[:1] != (traj.batch_size,):
            raise ValueError(f"FreeBoundaryRule.fit: target must have {traj.batch_size} "
                             f"entries, got shape {tuple(target.shape)}")
        b, n = traj.batch_size, traj.n_depths
        flat_states = None if traj.states is None else traj.states.reshape(
            b * n, *traj.states.shape[2:])
        x = self._x(traj.depth_grid().reshape(-1), flat_states,
                    traj.outputs.reshape(b * n, *traj.outputs.shape[2:])).reshape(b, n, -1)
        costs = self.stopping_costs(traj, target, loss_fn)
        if not torch.isfinite(costs).all():
            raise ValueError("FreeBoundaryRule.fit: non-finite losses on the trajectories")
        fit = _stopping.longstaff_schwartz(x, -costs, basis=self.basis, ridge=self.ridge)
        pol = fit.policy
        self.fit_result = fit
        self.grid = traj.depths.detach().to(torch.float64).clone()
        self.coef = pol.coef.detach().clone()          # (n - 1, p, 2): continuation, reward
        self.shift = pol.shift.detach().clone()        # (n, k) per-time standardisation
        self.scale = pol.scale.detach().clone()
        return self

    # ---------------------------------------------------------------------------- scoring
    def _values_at(self, k: Tensor, x: Tensor) -> Tensor:
        """`(m,)` fitted C - q at checkpoint index k (per sample) for features x, float64."""
        k = k.clamp(max=self.coef.shape[0] - 1)  # the last checkpoint holds the one before
        z = (x - self.shift[k]) / self.scale[k]
        design = self._design(z)
        fitted = torch.einsum("mp,mpc->mc", design, self.coef[k])
        # rewards are minus costs: reward_est - continuation = C_cost - q_cost
        return fitted[:, 1] - fitted[:, 0]

    def _design(self, z: Tensor) -> Tensor:
        """All monomials of total degree <= d of the columns of z, constant first, in the
        column order of :func:`solvers.stopping.basis_functions` (``itertools`` combinations
        with replacement), as one gather-and-multiply per degree (this runs inside the
        solver's event function, every step and every root-finding iteration)."""
        n, k = z.shape
        if self._monomials is None or self._monomials[0] != k:
            degree = int(self.basis[-1])
            idx = [torch.tensor(list(itertools.combinations_with_replacement(range(k), d)),
                                dtype=torch.long).reshape(-1, d) for d in range(1, degree + 1)]
            self._monomials = (k, idx)
        cols = [z.new_ones(n, 1)]
        for ix in self._monomials[1]:
            cols.append(z[:, ix.to(z.device)].prod(dim=-1))
        return torch.cat(cols, dim=1)

    def score(self, depth: Tensor, state: Tensor | None, logits: Tensor | None) -> Tensor:
        """`(batch,)` C(t, h) - q(t, h) - margin, linear in t between the fitted checkpoints."""
        if self.coef is None:
            raise ValueError("FreeBoundaryRule: call fit(...) on training trajectories first")
        x = self._x(depth, state, logits).to(torch.float64)
        t = torch.as_tensor(depth, dtype=torch.float64, device=x.device).expand(x.shape[0])
        g = self.grid.to(x.device)
        n = len(g)
        k = (torch.searchsorted(g, t.contiguous(), right=True) - 1).clamp(0, n - 2)
        w = ((t - g[k]) / (g[k + 1] - g[k])).clamp(0.0, 1.0)
        # both neighbouring checkpoints in one pass (this runs in the solver's event function)
        v = self._values_at(torch.cat([k, k + 1]), torch.cat([x, x])).view(2, -1)
        s = (1 - w) * v[0] + w * v[1]
        ref = logits if logits is not None else state
        return (s - self.margin).to(ref.dtype)

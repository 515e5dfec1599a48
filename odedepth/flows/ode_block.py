"""ODEBlock: a continuous-depth block integrated by :func:`solvers.ode.solve`.

The block integrates dh/dt = f(t, h) from h(0) = h0 to a horizon t1, with three extras that the
rest of odedepth builds on:

- **checkpoints** (`t_eval`): the states there become a :class:`~odedepth.DepthTrajectory` of
  kind `"time"` (head outputs, states, and the cumulative number of field evaluations reached at
  each checkpoint as its cost);
- **augmented integrals** (`aug`): running integrals such as the survival of a hazard, the
  expected stopped loss, kinetic energy or a depth regulariser ride along with the state as extra
  channels, so they are integrated to the solver's accuracy and are differentiable;
- **per-sample halting** (`stop`): a :class:`~odedepth.stopping.StoppingRule` becomes a terminal
  event of the solver; each sample ends at its own zero crossing of the rule's score and leaves
  the batch (the solver compacts the active set), so compute follows the samples' own depths.
"""

from __future__ import annotations

import math
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from solvers import ode as _ode
from solvers.ode.adjoint import reachable_grad_tensors

from ..trajectory import DepthTrajectory

__all__ = ["ODEBlock", "FlowSolution", "Augmentation", "trajectory_from_solution"]


class Augmentation:
    """Interface of a running integral carried along with the state.

    Subclasses set `n_aug` (number of scalar channels per sample) and implement
    `rates(t, h, dh, a, args) -> (batch, n_aug)`, the time derivative of the channels given the
    time `t` `(batch,)`, the state `h`, its derivative `dh = f(t, h)`, the current channels `a`
    `(batch, n_aug)` and the per-sample extra tensors `args` (a tuple, gathered with the active
    samples; e.g. the labels). Channels start at zero unless `init(h0, args)` says otherwise.
    Set `needs_state_grad = True` when `rates` differentiates `dh` w.r.t. `h` (then `h` requires
    grad inside the solve).
    """

    n_aug: int = 0
    needs_state_grad: bool = False

    def init(self, h0: Tensor, args: tuple) -> Tensor:
        return h0.new_zeros(h0.shape[0], self.n_aug)

    def rates(self, t: Tensor, h: Tensor, dh: Tensor, a: Tensor, args: tuple) -> Tensor:
        raise NotImplementedError


@dataclass
class FlowSolution:
    """What :meth:`ODEBlock.solve` returns (per sample unless said otherwise).

    - `h`: `(batch, *state)` state at the end (the event time where the sample halted, else t1).
    - `t`: `(batch,)` end time (the stopping time tau for halted samples).
    - `halted`: `(batch,)` bool, whether the stopping rule ended the sample before t1.
    - `aug`: `(batch, n_aug)` augmented integrals at the end, or None.
    - `t_eval`: `(n,)` checkpoints or None; `hs`: `(batch, n, *state)` states there;
      `augs`: `(batch, n, n_aug)` integrals there.
    - `nfe`: `(batch,)` field evaluations spent on each sample; `checkpoint_nfe`: `(batch, n)`
      evaluations made at times <= each checkpoint (when requested).
    - `status`: `(batch,)` solver status codes; `stats`: the solver's statistics.
    """

    h: Tensor
    t: Tensor
    halted: Tensor
    nfe: Tensor
    status: Tensor
    stats: dict
    aug: Tensor | None = None
    t_eval: Tensor | None = None
    hs: Tensor | None = None
    augs: Tensor | None = None
    checkpoint_nfe: Tensor | None = None


class ODEBlock(nn.Module):
    """Integrate a vector field over depth with :func:`solvers.ode.solve`.

    **Arguments:**

    - `field`: a module `field(t, h)` with `t` `(batch,)` and `h` `(batch, *state)`, per-sample
      elementwise (see :mod:`odedepth.flows.fields`).
    - `t1`: the horizon T > 0 (the "depth" of the block).
    - `method`, `rtol`, `atol`, `dt`, `max_steps`: passed to the solver (`dt` for fixed-step
      methods such as `"rk4"`, or the first step of adaptive ones).
    - `adjoint`: backpropagate with the adjoint method (memory O(1) in the number of steps).
      The adjoint differentiates every tensor requiring grad that the dynamics reach: the
      parameters of the field, of `head`, of the stopping rule and of the augmentation, and of
      any module or tensor reachable from them through attributes, containers, bound methods,
      ``functools.partial`` and the closures, defaults and named globals of plain functions
      (e.g. a learnable `FlowObjective(stage_weight=module)` or a module `loss_fn`). Pass
      `adjoint_options={"adjoint_params": [...]}` to `solve` to list them yourself. A solve
      with a stopping rule (`stop`) always backpropagates through the solver instead, also
      when `adjoint=True` (the adjoint has no gradients through event times): halting trains
      with backpropagation's memory, and halts at inference (e.g. under ``torch.no_grad()``)
      exactly as a block with `adjoint=False`.
    - `event_tol`: absolute tolerance on stopping times located by events (default: the
      solver's, a few machine epsilons); e.g. 1e-4 T saves root-finding iterations at inference.

    After each call, `block.last_nfe` is the mean number of field evaluations per sample and
    `block.last_stats` the solver's per-sample statistics.

    **Returns:** `block(h0)` returns h(t1); :meth:`solve` gives everything else.

    Reference: Chen, Rubanova, Bettencourt, Duvenaud, "Neural ordinary differential equations",
    NeurIPS 2018.
    """

    def __init__(self, field: nn.Module, t1: float = 1.0, method: str = "dopri5",
                 rtol: float = 1e-3, atol: float = 1e-4, adjoint: bool = False,
                 dt: float | None = None, max_steps: int = 10_000,
                 event_tol: float | None = None):
        super().__init__()
        _check_horizon(t1, "ODEBlock")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"ODEBlock: rtol and atol must be positive, got {rtol}, {atol}")
        self.field = field
        self.t1, self.method, self.rtol, self.atol = float(t1), method, float(rtol), float(atol)
        self.adjoint, self.dt, self.max_steps = bool(adjoint), dt, int(max_steps)
        if event_tol is not None and not (math.isfinite(event_tol) and event_tol > 0):
            raise ValueError(f"ODEBlock: event_tol must be positive, got {event_tol}")
        self.event_tol = event_tol
        self.last_nfe: float = float("nan")
        self.last_stats: dict = {}

    def forward(self, h0: Tensor, t1: float | Tensor | None = None) -> Tensor:
        return self.solve(h0, t1=t1).h

    # ------------------------------------------------------------------------------ solve
    def solve(self, h0: Tensor, *, t1: float | Tensor | None = None, t_eval=None,
              stop=None, head: nn.Module | None = None, aug: Augmentation | None = None,
              args: tuple = (), count_checkpoint_nfe: bool = False, **solver_kw) -> FlowSolution:
        """Integrate from h0 at t = 0 to `t1` (default `self.t1`; a `(batch,)` tensor gives each
        sample its own horizon, as in end-time sampling).

        **Arguments:**

        - `h0`: `(batch, *state)` initial state.
        - `t_eval`: optional increasing checkpoints in [0, t1] (shared by the batch).
        - `stop`: optional :class:`~odedepth.stopping.StoppingRule`; each sample halts at the
          first zero crossing of its score (an event of the solver). Rules carrying their own
          running integrals (e.g. :class:`~odedepth.stopping.HazardRule`) integrate them here.
        - `head`: the module mapping states to logits, for rules that read the prediction.
        - `aug`: an :class:`Augmentation` integrated with the state.
        - `args`: tuple of per-sample tensors `(batch, ...)` handed to `aug` (e.g. labels).
        - `count_checkpoint_nfe`: record the evaluations made up to each checkpoint.
        - `solver_kw`: overrides of `method`, `rtol`, `atol`, `dt`, `max_steps`, `adjoint`,
          `event_tol` (and `adjoint_options` for the solver's adjoint; both are ignored when
          `stop` is given, see the class docstring).

        **Returns:** a :class:`FlowSolution`. An empty batch (`h0` of shape `(0, *state)`)
        gives a solution whose per-sample fields are empty, without calling the solver.

        **Raises:** `ValueError` for malformed inputs, and when the stopping score at t = 0 is
        not finite (NaN or inf) for some samples (e.g. a rule whose weights diverged), naming
        them: such a score would otherwise read as a halt at tau = 0.
        """
        if not isinstance(h0, Tensor) or h0.dim() < 2 or not h0.is_floating_point():
            raise ValueError("ODEBlock.solve: h0 must be a floating tensor of shape "
                             f"(batch, *state), got {_describe(h0)}")
        if not torch.isfinite(h0).all():
            raise ValueError("ODEBlock.solve: h0 contains NaN or inf")
        b = h0.shape[0]
        t_end = self._horizon(t1, h0)
        args = tuple(args)
        for i, a in enumerate(args):
            if not isinstance(a, Tensor) or a.shape[:1] != (b,):
                raise ValueError(f"ODEBlock.solve: args[{i}] must be a tensor with batch size {b}"
                                 f", got {_describe(a)}")
        if t_eval is not None:
            t_eval = torch.as_tensor(t_eval, dtype=h0.dtype, device=h0.device)
            if t_eval.dim() != 1 or len(t_eval) == 0:
                raise ValueError("ODEBlock.solve: t_eval must be a non-empty 1-D sequence")
            if (t_eval.diff() <= 0).any() or t_eval[0] < 0 or (t_eval[-1] > t_end + 1e-12).any():
                raise ValueError("ODEBlock.solve: t_eval must increase within [0, t1]")
        if stop is not None and not callable(getattr(stop, "score", None)):
            raise TypeError(f"ODEBlock.solve: stop must be a StoppingRule (with a score method), "
                            f"got {type(stop).__name__}")
        rule_aug = 0 if stop is None else int(getattr(stop, "n_aug", 0))
        if stop is not None and rule_aug == 0 and not getattr(stop, "memoryless", True):
            raise ValueError(f"ODEBlock.solve: {type(stop).__name__} depends on history and "
                             "cannot halt a flow; use it on a DepthTrajectory")
        n_user = 0 if aug is None else int(aug.n_aug)
        n_aug = n_user + rule_aug
        state_shape = tuple(h0.shape[1:])
        d = math.prod(state_shape)
        packed = n_aug > 0
        opts = dict(method=self.method, rtol=self.rtol, atol=self.atol, dt=self.dt,
                    max_steps=self.max_steps, adjoint=self.adjoint)
        event_tol = solver_kw.pop("event_tol", self.event_tol)
        unknown = set(solver_kw) - set(opts) - {"adjoint_options"}
        if unknown:
            raise ValueError(f"ODEBlock.solve: unknown solver options {sorted(unknown)}")
        opts.update(solver_kw)
        if stop is not None and opts["adjoint"]:
            # the solver's adjoint has no event gradients: halting backpropagates through the
            # solver (with grad off nothing is backpropagated, so this only lifts the refusal)
            opts["adjoint"] = False
            opts.pop("adjoint_options", None)
        elif not opts["adjoint"]:
            opts.pop("adjoint_options", None)
        elif "adjoint_options" not in opts:
            # f below is a closure, so the adjoint must be told which tensors it depends on:
            # everything requiring grad reachable from the objects the dynamics call
            opts["adjoint_options"] = {"adjoint_params": _reachable_grad_tensors(
                self.field, head, stop, aug)}

        def unpack(y):
            if not packed:
                return y, None
            return y[:, :d].reshape(y.shape[0], *state_shape), y[:, d:]

        need_grad = bool(getattr(aug, "needs_state_grad", False))
        calls = []  # (sample index, t) of every evaluation, for checkpoint NFE accounting

        def f(t, y, extra):
            idx, user_args = extra[0], extra[1:]
            if count_checkpoint_nfe:
                calls.append((idx.detach(), t.detach()))
            h, a = unpack(y)
            if not need_grad:
                dh = self.field(t, h)
            else:
                # the augmentation differentiates f w.r.t. h (e.g. a Jacobian regulariser)
                with torch.enable_grad():
                    if not h.requires_grad:
                        h = h.detach().requires_grad_(True)
                    dh = self.field(t, h)
            if not packed:
                return dh
            parts = [dh.reshape(dh.shape[0], d)]
            if n_user:
                with torch.enable_grad() if need_grad else _nullcontext():
                    parts.append(aug.rates(t, h, dh, a[:, :n_user], user_args))
            if rule_aug:
                logits = None if head is None else head(h)
                parts.append(stop.aug_rates(t, h, logits))
            return torch.cat(parts, dim=1)

        event = None
        if stop is not None:
            def g(t, y, *_):
                h, a = unpack(y)
                logits = None if head is None else head(h)
                if rule_aug:
                    return stop.aug_score(t, h, logits, a[:, n_user:])
                return stop.score(t, h, logits)
            event = _ode.Event(g, direction=0, terminal=True, tol=event_tol)

        if packed:
            a0 = [] if not n_user else [aug.init(h0, args)]
            if rule_aug:
                a0.append(h0.new_zeros(b, rule_aug))
            y0 = torch.cat([h0.reshape(b, d)] + a0, dim=1)
        else:
            y0 = h0
        idx_all = torch.arange(b, device=h0.device)
        extra = (idx_all,) + args

        if b == 0:
            return self._empty_solution(y0, unpack, state_shape, t_eval, event is not None,
                                        count_checkpoint_nfe)

        # Samples whose score is already >= 0 at t = 0 stop there without integrating; the
        # solver only sees the others (an event needs a sign change to be located).
        active = torch.ones(b, dtype=torch.bool, device=h0.device)
        if event is not None:
            with torch.no_grad():
                s0 = g(torch.zeros(b, dtype=h0.dtype, device=h0.device), y0)
            bad = ~torch.isfinite(s0)
            if bad.any():
                which = bad.nonzero().squeeze(1).tolist()
                shown = ", ".join(map(str, which[:10])) + (" ..." if len(which) > 10 else "")
                raise ValueError(
                    f"ODEBlock.solve: the stopping score of {type(stop).__name__} at t=0 is not "
                    f"finite (NaN or inf) for {len(which)} of {b} samples (indices {shown}); "
                    "check the rule's parameters (e.g. after a diverged update) and its inputs")
            active = s0 < 0
        sel = active.nonzero().squeeze(1)

        out_y = y0.clone() if not active.all() else None
        out_t = torch.zeros(b, dtype=h0.dtype, device=h0.device)
        status = torch.full((b,), 1, dtype=torch.long, device=h0.device)
        nfe = torch.zeros(b, dtype=torch.long, device=h0.device)
        ys = None
        stats: dict = {}
        if len(sel):
            sub = (lambda x: x) if active.all() else (lambda x: x.index_select(0, sel))
            te = t_end if t_end.dim() == 0 else sub(t_end)
            sol = _ode.solve(f, sub(y0), (0.0, te), t_eval=t_eval, event=event,
                             args=tuple(sub(x) for x in extra), **opts)
            stats = dict(sol.stats)
            if active.all():
                out_y, out_t = sol.y, sol.t
                status = torch.as_tensor(sol.status, device=h0.device).long()
                nfe = torch.as_tensor(stats["nfe"], device=h0.device).long()
                ys = sol.ys if t_eval is not None else None
            else:
                out_y = out_y.index_copy(0, sel, sol.y)
                out_t = out_t.index_copy(0, sel, sol.t.to(out_t.dtype))
                status = status.index_copy(0, sel, torch.as_tensor(sol.status).long())
                nfe = nfe.index_copy(0, sel, torch.as_tensor(stats["nfe"]).long())
                if t_eval is not None:
                    # halted-at-zero samples stay at h0 (they are invalid beyond 0 anyway)
                    ys = y0[:, None].expand(b, len(t_eval), *y0.shape[1:]).clone()
                    ys = ys.index_copy(0, sel, sol.ys)
        elif t_eval is not None:
            ys = y0[:, None].expand(b, len(t_eval), *y0.shape[1:])
        halted = status == int(_ode.Status.EVENT) if event is not None else torch.zeros_like(active)
        h_end, a_end = unpack(out_y)
        hs = augs = None
        if ys is not None:
            n = ys.shape[1]
            flat = ys.reshape(b * n, *ys.shape[2:])
            hs_f, augs_f = unpack(flat)
            hs = hs_f.reshape(b, n, *state_shape)
            augs = None if augs_f is None else augs_f.reshape(b, n, -1)
        cp_nfe = None
        if count_checkpoint_nfe and t_eval is not None:
            cp_nfe = _checkpoint_counts(calls, t_eval, b, h0.device)
        self.last_nfe = float(nfe.double().mean())
        self.last_stats = stats
        return FlowSolution(h=h_end, t=out_t, halted=halted, nfe=nfe, status=status, stats=stats,
                            aug=a_end, t_eval=t_eval, hs=hs, augs=augs, checkpoint_nfe=cp_nfe)

    # ------------------------------------------------------------------------ helpers
    def _empty_solution(self, y0, unpack, state_shape, t_eval, has_event: bool,
                        count_checkpoint_nfe: bool) -> FlowSolution:
        """The solution of an empty batch: every per-sample field with batch size 0."""
        dev = y0.device
        h, a = unpack(y0.clone())
        none_long = torch.zeros(0, dtype=torch.long, device=dev)
        stats = {k: none_long.clone() for k in ("nfe", "n_steps", "n_accepted", "n_rejected")}
        if has_event:
            stats["event_mask"] = torch.zeros(0, dtype=torch.bool, device=dev)
        hs = augs = cp_nfe = None
        if t_eval is not None:
            n = len(t_eval)
            hs = y0.new_zeros(0, n, *state_shape)
            augs = None if a is None else y0.new_zeros(0, n, a.shape[1])
            if count_checkpoint_nfe:
                cp_nfe = torch.zeros(0, n, device=dev)
        self.last_nfe = float("nan")
        self.last_stats = stats
        return FlowSolution(h=h, t=y0.new_zeros(0), halted=torch.zeros(0, dtype=torch.bool,
                                                                       device=dev),
                            nfe=none_long, status=none_long.clone(), stats=stats, aug=a,
                            t_eval=t_eval, hs=hs, augs=augs, checkpoint_nfe=cp_nfe)

    def _horizon(self, t1, ref: Tensor) -> Tensor:
        if t1 is None:
            return torch.tensor(self.t1, dtype=ref.dtype, device=ref.device)
        t = torch.as_tensor(t1, dtype=ref.dtype, device=ref.device)
        if t.dim() == 0:
            _check_horizon(float(t), "ODEBlock.solve")
            return t
        if t.shape != (ref.shape[0],):
            raise ValueError(f"ODEBlock.solve: t1 must be a number or have shape "
                             f"({ref.shape[0]},), got {tuple(t.shape)}")
        if not (torch.isfinite(t).all() and (t > 0).all()):
            raise ValueError("ODEBlock.solve: every horizon t1 must be positive and finite")
        return t

    def trajectory(self, h0: Tensor, head: nn.Module, t_eval, *, keep_states: bool = True,
                   **solve_kw) -> DepthTrajectory:
        """Solve with checkpoints and return the :class:`~odedepth.DepthTrajectory` there
        (see :func:`trajectory_from_solution`)."""
        sol = self.solve(h0, t_eval=t_eval, count_checkpoint_nfe=True, **solve_kw)
        return trajectory_from_solution(sol, head, keep_states=keep_states)


def trajectory_from_solution(sol: FlowSolution, head: nn.Module, *,
                             keep_states: bool = True) -> DepthTrajectory:
    """A :class:`~odedepth.DepthTrajectory` (`kind="time"`) from a solve with checkpoints.

    **Arguments:**

    - `sol`: a :class:`FlowSolution` computed with `t_eval`.
    - `head`: maps states `(m, *state)` to outputs `(m, *out)`.
    - `keep_states`: store the states in the trajectory.

    **Returns:** the trajectory with `depths = t_eval`, `outputs = head(h(t_k))`, the states,
    and `cost` = cumulative field evaluations at each checkpoint when they were recorded
    (`count_checkpoint_nfe=True`), else None (then the depth itself is the cost).
    """
    if sol.hs is None:
        raise ValueError("trajectory_from_solution: the solve had no checkpoints (t_eval)")
    b, n = sol.hs.shape[:2]
    flat = sol.hs.reshape(b * n, *sol.hs.shape[2:])
    out = head(flat)
    out = out.reshape(b, n, *out.shape[1:])
    cost = None if sol.checkpoint_nfe is None else sol.checkpoint_nfe.to(sol.hs.dtype)
    valid = None
    if sol.halted.any():
        valid = sol.t_eval[None, :] <= sol.t[:, None] + 1e-12
        valid[:, 0] = True
    return DepthTrajectory(depths=sol.t_eval, outputs=out,
                           states=sol.hs if keep_states else None, cost=cost, kind="time",
                           valid=valid)


def _reachable_grad_tensors(*objs) -> tuple:
    """Tensors requiring grad that calling `objs` can use, each once, in a fixed order (what the
    solver's adjoint needs as `adjoint_params`): see ``solvers.ode.adjoint.reachable_grad_tensors``
    for what is walked."""
    return tuple(t for _, t in reachable_grad_tensors(*objs))


def _checkpoint_counts(calls, t_eval: Tensor, b: int, device) -> Tensor:
    if not calls:
        return torch.zeros(b, len(t_eval), device=device)
    idx = torch.cat([c[0].reshape(-1) for c in calls]).long()
    ts = torch.cat([c[1].reshape(-1).expand(len(c[0])) if c[1].dim() == 0 else c[1].reshape(-1)
                    for c in calls])
    bucket = torch.searchsorted(t_eval.to(ts.dtype).contiguous(), ts.contiguous(), right=False)
    counts = torch.zeros(b, len(t_eval) + 1, device=device)
    counts.index_put_((idx, bucket), torch.ones_like(ts, dtype=counts.dtype), accumulate=True)
    return counts.cumsum(dim=1)[:, :-1]


def _check_horizon(t1, who: str):
    try:
        ok = math.isfinite(float(t1)) and float(t1) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{who}: the horizon t1 must be a positive finite number, got {t1!r}")


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__

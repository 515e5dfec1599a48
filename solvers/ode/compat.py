"""torchdiffeq compatibility: run torchdiffeq-style code on our solver, and torchdiffeq on ours.

Two directions:

- :func:`odeint` / :func:`odeint_adjoint` accept torchdiffeq's call signature
  (``odeint(func, y0, t, rtol=1e-7, atol=1e-9, method=None, options=None)``, ``func(t, y)`` with a
  *scalar* time tensor, ``t`` a 1-D grid shared by everything, ``y0`` a tensor or a tuple of
  tensors) and return what torchdiffeq returns: ``(len(t), *y0.shape)`` (a tuple of such for a
  tuple state). To keep torchdiffeq's semantics -- the whole ``y0`` is *one* coupled system with
  one error norm and one step size -- the state is flattened into a single sample (batch 1) of
  :func:`solvers.ode.solve`. Use :func:`solvers.ode.solve` directly to get per-sample steps.
- :func:`solve_with_torchdiffeq` runs torchdiffeq itself on one of *our* problem specifications
  (``f(t, y)`` with per-sample ``t``, batch-first ``y0``, ``t_span``) so that benchmarks and tests
  can compare the two libraries on the same problem. torchdiffeq couples the batch: every sample
  shares the step sizes and the error norm is an RMS over the whole batch.

Differences that remain (documented, not hidden): our ``rk4`` is the classical 1/6-1/3-1/3-1/6
method while torchdiffeq's ``rk4`` is the 3/8 rule; for fixed-step methods with
``options={"step_size": h}`` torchdiffeq interpolates linearly between grid points while we
evaluate our dense output; ``event_fn`` must return a single value (torchdiffeq also accepts a
vector and stops at the first component to cross zero); no gradient with respect to ``t``. The
full list is in docs/ode_validation.md.

References: Chen et al., torchdiffeq (https://github.com/rtqichen/torchdiffeq), API of
``torchdiffeq.odeint`` and ``odeint_adjoint``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["TorchdiffeqSolution", "odeint", "odeint_adjoint", "solve_with_torchdiffeq"]

# torchdiffeq name -> ours.
_TO_OURS = {
    "dopri5": "dopri5", "dopri8": "dopri8", "bosh3": "bosh3", "tsit5": "tsit5",
    "euler": "euler", "midpoint": "midpoint", "rk4": "rk4", "heun2": "heun", "heun": "heun",
}
# ours -> torchdiffeq name.
_TO_TORCHDIFFEQ = {
    "dopri5": "dopri5", "dopri8": "dopri8", "bosh3": "bosh3", "tsit5": "tsit5",
    "euler": "euler", "midpoint": "midpoint", "rk4": "rk4", "heun": "heun2",
}
_FIXED = {"euler", "midpoint", "rk4", "heun"}
_OPTION_MAP = {"first_step": "first_step", "max_num_steps": "max_steps", "min_step": "dt_min",
               "max_step": "dt_max", "step_size": "dt"}


# ----------------------------------------------------------------------------------------------
# torchdiffeq-style front end on our solver
# ----------------------------------------------------------------------------------------------


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """torchdiffeq's ``odeint`` on :func:`solvers.ode.solve`.

    **Arguments:**

    - `func`: ``func(t, y)`` with ``t`` a 0-dim tensor and ``y`` shaped like `y0` (or a tuple).
    - `y0`: a tensor of any shape (the whole tensor is one system) or a tuple of tensors.
    - `t`: 1-D tensor of output times, strictly increasing or strictly decreasing (one time
      returns ``y0[None]``). Not differentiable: a `t` that requires grad raises.
    - `rtol`, `atol`: tolerances (torchdiffeq's defaults 1e-7 and 1e-9): scalars, tensors
      broadcastable to `y0`'s shape, or for a tuple `y0` a tuple with one per tensor.
    - `method`: a torchdiffeq method name (``"dopri5"`` default, ``"dopri8"``, ``"bosh3"``,
      ``"tsit5"``, ``"euler"``, ``"midpoint"``, ``"rk4"``, ``"heun2"``).
    - `options`: dict with any of ``step_size`` (fixed-step methods), ``first_step``,
      ``max_num_steps`` (default ``2**31 - 1`` as in torchdiffeq), ``min_step``, ``max_step``
      (adaptive methods). As in torchdiffeq, an option the method does not use is ignored with
      a warning (``step_size`` does not turn off an adaptive method's error control).
    - `event_fn`: optional ``event_fn(t, y) -> scalar tensor``; as in torchdiffeq, `t` must
      then be ``[t0, t1]`` (only its direction is used) and the solve runs until the event
      function crosses zero, over windows of doubling length starting with ``max(1, |t0|)``
      (up to ``|t - t0| = max(1e6, 1e3 |t1 - t0|)``). The event time is differentiable
      (implicit function theorem, also with respect to parameters of `event_fn`). Not with
      :func:`odeint_adjoint`.

    **Returns:** tensor ``(len(t), *y0.shape)`` (tuple of those for a tuple `y0`); with
    `event_fn`, ``(event_t, solution)`` where ``solution`` holds the states at ``t0`` and at
    the event, ``(2, *y0.shape)``.

    **Raises:** ``ValueError`` for a bad `t` (or one requiring grad), an unknown method or
    option, tolerances that do not fit `y0`; ``TypeError`` for a non-tensor `y0`.
    """
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, adjoint_options=None)


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None,
                   event_fn=None, adjoint_rtol=None, adjoint_atol=None, adjoint_method=None,
                   adjoint_options=None, adjoint_params=None):
    """torchdiffeq's ``odeint_adjoint`` on our backsolve adjoint (:mod:`solvers.ode.adjoint`).

    **Arguments:** as :func:`odeint`, plus

    - `adjoint_rtol`, `adjoint_atol`, `adjoint_method`: the backward solve's settings (default:
      the forward ones).
    - `adjoint_options`: ``{"norm": "seminorm"}`` for the seminorm of Kidger, Chen & Lyons
      (2021); other keys are rejected.
    - `adjoint_params`: tensors to differentiate; default ``func.parameters()`` (then `func`
      must be an ``nn.Module``, as in torchdiffeq).

    **Returns:** as :func:`odeint`, differentiable by the adjoint method.
    """
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError(
                "odeint_adjoint: func must be an nn.Module when adjoint_params is not given"
            )
        adjoint_params = tuple(func.parameters())
    adjoint_params = tuple(p for p in adjoint_params if p.requires_grad)
    ours = {"adjoint_params": adjoint_params}
    if adjoint_options:
        extra = set(adjoint_options) - {"norm"}
        if extra:
            raise ValueError(f"odeint_adjoint: unsupported adjoint_options {sorted(extra)}")
        norm = adjoint_options.get("norm")
        if norm not in (None, "seminorm"):
            raise ValueError("odeint_adjoint: adjoint_options['norm'] must be 'seminorm' "
                             f"(custom norm callables are not supported), got {norm!r}")
        ours["norm"] = norm
    if adjoint_rtol is not None:
        ours["rtol"] = adjoint_rtol
    if adjoint_atol is not None:
        ours["atol"] = adjoint_atol
    if adjoint_method is not None:
        ours["method"] = _our_method(adjoint_method)
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, adjoint_options=ours)


def _our_method(name):
    name = "dopri5" if name is None else name
    if not isinstance(name, str) or name not in _TO_OURS:
        raise ValueError(
            f"odeint: method {name!r} is not supported by the shim; choose one of {sorted(_TO_OURS)}"
        )
    return _TO_OURS[name]


def _flatten(y0):
    """`y0` (tensor or tuple of tensors) -> `(1, N)` and the shapes to undo it (None: tensor)."""
    if isinstance(y0, Tensor):
        return y0.reshape(1, -1), None
    if isinstance(y0, tuple) and y0 and all(isinstance(y, Tensor) for y in y0):
        dtype = y0[0].dtype
        if any(y.dtype != dtype for y in y0):
            raise TypeError("odeint: all tensors of a tuple y0 must share one dtype")
        return torch.cat([y.reshape(-1) for y in y0])[None], [y.shape for y in y0]
    raise TypeError(f"odeint: y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")


def _unflatten(z, shapes, shape, lead=()):
    """`z` (*lead, N) -> tensor (*lead, *shape), or a tuple of such for a tuple state."""
    if shapes is None:
        return z.reshape((*lead, *shape))  # a tuple, so that a 0-dim shape works too
    out, offset = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(z[..., offset: offset + n].reshape((*lead, *s)))
        offset += n
    return tuple(out)


def _check_grid(t, min_len):
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if t.dim() != 1 or t.numel() < min_len:
        raise ValueError(f"odeint: t must be a 1-D tensor with at least {min_len} time(s), got "
                         f"shape {tuple(t.shape)}")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError("odeint: t requires grad, but the shim does not differentiate with "
                         "respect to the times t (torchdiffeq does); detach t, or use "
                         "torchdiffeq for dL/dt")
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    dt = t[1:] - t[:-1]
    if not (bool((dt > 0).all()) or bool((dt < 0).all())):
        raise ValueError("odeint: t must be strictly increasing or strictly decreasing")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("odeint: t contains non-finite values")
    return t


def _flat_tol(tol, name, y0, shapes):
    """A tolerance shaped like `y0` (or a tuple of per-tensor tolerances for a tuple `y0`, as
    torchdiffeq accepts) -> a flat `(N,)` tensor matching the flattened state; scalars pass."""
    if shapes is None:
        if isinstance(tol, Tensor) and tol.dim() > 0:
            try:
                return torch.broadcast_to(tol, y0.shape).reshape(-1)
            except RuntimeError:
                raise ValueError(f"odeint: {name} of shape {tuple(tol.shape)} does not broadcast "
                                 f"to y0's shape {tuple(y0.shape)}") from None
        return tol
    if isinstance(tol, (tuple, list)):
        if len(tol) != len(shapes):
            raise ValueError(f"odeint: a tuple {name} must have one entry per tensor of y0 "
                             f"({len(shapes)}), got {len(tol)}")
        parts = []
        for i, (x, s) in enumerate(zip(tol, shapes)):
            x = torch.as_tensor(x, dtype=y0[0].dtype, device=y0[0].device)
            try:
                parts.append(torch.broadcast_to(x, s).reshape(-1))
            except RuntimeError:
                raise ValueError(f"odeint: {name}[{i}] of shape {tuple(x.shape)} does not "
                                 f"broadcast to y0[{i}]'s shape {tuple(s)}") from None
        return torch.cat(parts)
    if isinstance(tol, Tensor) and tol.dim() > 0:
        raise ValueError(f"odeint: for a tuple y0, {name} must be a scalar or a tuple with one "
                         f"tolerance per tensor, got a tensor of shape {tuple(tol.shape)}")
    return tol


# torchdiffeq's fixed-grid solvers take only step_size; its adaptive ones everything but it.
_ADAPTIVE_ONLY = {"first_step", "max_num_steps", "min_step", "max_step"}
# torchdiffeq's default max_num_steps (effectively unlimited).
_TD_MAX_STEPS = 2**31 - 1


def _shim_options(options, ours, method):
    kwargs = {}
    for key, value in dict(options or {}).items():
        if key not in _OPTION_MAP:
            raise ValueError(f"odeint: option {key!r} is not supported by the shim; supported: "
                             f"{sorted(_OPTION_MAP)}")
        fixed = ours in _FIXED
        if (key == "step_size" and not fixed) or (key in _ADAPTIVE_ONLY and fixed):
            # torchdiffeq warns and ignores options the method does not use; so do we (passing
            # step_size on as dt= would silently turn off an adaptive method's error control).
            kind = "adaptive" if not fixed else "fixed-step"
            warnings.warn(f"odeint: option {key!r} is ignored by the {kind} method "
                          f"{method or 'dopri5'!r} (as in torchdiffeq)", UserWarning, stacklevel=4)
            continue
        kwargs[_OPTION_MAP[key]] = value
    kwargs.setdefault("max_steps", _TD_MAX_STEPS)
    return kwargs


def _odeint(func, y0, t, rtol, atol, method, options, event_fn, adjoint_options):
    from . import solve

    if event_fn is not None and adjoint_options is not None:
        raise NotImplementedError(
            "odeint_adjoint: event_fn is not supported with the adjoint; use odeint (backprop "
            "through the solver differentiates the event time)"
        )
    ours = _our_method(method)
    kwargs = _shim_options(options, ours, method)
    if (adjoint_options is not None and adjoint_options.get("method") in _FIXED
            and ours not in _FIXED and "dt" not in kwargs):
        raise ValueError(
            f"odeint_adjoint: adjoint_method {adjoint_options['method']!r} is fixed-step but the "
            "shim has no step size for the backward solve (torchdiffeq steps it on the grid t); "
            "use an adaptive adjoint_method"
        )
    z0, shapes = _flatten(y0)
    shape = y0.shape if shapes is None else None
    t = _check_grid(t, 2 if event_fn is not None else 1).to(device=z0.device)
    n = t.numel()
    if n == 1:  # torchdiffeq returns y0 for a single output time without calling func
        return y0[None] if shapes is None else tuple(y[None] for y in y0)
    rtol = _flat_tol(rtol, "rtol", y0, shapes)
    atol = _flat_tol(atol, "atol", y0, shapes)

    def f(tt, z):
        # One sample: tt is (1,), hand func the 0-dim time torchdiffeq code expects.
        out = func(tt[0], _unflatten(z[0], shapes, shape))
        flat, _ = _flatten(out)
        return flat.to(z.dtype)

    common = dict(method=ours, rtol=rtol, atol=atol)
    if event_fn is not None:
        return _odeint_event(solve, f, z0, t, shapes, shape, event_fn, common, kwargs)
    if adjoint_options is not None:
        common.update(adjoint=True, adjoint_options=adjoint_options)
    t_eval = t.to(z0.dtype)
    if ours in _FIXED and "dt" not in kwargs:
        # torchdiffeq's fixed-grid solvers step exactly on the output grid: one step per interval.
        zs = [z0[0]]
        z = z0
        for k in range(n - 1):
            h = float(t[k + 1] - t[k])
            sol = solve(f, z, (float(t[k]), float(t[k + 1])), dt=abs(h), **common, **kwargs)
            z = sol.y
            zs.append(z[0])
        ys = torch.stack(zs)
    else:
        sol = solve(f, z0, (float(t[0]), float(t[-1])), t_eval=t_eval, **common, **kwargs)
        ys = sol.ys[0]
    return _unflatten(ys, shapes, shape, lead=(n,))


def _odeint_event(solve, f, z0, t, shapes, shape, event_fn, common, kwargs):
    from .event import Event

    if t.numel() != 2:
        raise ValueError(f"odeint: with event_fn, t must be [t0, t1] (len 2) as in torchdiffeq, "
                         f"got len(t) = {t.numel()}")

    def g(tt, z):
        val = event_fn(tt[0], _unflatten(z[0], shapes, shape))
        if not isinstance(val, Tensor) or val.numel() != 1:
            raise ValueError("odeint: event_fn must return a single value (a scalar tensor); "
                             "for several events per system use solvers.ode.solve")
        return val.reshape(1)

    t0 = float(t[0])
    direction = 1.0 if float(t[1]) > t0 else -1.0
    # torchdiffeq integrates until the event whatever t[1] is. One solve to a far horizon would
    # set our solver's step floor (8 eps max(|t0|, |t1|)) far too high in float32, so integrate
    # over windows of growing length instead: [t0, t0 + w], then doubled windows, restarting
    # from the previous window's end state (differentiable, so gradients chain through the
    # windows) until the event fires, up to |t - t0| = limit, with max_num_steps counted over
    # all windows together.
    limit = max(1e6, 1e3 * abs(float(t[1]) - t0))
    width = max(1.0, abs(t0))
    steps_left = kwargs.pop("max_steps")
    a, z = t0, z0
    while True:
        b = a + direction * width
        last = abs(b - t0) >= limit
        if last:
            b = t0 + direction * limit
        sol = solve(f, z, (a, b), event=Event(g), max_steps=steps_left, **common, **kwargs)
        if bool(sol.stats["event_mask"][0]):
            break
        if last:
            raise RuntimeError(f"odeint: the event function did not cross zero before t = {b:g}")
        steps_left -= int(sol.stats["n_steps"][0])
        if steps_left < 1:
            raise RuntimeError(f"odeint: max_num_steps reached at t = {b:g} before the event")
        kwargs.pop("first_step", None)  # the user's first step applies to the first window only
        a, z, width = b, sol.y, 2 * width
    ys = torch.stack([z0[0], sol.y[0]])
    return sol.t[0].to(t.dtype), _unflatten(ys, shapes, shape, lead=(2,))


# ----------------------------------------------------------------------------------------------
# torchdiffeq as a back end on our problem specification
# ----------------------------------------------------------------------------------------------


@dataclass
class TorchdiffeqSolution:
    """What :func:`solve_with_torchdiffeq` returns; attribute names as in ``ode.Solution``.

    ``stats`` values are per sample but identical across the batch, because torchdiffeq steps
    the batch together: ``nfe`` counts calls of the batched field.
    """

    t: Tensor
    y: Tensor
    ts: Tensor | None
    ys: Tensor | None
    status: Tensor
    stats: dict = field(default_factory=dict)

    @property
    def success(self) -> Tensor:
        return self.status == 0


class _Counted(nn.Module):
    """The field as torchdiffeq sees it: scalar t in, counts evaluations and step decisions."""

    def __init__(self, f, batch, dtype, args):
        super().__init__()
        self.f, self.batch, self.dtype, self.args = f, batch, dtype, args
        self.nfe = 0
        self.n_steps = 0
        self.n_accepted = 0
        self.n_rejected = 0

    def forward(self, t, y):
        self.nfe += 1
        tt = t.to(self.dtype).expand(self.batch)
        return self.f(tt, y) if self.args is None else self.f(tt, y, self.args)

    # torchdiffeq looks these callbacks up on the field it is given (callback_step runs before
    # every attempted step, fixed-grid solvers call only that one).
    def callback_step(self, t0, y0, dt):
        self.n_steps += 1

    def callback_accept_step(self, t0, y0, dt):
        self.n_accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.n_rejected += 1


def _shared_scalar(x, name, batch):
    if isinstance(x, Tensor):
        if x.dim() > 1 or (x.dim() == 1 and x.shape[0] != batch):
            raise ValueError(f"solve_with_torchdiffeq: {name} must be a float or a (batch,) tensor")
        flat = x.detach().reshape(-1)
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ValueError(
                f"solve_with_torchdiffeq: torchdiffeq needs one {name} shared by the whole batch; "
                "per-sample values differ (use solvers.ode.solve for per-sample horizons)"
            )
        return float(flat[0])
    return float(x)


def solve_with_torchdiffeq(f, y0: Tensor, t_span, *, method="dopri5", rtol=1e-6, atol=1e-8,
                           t_eval=None, max_steps=10_000, dt=None, first_step=None, args=None,
                           adjoint=False, throw=True, dt_min=0.0, dt_max=math.inf,
                           adjoint_options=None, **unsupported):
    """Run ``torchdiffeq.odeint`` on a problem given in :func:`solvers.ode.solve` form.

    **Arguments:**

    - `f`: ``f(t, y)`` (or ``f(t, y, args)``) with ``t`` ``(batch,)`` and ``y`` ``(batch, *state)``;
      called with the shared time expanded to ``(batch,)``.
    - `y0`: ``(batch, *state)``.
    - `t_span`: ``(t0, t1)`` floats, or ``(batch,)`` tensors whose entries are all equal.
    - `method`: one of our method names (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"tsit5"``,
      ``"euler"``, ``"midpoint"``, ``"rk4"``, ``"heun"``); a ``"torchdiffeq:"`` prefix is
      accepted. Note torchdiffeq's ``rk4`` is the 3/8 rule.
    - `rtol`, `atol`, `max_steps`, `dt` (fixed-step size), `first_step`, `args`: as in ``solve``.
      `dt` with an adaptive method raises (torchdiffeq cannot force fixed steps on it).
    - `dt_min`, `dt_max`: passed as torchdiffeq's ``min_step``/``max_step`` options (adaptive
      methods; ignored with fixed steps, as in ``solve``).
    - `t_eval`: ``(n,)`` or ``(batch, n)`` with identical rows.
    - `adjoint`: use ``torchdiffeq.odeint_adjoint`` (parameters of `f` if it is a Module).
    - `adjoint_options`: our keys mapped to torchdiffeq's: ``rtol``/``atol``/``method`` to
      ``adjoint_rtol``/``adjoint_atol``/``adjoint_method``, ``adjoint_params``, ``norm``
      (``"seminorm"``: ``adjoint_options={"norm": "seminorm"}``), ``max_steps`` to the backward
      ``max_num_steps``. Used only with `adjoint`, as in ``solve``.
    - `throw`: torchdiffeq raises on failure regardless; with ``throw=False`` a failure is turned
      into status 2 for every sample with NaN states.

    **Returns:** :class:`TorchdiffeqSolution` with ``t``, ``y``, ``ts``, ``ys``, ``status`` and
    ``stats`` (``nfe``, ``n_steps``, ``n_accepted``, ``n_rejected``, the same for every sample).

    **Raises:** ``ValueError`` for per-sample horizons or evaluation times (torchdiffeq has one
    time axis), unsupported options (events, dense output), `dt` with an adaptive method, a
    fixed-step adjoint method without `dt`, unknown `adjoint_options` keys.
    """
    import torchdiffeq

    # Options of solve() that only tune our own loop are ignored; anything that changes the
    # problem (events, dense output, ...) is refused.
    bad = sorted(k for k, v in unsupported.items()
                 if v is not None and v is not False
                 and k not in ("compact", "controller"))
    if bad:
        raise ValueError(f"solve_with_torchdiffeq: options {bad} have no torchdiffeq "
                         "equivalent")
    if not isinstance(y0, Tensor) or y0.dim() < 1:
        raise ValueError("solve_with_torchdiffeq: y0 must be a (batch, *state) tensor")
    name = method.split(":", 1)[1] if isinstance(method, str) \
        and method.lower().startswith("torchdiffeq:") else method
    if name not in _TO_TORCHDIFFEQ:
        raise ValueError(f"solve_with_torchdiffeq: unknown method {method!r}; choose one of "
                         f"{sorted(_TO_TORCHDIFFEQ)}")
    td_name = _TO_TORCHDIFFEQ[name]
    from torchdiffeq._impl.odeint import SOLVERS

    if td_name not in SOLVERS:
        raise ValueError(f"solve_with_torchdiffeq: this torchdiffeq has no {td_name!r} method")
    batch = y0.shape[0]
    t0 = _shared_scalar(t_span[0], "t_span[0]", batch)
    t1 = _shared_scalar(t_span[1], "t_span[1]", batch)
    grid = [t0]
    n_eval = 0
    if t_eval is not None:
        te = torch.as_tensor(t_eval).detach()
        if te.dim() == 2:
            if not bool((te == te[:1]).all()):
                raise ValueError("solve_with_torchdiffeq: t_eval rows differ; torchdiffeq needs "
                                 "one shared grid")
            te = te[0]
        te_list = [float(x) for x in te]
        n_eval = len(te_list)
        grid += te_list
    grid.append(t1)
    # torchdiffeq wants strictly monotone times: drop the duplicates of t0/t1 but remember where
    # each requested time landed.
    uniq = []
    for x in grid:
        if not uniq or x != uniq[-1]:
            uniq.append(x)
    t_grid = torch.tensor(uniq, dtype=torch.float64, device=y0.device)
    field_ = _Counted(f, batch, y0.dtype, args)
    opts = {}
    if name in _FIXED:
        if dt is None:
            raise ValueError(f"solve_with_torchdiffeq: fixed-step method {name!r} needs dt=")
        opts["step_size"] = float(dt)
    else:
        if dt is not None:
            raise ValueError(f"solve_with_torchdiffeq: dt= with the adaptive method {name!r} forces "
                             "fixed steps in solvers.ode.solve, but torchdiffeq cannot force fixed "
                             "steps on an adaptive method; use a fixed-step method or drop dt")
        opts["max_num_steps"] = int(max_steps)
        if first_step is not None:
            opts["first_step"] = float(first_step)
        accepted = inspect.signature(SOLVERS[td_name].__init__).parameters
        for ours_key, td_key, value, default in (("dt_min", "min_step", dt_min, 0.0),
                                                 ("dt_max", "max_step", dt_max, math.inf)):
            if value is not None and float(value) != default:
                if td_key not in accepted:
                    raise ValueError(f"solve_with_torchdiffeq: {ours_key} needs torchdiffeq's "
                                     f"{td_key!r} option, which this torchdiffeq's {td_name!r} "
                                     "lacks")
                opts[td_key] = float(value)
    adj_kw = {}
    if adjoint:
        adj_kw = _torchdiffeq_adjoint_kwargs(adjoint_options, f, name, opts)
    try:
        with warnings.catch_warnings():
            # Fixed-grid solvers warn that they ignore the accept/reject callbacks: expected.
            warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
            if adjoint:
                ys_all = torchdiffeq.odeint_adjoint(field_, y0, t_grid, rtol=rtol, atol=atol,
                                                    method=td_name, options=opts, **adj_kw)
            else:
                ys_all = torchdiffeq.odeint(field_, y0, t_grid, rtol=rtol, atol=atol,
                                            method=td_name, options=opts)
        status = torch.zeros(batch, dtype=torch.long, device=y0.device)
    except AssertionError as err:  # torchdiffeq signals failures (max steps, dt underflow) so
        if throw:
            raise RuntimeError(f"torchdiffeq failed: {err}") from err
        ys_all = torch.full((len(uniq), *y0.shape), math.nan, dtype=y0.dtype, device=y0.device)
        status = torch.full((batch,), 2, dtype=torch.long, device=y0.device)
    index = {x: i for i, x in enumerate(uniq)}
    y = ys_all[index[t1]]
    ts = ys = None
    if t_eval is not None:
        sel = [index[x] for x in te_list]
        ys = ys_all[sel].transpose(0, 1)
        ts = te.to(y0.dtype).expand(batch, n_eval)
    full = lambda v: torch.full((batch,), v, dtype=torch.long, device=y0.device)  # noqa: E731
    n_acc = field_.n_accepted if name not in _FIXED else field_.n_steps
    stats = {"nfe": full(field_.nfe), "n_accepted": full(n_acc),
             "n_rejected": full(field_.n_rejected), "n_steps": full(field_.n_steps)}
    return TorchdiffeqSolution(t=torch.full((batch,), t1, dtype=y0.dtype, device=y0.device), y=y,
                               ts=ts, ys=ys, status=status, stats=stats)


def _torchdiffeq_adjoint_kwargs(adjoint_options, f, name, opts):
    """Our ``adjoint_options`` (solvers.ode.adjoint keys) -> torchdiffeq ``odeint_adjoint``
    keyword arguments; raises for what torchdiffeq cannot do."""
    options = dict(adjoint_options or {})
    known = {"rtol", "atol", "method", "adjoint_params", "norm", "max_steps"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"solve_with_torchdiffeq: adjoint_options {unknown} have no torchdiffeq "
                         f"equivalent; supported: {sorted(known)}")
    params = options.get("adjoint_params")
    if params is None:
        params = tuple(f.parameters()) if isinstance(f, nn.Module) else ()
    kw = {"adjoint_params": tuple(params)}
    if not set(options) - {"adjoint_params"}:
        return kw  # torchdiffeq's defaults: the forward settings
    if options.get("rtol") is not None:
        kw["adjoint_rtol"] = options["rtol"]
    if options.get("atol") is not None:
        kw["adjoint_atol"] = options["atol"]
    back = options.get("method") or name
    if isinstance(back, str) and back.lower().startswith("torchdiffeq:"):
        back = back.split(":", 1)[1]
    if back not in _TO_TORCHDIFFEQ:
        raise ValueError(f"solve_with_torchdiffeq: unknown adjoint_options['method'] {back!r}; "
                         f"choose one of {sorted(_TO_TORCHDIFFEQ)}")
    kw["adjoint_method"] = _TO_TORCHDIFFEQ[back]
    # torchdiffeq reuses the forward options for the backward solve only when adjoint_options
    # is not given; give it the ones that fit the backward method.
    if back in _FIXED:
        if "step_size" not in opts:
            raise ValueError(f"solve_with_torchdiffeq: fixed-step adjoint method {back!r} needs "
                             "a fixed-step forward method with dt= (its step size)")
        adj = {"step_size": opts["step_size"]}
    else:
        adj = {k: v for k, v in opts.items() if k != "step_size"}
        if options.get("max_steps") is not None:
            adj["max_num_steps"] = int(options["max_steps"])
    norm = options.get("norm")
    if norm not in (None, "full", "seminorm"):
        raise ValueError("solve_with_torchdiffeq: adjoint_options['norm'] must be 'seminorm', "
                         f"'full' or None, got {norm!r}")
    if norm == "seminorm":
        adj["norm"] = "seminorm"
    kw["adjoint_options"] = adj
    return kw

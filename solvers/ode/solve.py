"""`solve`: the batched, per-sample explicit Runge--Kutta loop.

Every sample carries its own time, step size, accept/reject decision, controller memory,
status and counters. Samples that finish (end of span, terminal event, failure) leave the
active set: the loop keeps an index tensor of active samples and evaluates `f` only on them
(gather on compaction), so a batch costs what its samples need. The only host
synchronisation per step is the check whether any sample finished (plus, when events or
`t_eval` are used, whether any event fired / any output point lies in the step).

References:
    Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed., Springer 1993: II.4 (error
    estimate, RMS norm, initial step heuristic), II.6 (dense output).
    Lienen & Gunnemann, "torchode: A parallel ODE solver for PyTorch", NeurIPS 2022 DLDE
    workshop (per-sample step control in a batch).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

from .controllers import IController, get_controller, lane_pow
from .event import Event, crossed, illinois
from .methods import get_method
from .solution import DenseOutput, Solution
from .status import SolveError, Status, failure_message

__all__ = ["solve"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def solve(f, y0, t_span, *, method="dopri5", rtol=1e-6, atol=1e-8, t_eval=None, event=None,
          dense_output=False, adjoint=False, max_steps=10_000, throw=True, dt=None,
          first_step=None, dt_min=0.0, dt_max=math.inf, controller="i", adjoint_options=None,
          compact=True, args=None):
    """Solve ``dy/dt = f(t, y)`` for a batch of independent initial value problems.

    **Arguments:**

    - `f`: ``f(t, y) -> dy/dt`` with ``t`` of shape ``(n,)`` and ``y`` of shape
      ``(n, *state)`` (or ``f(t, y, args)`` when `args` is given). ``n`` is the number of
      *active* samples, which shrinks as samples finish (compaction): `f` must be
      batch-elementwise, i.e. sample i's derivative may depend only on sample i.
    - `y0`: ``(batch, *state)`` floating tensor, finite.
    - `t_span`: ``(t0, t1)``; each a float, a 0-d tensor or a ``(batch,)`` tensor (per-sample
      horizons). ``t1 < t0`` integrates backwards; directions may differ between samples.
    - `method`: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"`` (fixed step, need `dt`),
      ``"bosh3"``, ``"dopri5"``, ``"tsit5"``, ``"dopri8"`` (adaptive), or a method object.
      ``"torchdiffeq:<name>"`` runs torchdiffeq instead (``compat.solve_with_torchdiffeq``;
      one time axis for the batch, no events or dense output) for side-by-side comparisons.
    - `rtol`, `atol`: relative/absolute tolerances, scalars or tensors broadcastable to one
      sample's state (per component). ``rtol`` below ``4 * eps`` of the dtype is raised to
      that with a warning (scipy does the same below ``100 * eps`` of float64); ``atol`` below
      the dtype's smallest subnormal (0 included) is raised to it silently.
    - `t_eval`: ``(n,)`` or ``(batch, n)`` output times, monotone in each sample's direction
      of integration and inside its span.
    - `event`: an :class:`~solvers.ode.Event` (or a bare callable, meaning
      ``Event(fn)``: terminal, either direction).
    - `dense_output`: keep every accepted step's interpolant for `Solution.interpolate`.
    - `adjoint`: compute gradients with the adjoint method of :mod:`solvers.ode.adjoint`
      (``solve_adjoint``, same arguments plus `adjoint_options`).
    - `max_steps`: maximum number of step attempts per sample (status ``MAX_STEPS``).
    - `throw`: raise :class:`~solvers.ode.SolveError` if any sample failed; otherwise
      return the partial solution with per-sample statuses.
    - `dt`: step size of fixed-step methods: float or ``(batch,)`` positive tensor. Given
      with an adaptive method, it forces fixed steps (the error estimate is not used).
    - `first_step`: initial step of adaptive methods (float or ``(batch,)``); default
      Hairer's heuristic per sample (one extra `f` evaluation).
    - `dt_min`, `dt_max`: bounds on the magnitude of adaptive steps (not used with `dt`); a
      rejected step that would have to shrink below `dt_min` ends the sample (``DT_UNDERFLOW``).
    - `controller`: ``"i"`` (default), ``"pi"``, or an ``IController`` / ``PIController``.
    - `compact`: drop finished samples from the active set (default). ``False`` keeps the
      full batch in every `f` call and freezes finished samples by masking.
    - `args`: a tensor or tuple of tensors with leading batch dimension, gathered to the
      active samples and passed as ``f(t, y, args)`` (and ``event.fn(t, y, args)``): the
      way to give `f` per-sample parameters under compaction.

    **Returns:** a :class:`~solvers.ode.Solution`.

    **Raises:** ``ValueError``/``TypeError`` for invalid input (shapes, dtypes, devices,
    tolerances, spans); :class:`~solvers.ode.SolveError` when `throw` and a sample failed.

    Gradients flow by backpropagation through the accepted steps (step sizes are treated
    as constants), through dense output and through event times (implicit function
    theorem, see ``docs/ode.md``).
    """
    if isinstance(method, str) and method.lower().startswith("torchdiffeq:"):
        # Peer back end for comparisons (solvers/ode/compat.py): one shared time axis.
        from .compat import solve_with_torchdiffeq
        return solve_with_torchdiffeq(f, y0, t_span, method=method, rtol=rtol, atol=atol,
                                      t_eval=t_eval, event=event, dense_output=dense_output,
                                      adjoint=adjoint, max_steps=max_steps, throw=throw, dt=dt,
                                      first_step=first_step, dt_min=dt_min, dt_max=dt_max,
                                      controller=controller, adjoint_options=adjoint_options,
                                      compact=compact, args=args)
    if adjoint:
        try:
            from .adjoint import solve_adjoint
        except ImportError as exc:  # written by a colleague (issue 2, adjoint part)
            raise NotImplementedError(
                "adjoint=True needs solvers/ode/adjoint.py (solve_adjoint), which is not "
                "available yet") from exc
        return solve_adjoint(f, y0, t_span, method=method, rtol=rtol, atol=atol, t_eval=t_eval,
                             event=event, dense_output=dense_output, max_steps=max_steps,
                             throw=throw, dt=dt, first_step=first_step, dt_min=dt_min,
                             dt_max=dt_max, controller=controller,
                             adjoint_options=adjoint_options, compact=compact, args=args)
    p = _validate(f, y0, t_span, method, rtol, atol, t_eval, event, max_steps, dt, first_step,
                  dt_min, dt_max, controller, args)
    sol, any_failed = _integrate(p, dense_output=dense_output, compact=compact)
    if throw and any_failed:
        raise SolveError(failure_message(sol.status, sol.t), sol)
    return sol


# ----------------------------------------------------------------------------------------------
# validation


class _Problem:
    """The validated inputs. For float spans, the (batch,) tensors `t1` and `direction` are
    built on first use: the loop keeps those spans as python numbers."""

    _t1 = _direction = None

    @property
    def t1(self):
        if self._t1 is None:
            self._t1 = _as_time(self.t1_in, "t_span[1] (t1)", self.batch, self.dtype, self.device)
        return self._t1

    @property
    def direction(self):
        if self._direction is None:
            self._direction = torch.sign(self.t1 - self.t0)
        return self._direction


def _round_to(x, dtype):
    """The python float `x` rounded to `dtype` (as ``torch.tensor(x, dtype=dtype).item()``)."""
    if dtype == torch.float64:
        return float(x)
    if dtype == torch.float32:  # numpy's cast: same IEEE rounding, without a tensor
        return float(np.float32(x))
    return torch.tensor(x, dtype=dtype).item()


def _span_in(t0, t1, dtype):
    """|t1 - t0| as the dtype computes it, for t0, t1 already rounded to the dtype; None for
    dtypes other than float32/float64 and spans at the overflow edge (use tensors there).

    float64: IEEE subtraction. float32: the float64 difference (exact unless the exponents
    differ by more than 29, and then far from a float32 rounding tie) rounded once.
    """
    d = abs(t1 - t0)
    if dtype == torch.float64:
        return d
    if dtype == torch.float32 and d < 3.0e38:
        return _round_to(d, dtype)
    return None


def _as_time(x, name, batch, dtype, device):
    if isinstance(x, torch.Tensor):
        if x.device != device:
            raise ValueError(f"{name} is on device {x.device} but y0 is on {device}; put them "
                             "on the same device")
        if x.dtype not in _FLOATS and x.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a real number or tensor, got dtype {x.dtype}")
        if x.dim() == 0:
            x = x.expand(batch)
        elif x.dim() != 1 or x.shape[0] != batch:
            raise ValueError(f"{name} must be a scalar or a (batch,) = ({batch},) tensor, got "
                             f"shape {tuple(x.shape)}")
        src, x = x.detach(), x.detach().to(dtype)
        if not bool(torch.isfinite(x).all()) and bool(torch.isfinite(src).all()):
            raise ValueError(f"{name} overflows y0's dtype {dtype}")
    elif isinstance(x, numbers.Real):
        _check_float_time(x, name, dtype)
        return torch.full((batch,), float(x), dtype=dtype, device=device)
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x


def _check_float_time(x, name, dtype):
    x = float(x)  # (a numpy scalar would warn when compared with a larger dtype's maximum)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if abs(x) > torch.finfo(dtype).max:
        raise ValueError(f"{name} = {x} overflows y0's dtype {dtype}")


def _tolerance(x, name, state_shape, dtype, device):
    if isinstance(x, torch.Tensor):
        if x.device != device:
            raise ValueError(f"{name} is on device {x.device} but y0 is on {device}")
        x = x.detach().to(dtype)
        try:
            torch.broadcast_shapes(x.shape, state_shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to one "
                             f"sample's state {tuple(state_shape)}") from None
        if torch.broadcast_shapes(x.shape, state_shape) != state_shape:
            raise ValueError(f"{name} of shape {tuple(x.shape)} must broadcast to one sample's "
                             f"state {tuple(state_shape)} (tolerances are per component, not "
                             "per sample)")
        if not bool(torch.isfinite(x).all()) or bool((x < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0")
        return x
    if isinstance(x, numbers.Real):
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {x}")
        return float(x)
    raise TypeError(f"{name} must be a float or a tensor, got {type(x).__name__}")


def _validate(f, y0, t_span, method, rtol, atol, t_eval, event, max_steps, dt, first_step,
              dt_min, dt_max, controller, args):
    p = _Problem()
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor of shape (batch, *state), got "
                        f"{type(y0).__name__}")
    if y0.dtype not in _FLOATS:
        raise TypeError(f"y0 must have a floating dtype (float32/float64/...), got {y0.dtype}")
    if y0.dim() < 2:
        raise ValueError(f"y0 must be batch-first with shape (batch, *state); got shape "
                         f"{tuple(y0.shape)}. For one sample use y0[None]; for a batch of "
                         "scalars use y0[:, None]")
    if y0.shape[0] == 0:
        raise ValueError("y0 has an empty batch")
    p.batch, p.state_shape, p.dtype, p.device = y0.shape[0], y0.shape[1:], y0.dtype, y0.device
    # One reduction as the fast check (a non-finite entry makes the sum non-finite); the
    # sum can also overflow for huge finite values, hence the exact check behind it.
    if (y0.device.type != "meta" and not math.isfinite(float(y0.detach().sum()))
            and not bool(torch.isfinite(y0).all())):
        bad = (~torch.isfinite(y0)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"y0 is not finite for samples {bad[:10]}")
    p.f, p.y0 = f, y0
    if not isinstance(t_span, (tuple, list)) or len(t_span) != 2:
        raise ValueError("t_span must be a pair (t0, t1)")
    p.span_floats = (tuple(float(x) for x in t_span)
                     if all(type(x) in (float, int) or isinstance(x, numbers.Real)
                            for x in t_span) else None)
    p.t0 = _as_time(t_span[0], "t_span[0] (t0)", p.batch, p.dtype, p.device)
    p.t1_in = t_span[1]
    if p.span_floats is None:
        p.t1  # noqa: B018 (a tensor t1 is converted and checked now)
    else:
        _check_float_time(p.span_floats[1], "t_span[1] (t1)", p.dtype)
    # Gradient with respect to the horizon: dy(t1)/dt1 = f(t1, y(t1)) (applied at the end).
    t1_in = t_span[1]
    p.t1_grad = None
    if isinstance(t1_in, torch.Tensor) and t1_in.requires_grad:
        p.t1_grad = t1_in.to(p.dtype).expand(p.batch) if t1_in.dim() == 0 else t1_in.to(p.dtype)

    p.method = get_method(method)
    p.controller = get_controller(controller)
    eps = torch.finfo(p.dtype).eps
    p.rtol = _tolerance(rtol, "rtol", p.state_shape, p.dtype, p.device)
    p.atol = _tolerance(atol, "atol", p.state_shape, p.dtype, p.device)
    if p.method.adaptive and dt is None:
        r = p.rtol if isinstance(p.rtol, float) else p.rtol.min().item()
        if isinstance(p.rtol, float) and isinstance(p.atol, float):
            zero_both = p.rtol == 0 and p.atol == 0
        else:
            zero_both = bool(((torch.as_tensor(p.rtol) == 0)
                              & (torch.as_tensor(p.atol) == 0)).any())
        if zero_both:
            raise ValueError("rtol and atol are both zero (for some component): the error "
                             "test can never pass")
        if r < 4 * eps:
            warnings.warn(f"rtol={r:g} is below 4*eps={4 * eps:g} for {p.dtype}; using "
                          f"{4 * eps:g} (the error estimate is meaningless below it)",
                          stacklevel=3)
            p.rtol = (max(p.rtol, 4 * eps) if isinstance(p.rtol, float)
                      else p.rtol.clamp(min=4 * eps))

    if not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    p.max_steps = int(max_steps)
    if not isinstance(dt_min, numbers.Real) or not dt_min >= 0:
        raise ValueError(f"dt_min must be a float >= 0, got {dt_min!r}")
    if not isinstance(dt_max, numbers.Real) or not dt_max > 0 or dt_max < dt_min:
        raise ValueError(f"dt_max must be > 0 and >= dt_min, got {dt_max!r}")
    if dt_min > torch.finfo(p.dtype).max:
        raise ValueError(f"dt_min = {dt_min} overflows y0's dtype {p.dtype}")
    p.dt_min, p.dt_max = float(dt_min), float(dt_max)

    if dt is None:
        if not p.method.adaptive:
            raise ValueError(f"method {p.method.name} is fixed-step: pass dt= (step size > 0)")
        p.dt = None
    else:
        # dt= forces fixed steps, also for adaptive methods (their error estimate is unused).
        p.dt = _as_time(dt, "dt", p.batch, p.dtype, p.device)
        if not bool((p.dt > 0).all()):
            raise ValueError("dt must be > 0 (the direction comes from t_span)")
    if first_step is not None:
        p.first_step = _as_time(first_step, "first_step", p.batch, p.dtype, p.device)
        if not bool((p.first_step > 0).all()):
            raise ValueError("first_step must be > 0")
    else:
        p.first_step = None

    if args is not None:
        tup = args if isinstance(args, tuple) else (args,)
        for i, a in enumerate(tup):
            if not isinstance(a, torch.Tensor) or a.dim() == 0 or a.shape[0] != p.batch:
                raise ValueError(f"args[{i}] must be a tensor with leading batch dimension "
                                 f"{p.batch}, got {getattr(a, 'shape', type(a).__name__)}")
            if a.device != p.device:
                raise ValueError(f"args[{i}] is on {a.device} but y0 is on {p.device}")
    p.args, p.args_is_tuple = args, isinstance(args, tuple)

    if event is not None and not isinstance(event, Event):
        if callable(event):
            event = Event(event)
        else:
            raise TypeError(f"event must be an ode.Event or a callable, got {type(event).__name__}")
    p.event = event

    p.t_eval = None
    if t_eval is not None:
        te = torch.as_tensor(t_eval)
        if isinstance(t_eval, torch.Tensor) and t_eval.device != p.device:
            raise ValueError(f"t_eval is on device {t_eval.device} but y0 is on {p.device}")
        te = te.to(device=p.device, dtype=p.dtype).detach()
        if te.dim() == 1:
            te = te[None, :].expand(p.batch, -1)
        elif te.dim() != 2 or te.shape[0] != p.batch:
            raise ValueError(f"t_eval must have shape (n,) or (batch, n) = ({p.batch}, n); got "
                             f"{tuple(te.shape)}")
        if te.shape[1] == 0:
            raise ValueError("t_eval is empty")
        if not bool(torch.isfinite(te).all()):
            raise ValueError("t_eval must be finite")
        d = p.direction[:, None]
        if te.shape[1] > 1 and bool((d * te.diff(dim=1) < 0).any()):
            raise ValueError("t_eval must be monotone in each sample's direction of integration")
        slack = 1e3 * eps * torch.maximum(p.t0.abs(), p.t1.abs())[:, None]
        lo, hi = torch.minimum(p.t0, p.t1)[:, None], torch.maximum(p.t0, p.t1)[:, None]
        outside = (te < lo - slack) | (te > hi + slack)
        if bool(outside.any()):
            rows = outside.any(1).nonzero().flatten().tolist()
            raise ValueError(f"t_eval lies outside t_span for samples {rows[:10]}")
        p.t_eval = torch.minimum(torch.maximum(te, lo), hi)  # clip round-off at the ends
    return p


# ----------------------------------------------------------------------------------------------
# the loop


def _lincomb_grad(coeffs, ks):
    """sum_i c_i k_i, out of place (safe under autograd), skipping zero coefficients."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        out = k * c if out is None else out.add(k, alpha=c)
    return out


def _lincomb_fast(coeffs, ks):
    """`_lincomb_grad` accumulating in place (no autograd graph): same values, fewer buffers."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        if out is None:
            out = k * c
        else:
            out.add_(k, alpha=c)
    return out


def _horner(y_start, coef, theta):
    """y_start + sum_j theta^(j+1) coef[:, j]; theta (m,).

    `coef` is the (m, degree, *state) tensor or the sequence of its degree columns.
    """
    cols = coef.unbind(1) if isinstance(coef, torch.Tensor) else coef
    th = theta.reshape(-1, *([1] * (y_start.dim() - 1)))
    acc = cols[-1]
    for j in range(len(cols) - 2, -1, -1):
        acc = torch.addcmul(cols[j], th, acc)
    return torch.addcmul(y_start, th, acc)


def _interp_coef(W, kext, hs):
    """(m, degree, *state) polynomial coefficients (already multiplied by h) of one step.

    `W` is the (degree, n_ext) continuous-extension matrix as nested python lists.
    """
    hb = hs.reshape(-1, *([1] * (kext[0].dim() - 1)))
    return torch.stack([_lincomb_grad(w, kext) * hb for w in W], dim=1)


def _integrate(p, dense_output, compact):
    f, method, ctrl, ev = p.f, p.method, p.controller, p.event
    tab = method.tableau
    B, dtype, device = p.batch, p.dtype, p.device
    ones = (1,) * len(p.state_shape)
    grad_on = torch.is_grad_enabled()
    eps = torch.finfo(dtype).eps
    A = [list(r) for r in tab.a]
    C_col = method.stage_times(dtype, device)
    c_last_is_one = tab.c[-1] == 1.0
    Bw = list(tab.b)
    Berr = list(tab.b_err) if tab.b_err is not None else None
    s, fsal, adaptive = tab.stages, tab.fsal, tab.adaptive and p.dt is None
    q = method.error_order
    rtol, atol = p.rtol, p.atol
    need_coef = dense_output or p.t_eval is not None or ev is not None
    W_list = method.tableau.interp_matrix().tolist() if need_coef else None
    n_ext = tab.n_ext
    D = math.prod(p.state_shape)
    red_dims = tuple(range(1, 1 + len(p.state_shape)))
    sqrt_d = math.sqrt(D)

    rtol_n = rtol * sqrt_d
    atol_n = atol * sqrt_d
    # An atol below the dtype's smallest subnormal (0 included, or the default 1e-8 in float16)
    # would be 0 in the scale, and a component that stays 0 with zero error would give 0/0
    # (a NaN error, read as non-finite f): it is raised to that subnormal.
    tiniest = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    if isinstance(atol_n, float):
        atol_n = max(atol_n, tiniest)
    else:
        atol_n = atol_n.clamp(min=tiniest)
    # The elementary controller's factor safety * r^(-1/(q+1)) equals r'^(-1/(q+1)) for
    # r' = r / safety^(q+1): dividing the error by a scale multiplied by safety^(q+1) gives
    # r' directly and saves one op per step (accept r <= 1: r' <= 1 / safety^(q+1)).
    fused_ctrl = adaptive and type(ctrl) is IController
    if fused_ctrl:
        sq = ctrl.safety ** (q + 1)
        rtol_c, atol_c, accept_thr = rtol_n * sq, atol_n * sq, 1.0 / sq
        # (safety^(q+1) < 1/2, e.g. dopri8: the floored atol must stay above 0 after scaling)
        atol_c = (max(atol_c, tiniest) if isinstance(atol_c, float)
                  else atol_c.clamp(min=tiniest))
    else:
        rtol_c, atol_c, accept_thr = rtol_n, atol_n, 1.0

    has_args = p.args is not None
    if has_args:
        def fcall(t, y, a):
            return f(t, y, a if p.args_is_tuple else a[0])
    else:
        def fcall(t, y, a):
            return f(t, y)
    if ev is not None:
        if has_args:
            def gcall(t, y, a):
                return ev.fn(t, y, a if p.args_is_tuple else a[0])
        else:
            def gcall(t, y, a):
                return ev.fn(t, y)

    # --- active-set state ---------------------------------------------------------------------
    idx = torch.arange(B, device=device)
    t = p.t0.clone()
    # Float spans (the common case): t1, the direction and the step floor below are the same
    # for every sample, so they stay python numbers (no per-step tensor ops, nothing to gather
    # on compaction). t1 is first rounded to the dtype so that scalar arithmetic gives the
    # same values as the (batch,) tensors would.
    uniform, sgn = False, 0
    if p.span_floats is not None:  # compared once rounded (ends can round to the same value)
        t0r, t1r = (_round_to(x, dtype) for x in p.span_floats)
        uniform = t0r != t1r
    if uniform:
        t1, sgn = t1r, (1 if t1r > t0r else -1)
        direction = float(sgn)
    else:
        t1, direction = p.t1, p.direction
    y = p.y0
    argsa = (p.args if p.args_is_tuple else (p.args,)) if has_args else ()

    # Finished-sample records, concatenated at the end (no in-place writes: autograd-safe).
    rec_idx, rec_t, rec_y, rec_status, rec_steps, rec_rej = [], [], [], [], [], []
    rec_ev_idx, rec_ev_t = [], []
    # Event roots are located after the loop, all at once, unless this step needs them: a
    # terminal event ends the sample's t_eval outputs and dense output at the root.
    ev_stash = None
    if ev is not None and (not ev.terminal or (p.t_eval is None and not dense_output)):
        ev_stash = _EventStash()
        if not ev.terminal:
            ev_seen = torch.zeros(B, dtype=torch.bool, device=device)  # crossed already
    out_idx, out_val = [], []
    # Event samples whose root got its gradient (`_ift`) from one more f call, counted in nfe.
    ift_ids = []

    def counted_fcall(ids):
        def call(t, y, a):
            ift_ids.append(ids())
            return fcall(t, y, a)
        return call

    dense_rec = []
    rec_f = []
    failures = [False]  # whether a sample ended with a failure status (MAX_STEPS or worse)

    def record(sel, t_sel, y_sel, status, steps, nrej_sel):
        """Record finished samples: active rows `sel`, or all of them (`sel` None)."""
        if p.t1_grad is not None:  # f at the final point (used for SUCCESS rows only)
            rec_f.append(k1.detach() if sel is None else k1.detach().index_select(0, sel))
        ids = idx if sel is None else idx.index_select(0, sel)
        rec_idx.append(ids)
        rec_t.append(t_sel)
        rec_y.append(y_sel)
        if isinstance(status, torch.Tensor):
            rec_status.append(status)
            failures[0] = True  # per-sample failure codes
        else:  # one code for the whole record: expanded once at the end
            rec_status.append(int(status))
            failures[0] = failures[0] or int(status) >= int(Status.MAX_STEPS)
        rec_steps.append(int(steps))
        rec_rej.append(nrej_sel)

    # First stage at t0 (carried from step to step afterwards); also validates f's output.
    k1 = fcall(t, y, argsa)
    if not isinstance(k1, torch.Tensor):
        raise TypeError(f"f(t, y) must return a torch.Tensor of the shape of y "
                        f"{tuple(y.shape)}, got {type(k1).__module__}.{type(k1).__name__}")
    if k1.shape != y.shape:
        raise ValueError(f"f(t, y) must return a tensor of the shape of y {tuple(y.shape)}, got "
                         f"{tuple(k1.shape)}")
    if k1.dtype != dtype:
        raise TypeError(f"f returned dtype {k1.dtype} but y0 has dtype {dtype}")
    if k1.device != device:
        raise ValueError(f"f returned a tensor on {k1.device} but y0 is on {device}")
    nfe_init = 1

    # Fast path when no autograd graph is being built (grad mode off, or nothing that f, the
    # event or the inputs touch requires grad): h-scaled stages live in one preallocated
    # buffer and each stage input is a single addmm. Otherwise stages stay separate tensors
    # so that nothing the backward pass needs is modified in place.
    graph = grad_on and (y.requires_grad or k1.requires_grad
                         or any(a.requires_grad for a in argsa))
    if ev is not None and grad_on and not graph:
        graph = _event_needs_grad(gcall, t, y, argsa)
    fast = not graph and dtype in (torch.float32, torch.float64)
    if graph:
        # No NaN/inf may enter the autograd graph: a sample whose f is not finite gets its step
        # rejected (or fails), and its rows then receive zero gradients, but zero times a NaN
        # saved inside f is NaN, summed into f's parameter gradients of every sample. So f's
        # first value, a non-FSAL method's f at the step's end, and every step whose error is
        # not finite for some sample (see `clean_step`) are recomputed on the finite rows only
        # (rare: failures, trial steps that overshoot), the other rows kept without history.
        def finite_call(t, y, a, out=None):
            out = fcall(t, y, a) if out is None else out
            if math.isfinite(float(out.detach().sum())):
                return out
            with torch.no_grad():
                good = torch.isfinite(out).flatten(1).all(1)
            if bool(good.all()):  # a finite output whose sum overflowed
                return out
            sub = good.nonzero().flatten()
            if not sub.numel():  # no finite row: nothing to recompute (f never sees n = 0)
                return out.detach()
            part = fcall(t.index_select(0, sub), y.index_select(0, sub),
                         tuple(x.index_select(0, sub) for x in a))
            return out.detach().index_put((sub,), part)

        k1 = finite_call(t, y, argsa, out=k1)
    # The graph path in float32/64 does the fast path's arithmetic (h-scaled stages combined
    # by addmm), out of place: the same steps and bits with and without a graph.
    scaled = not fast and dtype in (torch.float32, torch.float64)
    if fast or scaled:
        A_t, B_t, E_t = method.stage_matrices(dtype, device)
    if fast:
        Kbuf = torch.empty(n_ext, B * D, dtype=dtype, device=device)
        kview_n, K, Kv, Kpre = -1, None, None, None

    if adaptive:
        if p.first_step is not None:
            h = p.first_step * direction
        else:
            with torch.no_grad():
                # Hairer, Norsett & Wanner I, II.4 ("starting step size"), per sample. The
                # scale carries the factor sqrt(state size): Euclidean norms are RMS norms.
                scale = y.abs().mul_(rtol_n).add_(atol_n)
                d0 = torch.linalg.vector_norm(y / scale, dim=red_dims)
                d1 = torch.linalg.vector_norm(k1 / scale, dim=red_dims)
                h0 = torch.where(torch.minimum(d0, d1) < 1e-5, 1e-6, 0.01 * d0 / d1)
                # |t1 - t0|: a python number in the dtype for float spans
                span = _span_in(t0r, t1r, dtype) if uniform else None
                if span is None:
                    span = t1 - t if sgn > 0 else (t1 - t).abs()
                    h0 = torch.minimum(h0, span)
                else:
                    h0 = h0.clamp_(max=span)
                hd0 = h0 if sgn > 0 else h0 * direction
                f1 = fcall(t + hd0, torch.addcmul(y, hd0.reshape(-1, *ones), k1), argsa)
                d2 = torch.linalg.vector_norm((f1 - k1).div_(scale), dim=red_dims).div_(h0)
                dm = torch.maximum(d1, d2)
                h1 = lane_pow(0.01 / dm, 1.0 / (q + 1))
                flat_f = dm <= 1e-15  # f and its variation vanish (rare): a small step
                if bool(flat_f.any()):
                    h1 = torch.where(flat_f, torch.clamp(h0 * 1e-3, min=1e-6), h1)
                hh = torch.minimum(100 * h0, h1)
                # A non-finite f at t0 (NaN sample) must not poison h: start small, let the
                # step-rejection logic shrink it to the failure floor. (NaN < inf is False.)
                if isinstance(span, float):
                    small = _round_to(_round_to(1e-6, dtype) * span, dtype)  # 1e-6 * span
                    hh = torch.nan_to_num(hh, nan=small, posinf=small)
                else:
                    hh = torch.where(hh < math.inf, hh, 1e-6 * span)
                h = hh if sgn > 0 else hh * direction
            nfe_init += 1
        if p.dt_max < math.inf:
            h = h.clamp(-p.dt_max, p.dt_max)
        if p.dt_min > 0:
            h = torch.where(h.abs() < p.dt_min, p.dt_min * direction, h)
    else:
        h = p.dt * direction
    h = h.detach()
    # Rejected step attempts per sample (accepted = attempts - rejected). Only steps where
    # some sample is rejected touch it.
    nrej = torch.zeros(B, dtype=torch.int64, device=device)
    cstate = ctrl.init_state(B, t) if adaptive else None

    if ev is not None:
        with torch.no_grad():
            g_old = _event_value(gcall(t, y, argsa), B).to(dtype)
    if p.t_eval is not None:
        te = p.t_eval
        n_eval = te.shape[1]
        ptr = torch.zeros(B, dtype=torch.int64, device=device)

    live = None if compact else torch.ones(B, dtype=torch.bool, device=device)
    # Samples whose last attempt was rejected (None: no sample): their next accepted step may
    # not grow (Hairer's and scipy's codes).
    rej_prev = None

    # `slack`: the float spacing of a sample's times (constant per sample: |t| never exceeds
    # max(|t0|, |t1|)); a remainder within it of the step is taken in this step. `floor`: a
    # rejected step whose successor is below it fails, max(slack, dt_min) (fixed steps have
    # no dt_min). With float spans both are python numbers, computed as the tensors would be.
    dt_min = p.dt_min if adaptive else 0.0
    if uniform:  # 8 eps is a power of two: the product is exact before rounding to dtype
        slack = _round_to(max(abs(t0r), abs(t1r)) * (8 * eps), dtype)
        floor = max(slack, _round_to(dt_min, dtype))
    else:
        slack = torch.maximum(p.t0.abs(), p.t1.abs()) * (8 * eps)
        floor = torch.clamp(slack, min=dt_min) if dt_min > 0 else slack

    def graph_stages(tst, y, hb, k1, a):
        """One step out of place: the stages (k1 first), the h-scaled stages (float32/64,
        `scaled`; else None) and the new state."""
        ks, yi = [k1], y
        if not scaled:
            for i in range(1, s):
                yi = torch.addcmul(y, hb, _lincomb_grad(A[i], ks))
                ks.append(fcall(tst[i], yi, a))
            return ks, None, (yi if fsal else torch.addcmul(y, hb, _lincomb_grad(Bw, ks)))
        yflat, kh = y.reshape(1, -1), [k1 * hb]
        for i in range(1, s):
            yi = torch.addmm(yflat, A_t[i], torch.stack(kh).view(i, -1)).view_as(y)
            ks.append(fcall(tst[i], yi, a))
            kh.append(ks[-1] * hb)
        if not fsal:
            yi = torch.addmm(yflat, B_t, torch.stack(kh).view(s, -1)).view_as(y)
        return ks, kh, yi

    def clean_step(good, ks, kh, y_new):
        """Recompute a step on its rows `good` (graph mode; the other rows' error is not
        finite): stages, scaled stages and new state, blended with the other rows' values
        without history.

        The step's first stage k1 is clean already (it comes from f's first value, a clean
        step's last stage or a non-FSAL method's checked f at the step's end: a finite error
        implies finite stages), so it keeps its history."""
        sub = good.nonzero().flatten()
        if not sub.numel():
            return ([k.detach() for k in ks], kh and [k.detach() for k in kh],
                    y_new.detach())
        tg, yg, hg = t.index_select(0, sub), y.index_select(0, sub), hs.index_select(0, sub)
        ag = tuple(x.index_select(0, sub) for x in argsa)
        ksg, khg, yng = graph_stages(torch.addcmul(tg, C_col, hg).unbind(0), yg,
                                     hg.reshape(-1, *ones), k1.index_select(0, sub), ag)

        def blend(full, part):
            return full.detach().index_put((sub,), part)

        return ([blend(k, kg) for k, kg in zip(ks, ksg)],
                kh and [blend(k, kg) for k, kg in zip(kh, khg)], blend(y_new, yng))

    def gather(keep):
        nonlocal idx, t, t1, direction, y, h, k1, nrej, cstate, argsa, live, slack, floor
        nonlocal rej_prev
        nonlocal g_old, te, ptr
        # index_select: several times cheaper than advanced indexing on CPU.
        def take(x):
            return x.index_select(0, keep)

        if not uniform:
            t1, direction, slack = take(t1), take(direction), take(slack)
            floor = take(floor) if dt_min > 0 else slack
        idx, t, y, h, k1, nrej = take(idx), take(t), take(y), take(h), take(k1), take(nrej)
        if cstate is not None:
            cstate = take(cstate)
        if live is not None:
            live = take(live)
        if rej_prev is not None:
            rej_prev = take(rej_prev)
        argsa = tuple(take(a) for a in argsa)
        if ev is not None:
            g_old = take(g_old)
        if p.t_eval is not None:
            te, ptr = take(te), take(ptr)

    if p.span_floats is not None:
        any_zero = not uniform
        zero_span = direction == 0 if any_zero else None
    else:
        zero_span = direction == 0
        any_zero = bool(zero_span.any())
    gathered = False
    if any_zero:
        sel = zero_span.nonzero().flatten()
        record(sel, t[sel], y[sel], Status.SUCCESS, 0, nrej[sel])
        if p.t_eval is not None:  # all output points equal t0
            for j in range(n_eval):
                out_idx.append(idx[sel] * n_eval + j)
                out_val.append(y[sel])
        if dense_output:  # one step of length zero: the interpolant is y0 at t0
            m, ts0 = sel.numel(), t[sel]
            dense_rec.append((idx[sel], ts0, ts0, torch.zeros_like(ts0), y[sel],
                              y.new_zeros(m, len(W_list), *p.state_shape)))
        keep = (~zero_span).nonzero().flatten()
        gather(keep)
        gathered = True
    n_active = idx.numel()
    if p.t_eval is not None and n_active:
        # Output points at t0 are y0, written now, so that a sample that fails before its
        # first accepted step has them too; the accepted steps write the later points.
        while True:
            tn = te.gather(1, ptr.clamp(max=n_eval - 1)[:, None]).squeeze(1)
            at0 = (ptr < n_eval) & (tn == t)
            if not bool(at0.any()):
                break
            sub = at0.nonzero().flatten()
            out_idx.append(idx[sub] * n_eval + ptr[sub])
            out_val.append(y.index_select(0, sub))
            ptr = ptr + at0.long()

    yabs = None
    it = 0
    while n_active > 0:
        if it >= p.max_steps:
            sel = torch.arange(idx.numel(), device=device)
            if live is not None:
                sel = live.nonzero().flatten()
            record(sel, t[sel], y[sel], Status.MAX_STEPS, it, nrej[sel])
            break
        it += 1
        rem = torch.rsub(t, t1)  # t1 - t (a python t1 would go through Tensor.__rsub__)
        # A remainder within float spacing of the step is taken now (no sliver of a last step):
        # |h| >= |rem| - slack, written without the absolute values when all samples share
        # one direction (h and rem then have its sign).
        if sgn > 0:
            last = rem.sub(slack) <= h
        elif sgn < 0:
            last = rem.add(slack) >= h
        else:
            last = h.abs() >= rem.abs() - slack
        hs = torch.where(last, rem, h)
        hb = hs.reshape(-1, *ones)
        n = idx.numel()
        # All stage times in one op: (stages, n).
        tst = torch.addcmul(t, C_col, hs).unbind(0)  # (stages,) of (n,) views
        if fast:
            # Stages scaled by h live in rows of one flat buffer, so each stage input is a
            # single addmm: y_i = y + sum_j a_ij (h k_j)  (one BLAS call instead of i ops).
            if kview_n != n:
                # Views of the buffer for this active-set size, rebuilt only on compaction:
                # per-stage rows (n, *state) and the row prefixes K[:i] the addmm's read.
                K = Kbuf[:, : n * D]
                Kv = K.view(n_ext, n, *p.state_shape).unbind(0)
                Kpre = [None] + [K[:i] for i in range(1, s + 1)]
                kview_n = n
            yflat = y.reshape(1, n * D)
            torch.mul(k1, hb, out=Kv[0])
            yi, fi = y, k1
            for i in range(1, s):
                yi = torch.addmm(yflat, A_t[i], Kpre[i]).view_as(y)
                fi = fcall(tst[i], yi, argsa)
                torch.mul(fi, hb, out=Kv[i])
            if fsal:
                y_new, f_new = yi, fi
            else:
                y_new = torch.addmm(yflat, B_t, Kpre[s]).view_as(y)
            if adaptive:
                err = torch.mm(E_t, Kpre[s]).view_as(y)
        else:
            ks, kh, y_new = graph_stages(tst, y, hb, k1, argsa)
            if fsal:
                f_new = ks[-1]
            if adaptive:
                with torch.no_grad():
                    err = (torch.mm(E_t, torch.stack(kh).view(s, -1)).view_as(y) if scaled
                           else _lincomb_grad(Berr, ks) * hb)
        # t + hs is already the last stage time when that node is 1 (all methods but two).
        t_new = torch.where(last, t1, tst[s - 1] if c_last_is_one else t + hs)

        if adaptive:
            with torch.no_grad():
                # RMS norm: rtol and atol were pre-multiplied by sqrt(state size), so the
                # Euclidean norm of err / scale is the RMS norm of the unscaled ratio.
                # |y| of the step's start is carried over from the previous step when every
                # sample accepted it (yabs is None otherwise).
                yabs_new = y_new.abs()
                scale = torch.maximum(y.abs() if yabs is None else yabs, yabs_new)
                scale = scale.mul_(rtol_c).add_(atol_c)
                ratio = torch.linalg.vector_norm(err.div_(scale), dim=red_dims)
                accept = ratio <= accept_thr
                if fused_ctrl:  # ratio is r / safety^(q+1) (see above)
                    fac = lane_pow(ratio, -1.0 / (q + 1)).clamp_(ctrl.factor_min,
                                                                 ctrl.factor_max)
                else:
                    fac, cstate = ctrl.factor(ratio, accept, cstate, q)
                if rej_prev is not None:  # no growth right after a rejection
                    fac = torch.where(rej_prev & accept, fac.clamp(max=1.0), fac)
                # NaN ratio (non-finite stages): shrink by the minimum factor and retry.
                fac = torch.nan_to_num(fac, nan=ctrl.factor_min)
                h_next = hs * fac
                if p.dt_max < math.inf:
                    h_next = h_next.clamp(-p.dt_max, p.dt_max)
                if dt_min > 0:  # accepted steps are followed by steps >= dt_min; a rejected
                    # step's retry may go below, and fails there (see `floor`)
                    h_next = torch.where(accept, h_next.abs().clamp(min=dt_min).copysign(hs),
                                         h_next)
        else:
            with torch.no_grad():
                finite = torch.isfinite(y_new).flatten(1).all(1)
                accept = finite
                h_next = h
        if graph:
            with torch.no_grad():
                good = (ratio < math.inf) if adaptive else finite
            if not bool(good.all()):
                ks, kh, y_new = clean_step(good, ks, kh, y_new)
                if fsal:
                    f_new = ks[-1]
        if live is not None:
            accept = accept & live
        if not fsal:
            f_new = finite_call(t_new, y_new, argsa) if graph else fcall(t_new, y_new, argsa)
            if fast and need_coef:
                torch.mul(f_new, hb, out=Kv[s])
        # Interpolation coefficients of this step, computed lazily (events, t_eval, dense).
        coef_cache = []
        if fast:
            step_data = (K, n)
        elif scaled:
            step_data = (kh + ([] if fsal else [f_new * hb]), None)
        else:
            step_data = (ks + ([] if fsal else [f_new]), hs)

        def get_coef(sub=None, cache=coef_cache, data=step_data, cols=False):
            """(n or len(sub), degree, *state) interpolation coefficients of this step.

            The full set is cached; a subset (event steps, usually few samples) is computed
            from the gathered stages only. ``cols=True`` (with `sub`) gives the degree
            columns as a sequence instead (what `_horner` reads; no stacking).
            """
            if cache:
                c = cache[0] if sub is None else cache[0].index_select(0, sub)
                return c.unbind(1) if cols else c
            if fast:
                # Elementwise combinations, not a matmul: a GEMM's rounding depends on the
                # number of columns, i.e. on the batch, and results must not.
                kh = data[0].view(n_ext, data[1], *p.state_shape)
                if sub is not None:
                    kh = kh[:, sub]  # (a few times faster than index_select along dim 1)
                    if cols:
                        return [_lincomb_fast(w, kh) for w in W_list]
                c = torch.stack([_lincomb_fast(w, kh) for w in W_list], dim=1)
            else:
                kext, hsd = data
                if sub is not None:
                    kext = [k.index_select(0, sub) for k in kext]
                    hsd = None if hsd is None else hsd[sub]
                if cols and hsd is None:
                    return [_lincomb_grad(w, kext) for w in W_list]
                c = (torch.stack([_lincomb_grad(w, kext) for w in W_list], dim=1)
                     if hsd is None else _interp_coef(W_list, kext, hsd))
            if sub is None:
                cache.append(c)
            return c.unbind(1) if cols else c

        # --- events on the accepted steps ----------------------------------------------------
        ev_sel = None
        step_end = t_new
        if ev is not None:
            with torch.no_grad():
                g_new = gcall(t_new, y_new, argsa).to(dtype)
                hit = crossed(g_old, g_new, ev.direction) & accept
            sub = hit.nonzero().flatten()  # (syncs: the one host sync of the event test)
            if sub.numel():
                if ev_stash is not None:
                    # Deferred: keep what locating the root needs (the step's start, size,
                    # event values and h-scaled stages of the hit samples; copies, since the
                    # stage buffer is reused) and locate every root after the loop at once.
                    ids = idx.index_select(0, sub)
                    if not ev.terminal:  # only a sample's first crossing is reported
                        fresh = ~ev_seen.index_select(0, ids)
                        if not bool(fresh.all()):
                            sub, ids = sub[fresh], ids[fresh]
                        ev_seen.index_fill_(0, ids, True)
                    if sub.numel():
                        # ([:, sub]: a few times faster than index_select along dim 1)
                        kh = (K.view(n_ext, n, *p.state_shape)[:, sub] if fast
                              else [k.index_select(0, sub) for k in step_data[0]])
                        ev_t, ev_y = ev_stash.add(
                            torch.stack((t, hs, g_old, g_new)).index_select(1, sub),
                            y.index_select(0, sub), kh,
                            tuple(a.index_select(0, sub) for a in argsa))
                        rec_ev_idx.append(ids)
                        rec_ev_t.append(ev_t)
                        if ev.terminal:
                            ev_sel = sub  # recorded as EVENT below with the placeholders
                else:
                    # Immediate (terminal events only): the root ends the sample's t_eval
                    # outputs and dense output in this step.
                    coef = get_coef(sub, cols=True)
                    t_s, h_s = t.index_select(0, sub), hs.index_select(0, sub)
                    ids = idx.index_select(0, sub)
                    t_root, t_star, y_stop = _locate_root(
                        gcall, counted_fcall(lambda ids=ids: ids), ev, t_s, h_s,
                        y.index_select(0, sub), coef, g_old.index_select(0, sub),
                        g_new.index_select(0, sub), tuple(a.index_select(0, sub) for a in argsa),
                        fast, grad_on)
                    rec_ev_idx.append(ids)
                    rec_ev_t.append(t_star)
                    ev_sel = sub
                    ev_t, ev_y = t_star, y_stop
                    step_end = t_new.index_put((sub,), t_root.detach())
            g_old = torch.where(accept, g_new, g_old)

        # --- outputs at t_eval inside the accepted step --------------------------------------
        if p.t_eval is not None:
            dcol = direction
            while True:
                pc = ptr.clamp(max=n_eval - 1)
                tn = te.gather(1, pc[:, None]).squeeze(1)
                want = accept & (ptr < n_eval) & (dcol * (tn - step_end) <= 0)
                if not bool(want.any()):
                    break
                sub = want.nonzero().flatten()
                theta = (tn[sub] - t[sub]) / hs[sub]
                yv = _horner(y.index_select(0, sub), get_coef().index_select(0, sub), theta)
                out_idx.append(idx[sub] * n_eval + ptr[sub])
                out_val.append(yv)
                ptr = ptr + want.long()
        if dense_output:
            sub = accept.nonzero().flatten()
            if sub.numel():
                dense_rec.append((idx[sub], t[sub], step_end[sub], hs[sub],
                                  y.index_select(0, sub), get_coef().index_select(0, sub)))

        # --- merge accepted steps ------------------------------------------------------------
        h = h_next
        # Usually every active sample accepted its step and none reached its end: then the
        # step's values are taken as they are, and this is the one host sync of the step.
        # (A failure needs a rejection, a finished sample `last`; masked mode's finished
        # samples count as rejected, so they are never overwritten.)
        if ev_sel is None and bool((accept > last).all()):  # accepted and not last
            rej_prev = None
            y, k1, t = y_new, f_new, t_new
            if adaptive:
                yabs = yabs_new
            continue
        yabs = None
        if ev_sel is None and live is None and bool(accept.all()):
            rej_prev = None
            # The usual way samples finish: every step accepted, some reached their end.
            # Nothing to merge and no failure possible: record those and compact.
            y, k1, t = y_new, f_new, t_new
            if bool(last.all()):  # the active samples all finish here: nothing to select
                record(None, t, y, Status.SUCCESS, it, nrej)
                break
            sel = last.nonzero().flatten()
            record(sel, t.index_select(0, sel), y.index_select(0, sel), Status.SUCCESS, it,
                   nrej.index_select(0, sel))
            keep = (~last).nonzero().flatten()
            n_active = keep.numel()
            if n_active:
                gather(keep)
                gathered = True
            continue
        if not graph or bool(accept.any()):
            acc_b = accept.reshape(-1, *ones)
            y = torch.where(acc_b, y_new, y)
            k1 = torch.where(acc_b, f_new, k1)
            t = torch.where(accept, t_new, t)
        # (else nothing moves, and the rejected step's graph is left out: its zero gradients
        # would meet f's derivatives at the trial points, which may be infinite)
        nrej += ~accept
        rej_prev = ~accept

        with torch.no_grad():
            # Cannot shrink further (user dt_min or the float spacing of t): fail.
            # (bool > bool is "and not": too small and rejected)
            failed = ((h_next.abs() < floor) > accept) if adaptive else ~finite
            if live is not None:
                failed = failed & live
        done = (accept & last) | failed
        if ev_sel is not None:
            done = done.index_fill(0, ev_sel, True)
        if bool(done.any()):
            # finished at t1 (not by an event)
            if ev_sel is not None:
                ok = (done & ~failed).index_fill_(0, ev_sel, False)
                record(ev_sel, ev_t, ev_y, Status.EVENT, it, nrej.index_select(0, ev_sel))
            else:
                ok = done & ~failed
            sel = ok.nonzero().flatten()
            if sel.numel():
                record(sel, t.index_select(0, sel), y.index_select(0, sel), Status.SUCCESS, it,
                       nrej.index_select(0, sel))
            sel = failed.nonzero().flatten()
            if sel.numel():
                if adaptive:
                    finite = ratio < math.inf  # False for NaN and inf
                    code = torch.where(finite[sel], int(Status.DT_UNDERFLOW),
                                       int(Status.NONFINITE))
                else:
                    code = Status.NONFINITE
                record(sel, t.index_select(0, sel), y.index_select(0, sel), code, it,
                       nrej.index_select(0, sel))
            if live is None:
                keep = (~done).nonzero().flatten()
                n_active = keep.numel()
                if n_active:
                    gather(keep)
                    gathered = True
            else:
                live = live & ~done
                n_active = int(live.sum())

    # --- assemble per-sample outputs ---------------------------------------------------------
    if ev_stash:
        # Deferred event roots: located now for every stashed sample at once, then put in
        # place of the placeholders in the records.
        # (the stash holds the samples of rec_ev_idx, in that order)
        t_parts, y_parts = ev_stash.locate(gcall, counted_fcall(lambda: torch.cat(rec_ev_idx)),
                                           ev, W_list, fast, scaled, grad_on)

        def resolved(x):
            if isinstance(x, _Deferred):
                return (t_parts if x.kind == "t" else y_parts)[x.part]
            return x

        rec_t[:] = map(resolved, rec_t)
        rec_y[:] = map(resolved, rec_y)
        rec_ev_t[:] = map(resolved, rec_ev_t)
    # Status codes, step counts and f rows evaluated per sample (in compact mode exactly;
    # masked mode also evaluates finished samples, which is not counted), in record order:
    # (3, B), built in one op from python ints unless some record carries per-sample
    # (failure) codes.
    per_step = s if not fsal else s - 1
    rec_nfe = [nfe_init + st * per_step for st in rec_steps]
    counts = [r.shape[0] for r in rec_idx]
    if all(isinstance(c, int) for c in rec_status):
        codes = torch.tensor([rec_status, rec_steps, rec_nfe], dtype=torch.int64, device=device)
        codes = (codes.expand(-1, B).clone() if len(counts) == 1 else codes.repeat_interleave(
            torch.tensor(counts, device=device), dim=1, output_size=B))
    else:
        codes = torch.stack([
            torch.cat([c.long() if isinstance(c, torch.Tensor)
                       else torch.full((m,), c, dtype=torch.int64, device=device)
                       for c, m in zip(rec_status, counts)]),
            *(torch.cat([torch.full((m,), v, dtype=torch.int64, device=device)
                         for v, m in zip(row, counts)]) for row in (rec_steps, rec_nfe))])
    if len(rec_idx) == 1 and not gathered and counts[0] == B:
        # Everything finished together in one record, in batch order already.
        t_out, y_out, n_rej = rec_t[0], rec_y[0], rec_rej[0]
        f_out = rec_f[0] if rec_f else None
    else:
        # Every sample is recorded exactly once: scatter the records to batch order (no sort).
        cidx = torch.cat(rec_idx)

        def place(parts, dim=0):
            src = torch.cat(parts) if len(parts) > 1 else parts[0]
            return src.new_empty(src.shape).index_copy_(dim, cidx, src)

        t_out, y_out, n_rej, codes = place(rec_t), place(rec_y), place(rec_rej), place([codes], 1)
        f_out = place(rec_f) if rec_f else None
    status, n_steps, nfe = codes.unbind(0)
    if ift_ids:
        ids = torch.cat(ift_ids)
        nfe = nfe.index_add(0, ids, torch.ones_like(ids))
    n_acc = n_steps - n_rej
    if p.t1_grad is not None:
        # Value zero, gradient 1 w.r.t. t1 on samples that reached t1: d y/d t1 = f(t1, y).
        ok = status == int(Status.SUCCESS)
        shift = (p.t1_grad - p.t1_grad.detach()) * ok
        t_out = t_out + shift
        # f of rows that did not reach t1 may be non-finite, and NaN * 0 is NaN: zero them.
        f_out = torch.where(ok.reshape(-1, *ones), f_out, 0.0)
        y_out = y_out + f_out * shift.reshape(-1, *ones)
    event_mask = torch.zeros(B, dtype=torch.bool, device=device)
    t_event = None
    if ev is not None:
        t_event = torch.full((B,), float("nan"), dtype=dtype, device=device)
        if rec_ev_idx:
            eidx, et = torch.cat(rec_ev_idx), torch.cat(rec_ev_t)
            # first crossing per sample: records are chronological, keep the earliest
            first = _first_occurrence(eidx, B)
            t_event = t_event.index_put((eidx[first],), et[first])
            event_mask[eidx] = True
    stats = {"nfe": nfe, "n_steps": n_steps, "n_accepted": n_acc, "n_rejected": n_rej,
             "event_mask": event_mask}
    ts = ys = None
    if p.t_eval is not None:
        ts = p.t_eval
        flat = torch.full((B * n_eval, *p.state_shape), float("nan"), dtype=dtype, device=device)
        if out_idx:
            flat = flat.index_put((torch.cat(out_idx),), torch.cat(out_val))
        ys = flat.reshape(B, n_eval, *p.state_shape)
    dense = None
    if dense_output:
        # A sample that failed before its first accepted step is solved at t0 only: a step of
        # length zero there, as for zero-length spans (y0 at t0, NaN elsewhere).
        seen = torch.zeros(B, dtype=torch.bool, device=device)
        if dense_rec:
            seen.index_fill_(0, torch.cat([r[0] for r in dense_rec]), True)
        miss = (~seen).nonzero().flatten()
        if miss.numel():
            t0m = p.t0.index_select(0, miss)
            dense_rec.append((miss, t0m, t0m, torch.zeros_like(t0m), p.y0.index_select(0, miss),
                              p.y0.new_zeros(miss.numel(), len(W_list), *p.state_shape)))
        cols = list(zip(*dense_rec))
        dense = DenseOutput(B, *(torch.cat(c) for c in cols), direction=p.direction, t0=p.t0)
    return (Solution(t_out, y_out, status, stats, ts=ts, ys=ys, t_event=t_event, dense=dense),
            failures[0])


def _event_needs_grad(gcall, t, y, argsa):
    """Whether the event function's value depends on something that requires grad."""
    return bool(_event_value(gcall(t, y, argsa), y.shape[0]).requires_grad)


def _event_value(g, batch):
    """The event function's value, checked: a (batch,) tensor."""
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"event fn(t, y) must return a torch.Tensor of shape (batch,) = "
                        f"({batch},), got {type(g).__module__}.{type(g).__name__}")
    if g.shape != (batch,):
        raise ValueError(f"event fn(t, y) must return shape (batch,) = ({batch},), got "
                         f"{tuple(g.shape)}")
    return g


def _first_occurrence(idx, B):
    """Positions of the first occurrence of each distinct value of `idx`."""
    pos = torch.arange(idx.numel(), device=idx.device)
    big = torch.full((B,), idx.numel(), dtype=torch.int64, device=idx.device)
    firstpos = big.scatter_reduce(0, idx, pos, reduce="amin")
    return firstpos[idx.unique()]


def _ift(fcall, gcall, t_root, y_root, a_s, grad_on):
    """Event time and stopped state carrying implicit-function-theorem gradients.

    With g(t*, y(t*; p); p) = 0, dt*/dp = -(dg/dp + dg/dy dy/dp) / (dg/dt + dg/dy f).
    We return t* = t_root - (g - g.detach()) / (dg/dt + dg/dy f).detach(): its value is t_root
    and its gradient is exactly the formula above. The stopped state is
    y_root + f(t*, y*).detach() (t* - t_root), which adds the f dt*/dp term to dy(t*)/dp.
    """
    if not grad_on:
        return t_root.detach(), y_root
    g_val = gcall(t_root.detach(), y_root, a_s)
    if not (g_val.requires_grad or y_root.requires_grad):
        return t_root.detach(), y_root
    with torch.enable_grad():
        tt = t_root.detach().requires_grad_(True)
        yy = y_root.detach().requires_grad_(True)
        gg = gcall(tt, yy, tuple(a.detach() for a in a_s))
        if not gg.requires_grad:  # fn is not differentiable in (t, y): no IFT gradient
            return t_root.detach(), y_root
        gt, gy = torch.autograd.grad(gg.sum(), (tt, yy), allow_unused=True)
    with torch.no_grad():
        fstar = fcall(tt.detach(), yy.detach(), a_s)
        dgdt = (gt if gt is not None else torch.zeros_like(tt)).detach()
        if gy is not None:
            dgdt = dgdt + (gy * fstar).flatten(1).sum(1)
    t_star = t_root.detach() - (g_val - g_val.detach()) / dgdt
    shape = (-1,) + (1,) * (y_root.dim() - 1)
    y_stop = y_root + fstar * (t_star - t_root.detach()).reshape(shape)
    return t_star, y_stop


def _locate_root(gcall, fcall, ev, t_s, h_s, y_s, coef, g_lo, g_hi, a_s, fast, grad_on):
    """Event root inside the steps ``[t_s, t_s + h_s]`` of the rows that crossed.

    `coef` is the sequence of the steps' interpolation-coefficient columns (see `_horner`),
    `g_lo`, `g_hi` the event values at the steps' ends. Every operation is row-wise and the
    Illinois loop freezes converged rows, so a row's root does not depend on the other rows
    (which is what lets `_integrate` locate roots of different steps together).

    **Returns:** ``(t_root, t_star, y_stop)``: the located time (no gradient), and the event
    time and state carrying the implicit-function-theorem gradients (`_ift`).
    """
    dtype = h_s.dtype
    with torch.no_grad():
        cd = coef if fast else [c.detach() for c in coef]
        yd = y_s.detach()
        eps = torch.finfo(dtype).eps
        if ev.tol is None:  # 0 / |h| clamped to 8 eps
            tol_theta = torch.full_like(h_s, 8 * eps)
        else:
            tol_theta = torch.clamp(ev.tol / h_s.abs(), min=8 * eps)

        def gfun(theta):
            return gcall(t_s + theta * h_s, _horner(yd, cd, theta), a_s).to(dtype)

        theta = illinois(gfun, g_lo, g_hi, tol_theta)
    t_root = t_s + theta * h_s
    y_root = _horner(y_s, coef, theta)
    t_star, y_stop = _ift(fcall, gcall, t_root, y_root, a_s, grad_on)
    return t_root, t_star, y_stop


class _Deferred:
    """Placeholder in the records for the event times (`kind` "t") or states ("y") of one
    stashed event step (`part`), replaced once `_EventStash.locate` has run."""

    __slots__ = ("part", "kind")

    def __init__(self, part, kind):
        self.part, self.kind = part, kind


class _EventStash:
    """Event steps whose roots `_integrate` locates after the loop, all in one go.

    Per hit step it keeps, for the samples that crossed: the rows ``(t, h, g_old, g_new)``
    stacked as ``(4, m)``, the step's start state, the stages (h-scaled: ``(n_ext, m,
    *state)`` on the fast path, a list of ``(m, *state)`` tensors carrying the autograd graph
    on the graph path in float32/64; unscaled in float16/bfloat16) and the gathered `args`. A sample is stashed at most once (terminal: it
    leaves; non-terminal: only its first crossing), so the stash holds at most one step's
    stages per sample.
    """

    def __init__(self):
        self.parts = []

    def __len__(self):
        return len(self.parts)

    def add(self, sv, y_s, kh, a_s):
        """Stash one step; returns placeholders for its event times and states."""
        self.parts.append((sv, y_s, kh, a_s))
        k = len(self.parts) - 1
        return _Deferred(k, "t"), _Deferred(k, "y")

    def locate(self, gcall, fcall, ev, W_list, fast, scaled, grad_on):
        """Locate every stashed root; returns the event times and states per stashed step."""
        sv, y_s, kh, a_s = zip(*self.parts)
        sizes = [x.shape[1] for x in sv]

        def cat(xs, dim=0):
            return xs[0] if len(xs) == 1 else torch.cat(xs, dim)

        t_s, h_s, g_lo, g_hi = cat(sv, 1).unbind(0)
        y_s = cat(y_s)
        a_s = tuple(cat(col) for col in zip(*a_s))
        if fast:
            khc = cat(kh, 1)
            coef = [_lincomb_fast(w, khc) for w in W_list]
        else:
            kext = [cat(col) for col in zip(*kh)]
            coef = ([_lincomb_grad(w, kext) for w in W_list] if scaled
                    else _interp_coef(W_list, kext, h_s).unbind(1))
        _, t_star, y_stop = _locate_root(gcall, fcall, ev, t_s, h_s, y_s, coef, g_lo, g_hi,
                                         a_s, fast, grad_on)
        return t_star.split(sizes), y_stop.split(sizes)

"""Obstacle problems for one-dimensional diffusions, and the standard constructors.

A problem describes, for a batch of ``B`` independent problems, the value

    V(t, x) = sup_tau E[ int_t^tau e^{-int r} f ds + e^{-int_t^tau r} g(tau, X_tau) | X_t = x ],
    dX = mu(t, X) dt + sigma(t, X) dW,

which solves the variational inequality (Bensoussan & Lions 1982; Jaillet, Lamberton & Lapeyre 1990)

    min( -dV/dt - L V + r V - f,  V - g ) = 0,   L = 1/2 sigma^2 d_xx + mu d_x,   V(T, .) = g(T, .).

Coefficients are numbers, tensors of shape ``(B,)`` (one constant per problem) or callables
``c(t, x)`` receiving the calendar time ``t`` as a ``(B, 1)`` tensor and nodes ``x`` as a ``(B, m)``
tensor and returning something broadcastable to ``(B, m)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ObstacleProblem", "black_scholes", "brownian_linear_cost", "gbm_log_coefficients"]

_EXERCISE = ("american", "european", "bermudan")
_BOUNDARY_KEYWORDS = ("payoff", "linear")


def _batch_of(name: str, value) -> int | None:
    """Batch size implied by a number/tensor argument (None for scalars and callables)."""
    if callable(value) or value is None or isinstance(value, str):
        return None
    t = torch.as_tensor(value)
    if t.dim() == 0:
        return None
    if t.dim() == 1 or (t.dim() == 2 and t.shape[1] == 1):
        return int(t.shape[0])
    raise ValueError(f"{name} must be a number, a tensor of shape (batch,) or a callable c(t, x); "
                     f"got a tensor of shape {tuple(t.shape)}")


def _broadcast_finite(out: Tensor, x: Tensor, what: str) -> Tensor:
    """`out` broadcast to the shape of the nodes `x`, checked finite; errors name `what`."""
    try:
        out = torch.broadcast_to(out, x.shape)
    except RuntimeError:
        raise ValueError(f"{what} has shape {tuple(out.shape)}, which does not broadcast to "
                         f"(batch, nodes) = {tuple(x.shape)}") from None
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} returned NaN or infinite values")
    return out


class ObstacleProblem:
    """A batch of obstacle problems (optimal stopping of a 1-D diffusion), solved by :func:`solve`.

    **Arguments:**

    - `payoff`: stopping reward g(t, x): callable, number or `(B,)` tensor.
    - `x_min`, `x_max`: the computational domain (numbers or `(B,)` tensors), `x_min < x_max`.
    - `maturity`: horizon T > 0 (number or `(B,)` tensor); at T the value is the payoff.
    - `drift`, `vol`, `rate`, `running`: mu, sigma >= 0, the discount rate r and the running
      reward f (a cost is a negative f). Default 0.
    - `lower`, `upper`: boundary condition at `x_min` / `x_max`: `"payoff"` (Dirichlet V = g),
      `"linear"` (V_xx = 0, linear extrapolation) or a callable `h(t, x)` giving the Dirichlet value.
    - `exercise`: `"american"` (stop at any time), `"european"` (only at T) or `"bermudan"`
      (at `exercise_dates` and at T).
    - `exercise_dates`: calendar times in (0, T) for `"bermudan"`, shape `(d,)` or `(B, d)`; the
      fractions `date / T` must agree across the batch (the time grid is shared).
    - `center`: optional point (number or `(B,)`) where meshes concentrate nodes (e.g. the log strike).
    - `transform`: `"identity"` (the state is x) or `"log"` (the state is S = e^x; values, deltas,
      gammas and boundaries of :class:`~solvers.freeboundary.solve.Result` are then in S units).
    - `stationary`: whether mu, sigma, r and f do not depend on t (the matrices are then built
      and factorised once per step size); default: True when none of them is callable.
    - `time_dependent_payoff`: whether g depends on t (default: True for a callable); when False
      the payoff is evaluated once.
    - `batch_size`: needed only when every argument is a number but a batch is wanted.

    Invalid input (negative or non-finite coefficients, empty domains, unknown keywords) raises
    ValueError/TypeError naming the argument.
    """

    def __init__(self, *, payoff, x_min, x_max, maturity, drift=0.0, vol=0.0, rate=0.0,
                 running=0.0, lower="payoff", upper="payoff", exercise: str = "american",
                 exercise_dates=None, center=None, transform: str = "identity",
                 stationary: bool | None = None, time_dependent_payoff: bool | None = None,
                 batch_size: int | None = None,
                 name: str = "obstacle problem"):
        args = dict(payoff=payoff, x_min=x_min, x_max=x_max, maturity=maturity, drift=drift,
                    vol=vol, rate=rate, running=running, center=center)
        sizes = {k: _batch_of(k, v) for k, v in args.items()}
        sizes = {k: v for k, v in sizes.items() if v is not None}
        b = set(sizes.values())
        if batch_size is not None:
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
            b.add(batch_size)
        if len(b) > 1:
            raise ValueError(f"inconsistent batch sizes among the arguments: {sizes}")
        self.batch_size = b.pop() if b else 1
        for k in ("x_min", "x_max", "maturity"):
            if callable(args[k]):
                raise TypeError(f"{k} must be a number or a (batch,) tensor, not a callable")
        self.x_min = self._const("x_min", x_min)
        self.x_max = self._const("x_max", x_max)
        self.maturity = self._const("maturity", maturity)
        if not bool((self.x_max > self.x_min).all()):
            raise ValueError("x_max must be larger than x_min for every problem")
        if not bool((self.maturity > 0).all()):
            raise ValueError("maturity must be positive")
        self.center = None if center is None else self._const("center", center)
        if self.center is not None and not bool(
                ((self.center >= self.x_min) & (self.center <= self.x_max)).all()):
            raise ValueError("center must lie inside [x_min, x_max]")
        self.payoff, self.drift, self.vol = payoff, drift, vol
        self.rate, self.running = rate, running
        for k in ("payoff", "drift", "vol", "rate", "running"):
            v = args[k]
            if not callable(v):
                t = self._const(k, v)  # validates finiteness now
                if k == "vol" and bool((t < 0).any()):
                    raise ValueError("vol must be non-negative (got a negative volatility)")
        for side, bc in (("lower", lower), ("upper", upper)):
            if not callable(bc) and bc not in _BOUNDARY_KEYWORDS:
                raise ValueError(f"{side} boundary condition must be 'payoff', 'linear' or a "
                                 f"callable h(t, x); got {bc!r}")
        self.lower, self.upper = lower, upper
        if exercise not in _EXERCISE:
            raise ValueError(f"exercise must be one of {_EXERCISE}, got {exercise!r}")
        self.exercise = exercise
        self.exercise_fractions = self._dates(exercise, exercise_dates)
        if transform not in ("identity", "log"):
            raise ValueError(f"transform must be 'identity' or 'log', got {transform!r}")
        self.transform = transform
        if stationary is None:
            stationary = not any(callable(v) for v in (drift, vol, rate, running))
        self.stationary = bool(stationary)
        if time_dependent_payoff is None:
            time_dependent_payoff = callable(payoff)
        self.time_dependent_payoff = bool(time_dependent_payoff)
        self.name = name

    # ------------------------------------------------------------------ helpers
    def _const(self, name: str, value) -> Tensor:
        """(B, 1) float64 tensor of a number / (B,) tensor argument, checked finite."""
        t = torch.as_tensor(value, dtype=torch.float64)
        if t.dim() == 2:
            t = t[:, 0]
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        return t.reshape(-1, 1).expand(self.batch_size, 1).clone() if t.dim() <= 1 else t

    def _dates(self, exercise: str, dates) -> list[float]:
        if exercise != "bermudan":
            if dates is not None and len(torch.as_tensor(dates).reshape(-1)) > 0:
                raise ValueError(f"exercise_dates are only used with exercise='bermudan' (got "
                                 f"exercise={exercise!r})")
            return []
        if dates is None:
            raise ValueError("exercise='bermudan' needs exercise_dates")
        d = torch.as_tensor(dates, dtype=torch.float64)
        if d.dim() == 1:
            d = d.unsqueeze(0).expand(self.batch_size, -1)
        if d.dim() != 2 or d.shape[0] != self.batch_size:
            raise ValueError(f"exercise_dates must have shape (d,) or (batch, d); got "
                             f"{tuple(torch.as_tensor(dates).shape)}")
        if not bool(torch.isfinite(d).all()):
            raise ValueError("exercise_dates contain NaN or infinite values")
        frac = d / self.maturity
        if bool(((frac < 0) | (frac > 1)).any()):
            raise ValueError("exercise_dates must lie in [0, maturity]")
        if frac.shape[1] and not torch.allclose(frac, frac[:1].expand_as(frac), rtol=0, atol=1e-12):
            raise ValueError("exercise_dates / maturity must be the same for every problem of the "
                             "batch (the time grid is shared)")
        # The maturity itself is always an exercise date (terminal condition V = g).
        return sorted({round(float(f), 14) for f in frac[0].tolist() if f < 1 - 1e-14})

    def coefficient(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Evaluate coefficient `name` at calendar times `t` `(B, 1)` and nodes `x` `(B, m)`.

        **Returns:** a `(B, m)` tensor, checked finite (and non-negative for `vol`).
        """
        v = getattr(self, name)
        if callable(v):
            out = v(t, x)
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device)
        else:
            out = torch.as_tensor(v, dtype=x.dtype, device=x.device)
            if out.dim() == 1:
                out = out.unsqueeze(1)
        out = _broadcast_finite(out, x, name)
        if name == "vol" and bool((out < 0).any()):
            raise ValueError("vol must be non-negative (got a negative volatility)")
        return out

    def boundary_value(self, side: str, t: Tensor, x: Tensor) -> Tensor:
        """Dirichlet value `(B, 1)` at the `side` ("lower"/"upper") end `x` `(B, 1)` at time `t`."""
        bc = getattr(self, side)
        if bc == "payoff":
            return self.coefficient("payoff", t, x)
        out = torch.as_tensor(bc(t, x), dtype=x.dtype, device=x.device)
        return _broadcast_finite(out, x, f"{side} boundary value")

    def to_x(self, state: Tensor) -> Tensor:
        """Map the user's state (S for a log transform) to the PDE variable x."""
        if self.transform == "log":
            if bool((state <= 0).any()):
                raise ValueError("spot values must be positive")
            return torch.log(state)
        return state

    def to_state(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_x`."""
        return torch.exp(x) if self.transform == "log" else x

    def __repr__(self) -> str:
        return (f"ObstacleProblem({self.name!r}, batch={self.batch_size}, "
                f"exercise={self.exercise!r}, transform={self.transform!r})")


def gbm_log_coefficients(rate, vol, dividend=0.0):
    """Drift, volatility and discount of ln S for dS = (r - q) S dt + sigma S dW.

    With x = ln S, Ito's formula gives dx = (r - q - sigma^2/2) dt + sigma dW; the discount stays r.

    **Arguments:** `rate` r, `vol` sigma, `dividend` q (numbers or `(B,)` tensors).

    **Returns:** `(drift, vol, rate)` to pass to :class:`ObstacleProblem` with `transform="log"`.
    """
    r = torch.as_tensor(rate, dtype=torch.float64)
    s = torch.as_tensor(vol, dtype=torch.float64)
    q = torch.as_tensor(dividend, dtype=torch.float64)
    return r - q - 0.5 * s * s, s, r


def _col(v, like: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1) if t.dim() >= 1 else t


def black_scholes(kind: str = "put", strike=100.0, rate=0.05, vol=0.2, maturity=1.0,
                  dividend=0.0, exercise: str = "american",
                  exercise_dates: Sequence[float] | Tensor | None = None,
                  spot_range: tuple[float, float] | None = None,
                  width: float | None = None, center=None) -> ObstacleProblem:
    """Black–Scholes vanilla put or call (American, European or Bermudan) in x = ln S.

    Any numeric argument may be a `(B,)` tensor: the result is then a batch of B contracts.

    **Arguments:**

    - `kind`: `"put"` or `"call"`.
    - `strike`, `rate`, `vol`, `maturity`, `dividend`: K, r, sigma >= 0, T > 0, q.
    - `exercise`: `"american"`, `"european"` or `"bermudan"`; with `exercise_dates` given and
      `exercise` left `"american"`, `"bermudan"` is implied.
    - `exercise_dates`: Bermudan dates in [0, T] (calendar times; the maturity is always one, and
      0 means exercise is also allowed now).
    - `spot_range`: `(S_min, S_max)` of the grid; default ln K ± w with
      w = max(5 sigma sqrt(T) + |r - q| T, 0.5) (or `width` if given, at least m below) — wide enough that the
      far-field Dirichlet values below are accurate to far below 1e-6. A `spot_range` must
      contain K e^{-m} .. K e^{m}, m = min(3 sigma sqrt(T) + |r - q| T, 1), or ValueError: the
      far-field values are wrong near the strike (this is a minimum, not an accuracy
      guarantee: the error at an end is of the order of the option's time value there).
    - `center`: spot where the mesh concentrates nodes (default the strike; e.g. the spot of
      interest), number or `(B,)`.

    The far-field boundary values are the zero-volatility values over the remaining exercise
    opportunities, which are the limits as S -> 0 and S -> infinity but not exact at a finite
    end of the grid (there they drop the time value): for an American option
    max(intrinsic, e^{-r tau} payoff(S e^{(r-q) tau})), for a European one the second term only, for a
    Bermudan one the maximum over the remaining dates.

    **Returns:** an :class:`ObstacleProblem` with `transform="log"` and `center = ln K`.
    """
    if kind not in ("put", "call"):
        raise ValueError(f"kind must be 'put' or 'call', got {kind!r}")
    if exercise_dates is not None and exercise == "american":
        exercise = "bermudan"
    if exercise not in _EXERCISE:
        raise ValueError(f"exercise must be one of {_EXERCISE}, got {exercise!r}")
    if exercise == "european" and exercise_dates is not None and torch.as_tensor(
            exercise_dates).numel():
        raise ValueError("exercise_dates are only used with exercise='bermudan' (got "
                         "exercise='european')")
    f64 = dict(dtype=torch.float64)
    K, r, s, T, q = (torch.as_tensor(v, **f64) for v in (strike, rate, vol, maturity, dividend))
    for name, v in (("strike", K), ("rate", r), ("vol", s), ("maturity", T), ("dividend", q)):
        if v.dim() > 1:
            raise ValueError(f"{name} must be a number or a (batch,) tensor, got shape "
                             f"{tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    sizes = {name: int(v.shape[0]) for name, v in
             (("strike", K), ("rate", r), ("vol", s), ("maturity", T), ("dividend", q))
             if v.dim() == 1}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inconsistent batch sizes among the arguments: {sizes}")
    if bool((s < 0).any()):
        raise ValueError("vol must be non-negative (got a negative volatility)")
    if bool((K <= 0).any()):
        raise ValueError("strike must be positive")
    if bool((T <= 0).any()):
        raise ValueError("maturity must be positive")
    sign = -1.0 if kind == "put" else 1.0
    if spot_range is not None:
        lo, hi = (torch.as_tensor(v, **f64) for v in spot_range)
        if bool((lo <= 0).any()) or bool((hi <= lo).any()):
            raise ValueError(f"spot_range must satisfy 0 < S_min < S_max, got {spot_range}")
        x_min, x_max = torch.log(lo), torch.log(hi)
        # The far-field values are exact only as S -> 0 or infinity: an end of the grid inside
        # the region where the option has time value gives a silently wrong price (e.g. a put
        # with K = 100 on (120, 200): 0.0 at S = 150 instead of 0.096). Required margin around
        # ln K: a few standard deviations of ln S plus the drift, capped at 1 (a factor e).
        m = torch.clamp(3.0 * s * torch.sqrt(T) + (r - q).abs() * T, max=1.0)
        need_lo, need_hi = torch.log(K) - m, torch.log(K) + m
        short = (x_min > need_lo + 1e-12) | (x_max < need_hi - 1e-12)
        if bool(short.any()):
            j = int(short.reshape(-1).nonzero()[0, 0]) if short.dim() else 0
            def pick(v):
                return float(v.reshape(-1)[j]) if v.numel() > 1 else float(v)

            raise ValueError(
                f"spot_range {spot_range} does not cover the region where the far-field boundary "
                f"values are not exact: it must contain K exp(-m) .. K exp(m) with "
                f"m = min(3 vol sqrt(T) + |rate - dividend| T, 1), here "
                f"{pick(torch.exp(need_lo)):.6g} .. {pick(torch.exp(need_hi)):.6g}"
                + (f" (problem {j} of the batch)" if short.numel() > 1 else ""))
        centre_k = torch.clamp(torch.log(K), x_min + 1e-9, x_max - 1e-9)
    else:
        if width is not None:
            w = torch.as_tensor(width, **f64)
            if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
                raise ValueError(f"width must be positive and finite, got {width!r}")
            # the same minimum as for spot_range: ln K +- w must reach m on both sides
            m = torch.clamp(3.0 * s * torch.sqrt(T) + (r - q).abs() * T, max=1.0)
            if bool((w < m - 1e-12).any()):
                raise ValueError(
                    f"width {width!r} is narrower than the region where the far-field boundary "
                    f"values are not exact: it must be at least m = min(3 vol sqrt(T) + "
                    f"|rate - dividend| T, 1), here {float(m.max()):.6g}")
        else:
            w = torch.clamp(5.0 * s * torch.sqrt(T) + (r - q).abs() * T, min=0.5)
        x_min, x_max, centre_k = torch.log(K) - w, torch.log(K) + w, torch.log(K)

    def payoff(t, x):
        return torch.clamp(sign * (torch.exp(x) - _col(K, x)), min=0.0)

    dates = None
    if exercise == "bermudan":
        if exercise_dates is None:
            raise ValueError("exercise='bermudan' needs exercise_dates")
        dates = torch.as_tensor(exercise_dates, **f64)
    date_list = None if dates is None else dates  # captured below

    def far_value(t, x):
        # Zero-volatility value over the remaining exercise times: exact in the far field.
        Kc, rc, qc, Tc = (_col(v, x) for v in (K, r, q, T))
        S = torch.exp(x)

        def fwd(dt):
            return torch.exp(-rc * dt) * torch.clamp(sign * (S * torch.exp((rc - qc) * dt) - Kc),
                                                     min=0.0)

        tau = Tc - t
        out = fwd(tau)
        if exercise == "american":
            out = torch.maximum(out, torch.clamp(sign * (S - Kc), min=0.0))
        elif exercise == "bermudan":
            d = date_list.to(x)
            d = d.reshape(1, -1) if d.dim() == 1 else d
            for j in range(d.shape[1]):
                dj = d[:, j:j + 1] - t
                out = torch.where(dj >= -1e-12, torch.maximum(out, fwd(dj.clamp(min=0.0))), out)
        return out

    if center is None:
        center = centre_k
    else:
        c = torch.as_tensor(center, **f64)
        if bool((c <= 0).any()):
            raise ValueError("center must be a positive spot")
        center = torch.clamp(torch.log(c), x_min + 1e-9, x_max - 1e-9)
    drift, sig, disc = gbm_log_coefficients(r, s, q)
    return ObstacleProblem(payoff=payoff, x_min=x_min, x_max=x_max, maturity=T, drift=drift,
                           vol=sig, rate=disc, lower=far_value, upper=far_value,
                           exercise=exercise, exercise_dates=dates, center=center,
                           transform="log", stationary=True, time_dependent_payoff=False,
                           name=f"Black-Scholes {exercise} {kind}")


def brownian_linear_cost(cost=0.5, maturity=40.0, half_width: float | None = None
                         ) -> ObstacleProblem:
    """sup_tau E[|B_tau| - c tau] for a standard Brownian motion B (Shepp-type problem).

    For T -> infinity the value is V(x) = c x^2 + 1/(4c) inside |x| < 1/(2c) and |x| outside; the
    optimal rule stops at the exit of (-1/(2c), 1/(2c)) (verify: V'' = 2c = 2c, smooth fit at
    +-1/(2c)). Here mu = 0, sigma = 1, r = 0, f = -c, g = |x|.

    **Arguments:** `cost` c > 0 (number or `(B,)`), `maturity` T (large), `half_width` of the domain
    (default 3/(2c)).

    **Returns:** an :class:`ObstacleProblem` centred at 0.
    """
    c = torch.as_tensor(cost, dtype=torch.float64)
    if not bool(torch.isfinite(c).all()) or bool((c <= 0).any()):
        raise ValueError("cost must be positive and finite")
    hw = 1.5 / c if half_width is None else torch.as_tensor(half_width, dtype=torch.float64)
    return ObstacleProblem(payoff=lambda t, x: x.abs(), x_min=-hw, x_max=hw, maturity=maturity,
                           drift=0.0, vol=1.0, rate=0.0, running=-c, center=0.0 * hw,
                           time_dependent_payoff=False,
                           name="Brownian motion with linear cost")


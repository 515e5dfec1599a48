"""Shared ODE test problems with known answers.

Three families, each usable by our batched solver (``f(t, y)`` with ``y`` of shape
``(batch, d)`` and ``t`` of shape ``(batch,)``) and by scipy (``f(t, y)`` with ``y`` of shape
``(d,)``):

- :data:`CLOSED_FORMS`: the four closed-form problems of torchdiffeq's test-suite
  (``constant``, ``sine``, ``linear``, ``exp``) on t in [1, 8].
- :data:`DETEST`: the non-stiff DETEST problems A1-A5, B1-B5, C1-C5, D1-D5, E1-E5 of Hull,
  Enright, Fellen & Sedgwick (1972), as transcribed in diffrax's ``test/test_detest.py`` (whose C5
  initial condition is the correct one), all integrated over t in [0, 20]. Where an exact
  solution exists it is attached (A1-A4, B2, C1-C4 through ``expm``, D1-D5 at ``t = 2 pi``,
  E1, E4, E5).
- :func:`linear_order_problem`: y' = A y with A = 0.5 N(0, 1)^{10x10} on [0, 4], exact value
  ``expm(4 A) y0`` (diffrax's convergence-order problem).

Every right-hand side is written once as ``rhs(t, y, m)`` where ``m`` is ``numpy`` or ``torch``;
the two wrappers :meth:`Problem.f_torch` and :meth:`Problem.f_numpy` bind ``m``.

References: Hull, Enright, Fellen & Sedgwick, "Comparing numerical methods for ordinary
differential equations", SIAM J. Numer. Anal. 9(4):603-637, 1972; ``/work/shared/REFERENCES.md``
(ODE section) and ``research/solver_anchors.md`` section 5 for the exact solutions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.linalg
import torch

__all__ = [
    "CLOSED_FORMS",
    "DETEST",
    "KEPLER_PERIOD",
    "Problem",
    "linear_order_problem",
    "scipy_reference",
]


def _stack(m, xs):
    # numpy.stack and torch.stack both accept the axis positionally.
    return m.stack(xs, -1)


def _cat(m, xs):
    return np.concatenate(xs, -1) if m is np else torch.cat(xs, -1)


def _const(m, value, like):
    """`value` (numpy array) as an array of `like`'s kind, dtype and device."""
    if m is np:
        return np.asarray(value, dtype=like.dtype)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _bt(t, y):
    """Broadcast a per-sample time `(batch,)` (or a scalar) against `y[..., 0]`."""
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        return t.to(y.dtype)
    return t


@dataclass(frozen=True)
class Problem:
    """An initial-value problem with a reference.

    **Arguments:**

    - `name`: short name (``"A1"``, ``"sine"``...).
    - `rhs`: ``rhs(t, y, m) -> dy`` with ``y`` of shape ``(..., dim)``, ``t`` a scalar or
      ``(batch,)``, ``m`` the array module (``numpy`` or ``torch``).
    - `y0`: initial value, numpy ``(dim,)``.
    - `t0`, `t1`: the integration interval.
    - `exact`: optional ``exact(t) -> (dim,)`` numpy closed form (``t`` a float).
    """

    name: str
    rhs: Callable
    y0: np.ndarray
    t0: float
    t1: float
    exact: Callable | None = None

    @property
    def dim(self) -> int:
        return int(self.y0.shape[-1])

    def f_torch(self, t, y):
        """Batched torch field: ``t`` ``(batch,)``, ``y`` ``(batch, dim)``."""
        return self.rhs(_bt(t, y), y, torch)

    def f_numpy(self, t, y):
        """scipy field: ``t`` float, ``y`` ``(dim,)``."""
        return self.rhs(t, y, np)

    def y0_torch(self, batch=1, dtype=torch.float64, device="cpu"):
        return torch.as_tensor(self.y0, dtype=dtype, device=device).expand(batch, -1).clone()


# ----------------------------------------------------------------------------------------------
# torchdiffeq closed forms (tests/problems.py of rtqichen/torchdiffeq), t in [1, 8]
# ----------------------------------------------------------------------------------------------

_A_CONST, _B_CONST = 0.2, 3.0


def _constant_rhs(t, y, m):
    return _A_CONST + (y - (_A_CONST * _col(t, y) + _B_CONST)) ** 5


def _col(t, y):
    """`t` as a column broadcastable against `y` of shape `(..., d)`."""
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        return t.reshape(*t.shape, *([1] * (y.dim() - t.dim())))
    return t


def _sine_exact(t):
    return np.array(
        [
            -0.5 * t**4 * math.cos(2 * t)
            + 0.5 * t**3 * math.sin(2 * t)
            + 0.25 * t**2 * math.cos(2 * t)
            - t**3
            + 2 * t**4
            + (math.pi - 0.25) * t**2
        ]
    )


def _sine_rhs(t, y, m):
    t = _col(t, y)
    return 2 * y / t + t**4 * m.sin(2 * t) - t**2 + 4 * t**3


def _skew_matrix():
    # Fixed seed so every run integrates the same skew-symmetric system (torchdiffeq uses
    # U = 0.1 randn(10, 10) and A = U - U^T; the particular draw does not matter).
    u = 0.1 * np.random.default_rng(0).standard_normal((10, 10))
    return u - u.T


_SKEW = _skew_matrix()


def _linear_rhs_factory(a):
    def rhs(t, y, m):
        return y @ _const(m, a, y).T

    return rhs


def _expm_exact(a, y0, t0):
    def exact(t):
        return scipy.linalg.expm(a * (t - t0)) @ y0

    return exact


def _exp_rhs(t, y, m):
    t = _col(t, y)
    return -0.1 * m.exp(-0.1 * t) + 0 * y


def _closed_forms():
    t0, t1 = 1.0, 8.0
    ones = np.ones(10)
    return {
        "constant": Problem(
            "constant", _constant_rhs, np.array([_A_CONST * t0 + _B_CONST]), t0, t1,
            lambda t: np.array([_A_CONST * t + _B_CONST]),
        ),
        "sine": Problem("sine", _sine_rhs, _sine_exact(t0), t0, t1, _sine_exact),
        "linear": Problem(
            "linear", _linear_rhs_factory(_SKEW), ones, t0, t1, _expm_exact(_SKEW, ones, t0)
        ),
        "exp": Problem(
            "exp", _exp_rhs, np.array([math.exp(-0.1 * t0)]), t0, t1,
            lambda t: np.array([math.exp(-0.1 * t)]),
        ),
    }


CLOSED_FORMS: dict[str, Problem] = _closed_forms()


# ----------------------------------------------------------------------------------------------
# DETEST (diffrax copy), t in [0, 20]
# ----------------------------------------------------------------------------------------------

T_DETEST = 20.0
KEPLER_PERIOD = 2 * math.pi


def _a(name, rhs, y0, exact=None):
    return Problem(name, rhs, np.array([y0], dtype=float), 0.0, T_DETEST, exact)


def _b1(t, y, m):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(m, [2 * (y1 - y1 * y2), -y2 + y1 * y2])


_B2 = np.array([[-1.0, 1.0, 0.0], [1.0, -2.0, 1.0], [0.0, 1.0, -1.0]])


def _b3(t, y, m):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(m, [-y1, y1 - y2**2, y2**2])


def _b4(t, y, m):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    r = m.sqrt(y1**2 + y2**2)
    return _stack(m, [-y2 - y1 * y3 / r, y1 - y2 * y3 / r, y1 / r])


def _b5(t, y, m):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return _stack(m, [y2 * y3, -y1 * y3, -0.51 * y1 * y2])


def _bidiagonal(diag, sub):
    n = len(diag) + 1
    a = np.zeros((n, n))
    a[np.arange(n - 1), np.arange(n - 1)] = diag
    a[np.arange(1, n), np.arange(n - 1)] = sub
    return a


_C1 = _bidiagonal(-np.ones(9), np.ones(9))
_C2 = _bidiagonal(-np.arange(1.0, 10.0), np.arange(1.0, 10.0))


def _tridiagonal(n):
    a = np.zeros((n, n))
    a[np.arange(n - 1), np.arange(n - 1)] = -2.0
    a[np.arange(1, n), np.arange(n - 1)] = 1.0
    a[np.arange(n - 1), np.arange(1, n)] = 1.0
    return a


_C3 = _tridiagonal(10)
_C4 = _tridiagonal(51)

# C5: the five outer planets (Hull et al. 1972); the y0 uses 1.65699966404 (diffrax and the
# original paper), not torchdiffeq's mistyped 165699966404.
_C5_K2 = 2.95912208286
_C5_M0 = 1.00000597682
_C5_M = np.array(
    [0.000954786104043, 0.000285583733151, 0.0000437273164546, 0.0000517759138449,
     0.00000277777777778]
)
_C5_Y0 = np.array(
    [
        [3.42947415189, 6.64145542550, 11.2630437207, -30.1552268759, -21.1238353380],
        [3.35386959711, 5.97156957878, 14.6952576794, 1.65699966404, 28.4465098142],
        [1.35494901715, 2.18231499728, 6.27960525067, 1.43785752721, 15.3882659679],
    ]
)
_C5_V0 = np.array(
    [
        [-0.557160570446, -0.415570776342, -0.325325669158, -0.024047625417, -0.176860753121],
        [0.505696783289, 0.365682722812, 0.189706021964, -0.287659532608, -0.216393453025],
        [0.230578543901, 0.169143213293, 0.087726532278, -0.117219543175, -0.014864789309],
    ]
)


def _c5(t, y, m):
    lead = y.shape[:-1]
    pos = y[..., :15].reshape(*lead, 3, 5)  # (..., coordinate i, planet j)
    vel = y[..., 15:]
    mass = _const(m, _C5_M, y)
    off_diag = _const(m, 1.0 - np.eye(5), y)
    r3 = (pos**2).sum(-2) ** 1.5  # (..., 5): |x_j|^3
    diff = pos[..., :, None, :] - pos[..., :, :, None]  # (..., 3, j, k): x_k - x_j
    # d_jk^3 with the diagonal set to 1 so that the masked 0/0 never appears.
    d3 = ((diff**2).sum(-3) + (1.0 - off_diag)) ** 1.5  # (..., j, k)
    term1 = -(_C5_M0 + mass) * pos / r3[..., None, :]
    term4 = mass * (diff / d3[..., None, :, :] - (pos / r3[..., None, :])[..., :, None, :])
    term5 = (term4 * off_diag).sum(-1)  # (..., 3, j)
    acc = _C5_K2 * (term1 + term5)
    return _cat(m, [vel, acc.reshape(*lead, 15)])


def _kepler(t, y, m):
    y1, y2, y3, y4 = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    r3 = (y1**2 + y2**2) ** 1.5
    return _stack(m, [y3, y4, -y1 / r3, -y2 / r3])


def _kepler_y0(eps):
    return np.array([1 - eps, 0.0, 0.0, math.sqrt((1 + eps) / (1 - eps))])


def _e1(t, y, m):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(m, [y2, -(y2 / (t + 1) + y1 * (1 - 0.25 / (t + 1) ** 2))])


def _e1_exact(t):
    # J_{1/2}(t + 1) = sqrt(2 / (pi x)) sin x and its derivative, x = t + 1.
    x = t + 1.0
    c = math.sqrt(2.0 / math.pi)
    return np.array([c * math.sin(x) / math.sqrt(x),
                     c * (math.cos(x) / math.sqrt(x) - 0.5 * math.sin(x) * x**-1.5)])


def _e2(t, y, m):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(m, [y2, (1 - y1**2) * y2 - y1])


def _e3(t, y, m):
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(m, [y2, y1**3 / 6 - y1 + 2 * m.sin(2.78535 * t)])


# E4: y'' = c - 0.4 y'^2 with c = 0.032 in diffrax and in Hull et al. (REFERENCES.md writes 0.32;
# the closed form below holds for any c > 0): y' = v tanh(k t), y = 30 + ln cosh(k t) / 0.4, with
# v = sqrt(c / 0.4), k = sqrt(0.4 c).
_E4_C = 0.032


def _e4(t, y, m):
    y2 = y[..., 1]
    return _stack(m, [y2, _E4_C - 0.4 * y2**2])


def _e4_exact(t):
    v, k = math.sqrt(_E4_C / 0.4), math.sqrt(0.4 * _E4_C)
    return np.array([30.0 + math.log(math.cosh(k * t)) / 0.4, v * math.tanh(k * t)])


def _e5(t, y, m):
    y2 = y[..., 1]
    return _stack(m, [y2, m.sqrt(1 + y2**2) / (25 - t)])


def _e5_exact(t):
    s = 25.0 - t
    return np.array(
        [0.5 * (25 * math.log(25.0 / s) - t + t**2 / 50), 0.5 * (25.0 / s - s / 25.0)]
    )


def _detest():
    e0 = np.zeros(10)
    e0[0] = 1.0
    e0_51 = np.zeros(51)
    e0_51[0] = 1.0
    probs = [
        _a("A1", lambda t, y, m: -y, 1.0, lambda t: np.array([math.exp(-t)])),
        _a("A2", lambda t, y, m: -0.5 * y**3, 1.0, lambda t: np.array([1 / math.sqrt(t + 1)])),
        _a("A3", lambda t, y, m: y * m.cos(_col(t, y)), 1.0,
           lambda t: np.array([math.exp(math.sin(t))])),
        _a("A4", lambda t, y, m: 0.25 * y * (1 - 0.05 * y), 1.0,
           lambda t: np.array([20 / (1 + 19 * math.exp(-t / 4))])),
        _a("A5", lambda t, y, m: (y - _col(t, y)) / (y + _col(t, y)), 4.0),
        Problem("B1", _b1, np.array([1.0, 3.0]), 0.0, T_DETEST),
        Problem("B2", _linear_rhs_factory(_B2), np.array([2.0, 0.0, 1.0]), 0.0, T_DETEST,
                _expm_exact(_B2, np.array([2.0, 0.0, 1.0]), 0.0)),
        Problem("B3", _b3, np.array([1.0, 0.0, 0.0]), 0.0, T_DETEST),
        Problem("B4", _b4, np.array([3.0, 0.0, 0.0]), 0.0, T_DETEST),
        Problem("B5", _b5, np.array([0.0, 1.0, 1.0]), 0.0, T_DETEST),
        Problem("C1", _linear_rhs_factory(_C1), e0, 0.0, T_DETEST, _expm_exact(_C1, e0, 0.0)),
        Problem("C2", _linear_rhs_factory(_C2), e0, 0.0, T_DETEST, _expm_exact(_C2, e0, 0.0)),
        Problem("C3", _linear_rhs_factory(_C3), e0, 0.0, T_DETEST, _expm_exact(_C3, e0, 0.0)),
        Problem("C4", _linear_rhs_factory(_C4), e0_51, 0.0, T_DETEST,
                _expm_exact(_C4, e0_51, 0.0)),
        Problem("C5", _c5, np.concatenate([_C5_Y0.reshape(-1), _C5_V0.reshape(-1)]), 0.0,
                T_DETEST),
    ]
    for i, eps in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
        y0 = _kepler_y0(eps)
        # No closed form at t = 20, but the orbit has period exactly 2 pi: y(2 pi) = y(0)
        # (KEPLER_PERIOD), and energy -1/2 and angular momentum sqrt(1 - eps^2) are invariant.
        probs.append(Problem(f"D{i + 1}", _kepler, y0, 0.0, T_DETEST))
    probs += [
        Problem("E1", _e1, np.array([0.6713967071418030, 0.09540051444747446]), 0.0,
                T_DETEST, _e1_exact),
        Problem("E2", _e2, np.array([2.0, 0.0]), 0.0, T_DETEST),
        Problem("E3", _e3, np.array([0.0, 0.0]), 0.0, T_DETEST),
        Problem("E4", _e4, np.array([30.0, 0.0]), 0.0, T_DETEST, _e4_exact),
        Problem("E5", _e5, np.array([0.0, 0.0]), 0.0, T_DETEST, _e5_exact),
    ]
    return {p.name: p for p in probs}


DETEST: dict[str, Problem] = _detest()


@functools.cache
def scipy_reference(name: str, t_end: float | None = None, tol: float = 1e-12) -> np.ndarray:
    """scipy ``solve_ivp(method="DOP853", rtol=atol=tol)`` value of a DETEST or closed-form
    problem at ``t_end`` (default: the problem's ``t1``). Cached per process.
    """
    prob = DETEST.get(name) or CLOSED_FORMS[name]
    t_end = prob.t1 if t_end is None else t_end
    sol = scipy.integrate.solve_ivp(
        prob.f_numpy, (prob.t0, t_end), prob.y0, method="DOP853", rtol=tol, atol=tol
    )
    if not sol.success:  # pragma: no cover - a broken reference must not pass silently
        raise RuntimeError(f"scipy reference for {name} failed: {sol.message}")
    return sol.y[:, -1].copy()


def linear_order_problem(seed: int = 0, dim: int = 10):
    """y' = A y, A = 0.5 N(0, 1)^{dim x dim}, y0 ~ N(0, 1), on [0, 4] (diffrax's order test).

    **Returns:** ``(problem, exact_y(4))`` with the exact value ``expm(4 A) y0``.
    """
    rng = np.random.default_rng(seed)
    a = 0.5 * rng.standard_normal((dim, dim))
    y0 = rng.standard_normal(dim)
    prob = Problem("linear_order", _linear_rhs_factory(a), y0, 0.0, 4.0, _expm_exact(a, y0, 0.0))
    return prob, prob.exact(4.0)

"""Butcher tableaus of the explicit Runge--Kutta methods, and their dense-output weights.

A method is a tableau: nodes ``c``, the strictly lower-triangular matrix ``a``, the weights
``b`` of the propagated solution, optionally the weights ``b_err = b - b_hat`` of the embedded
error estimate, and a description of its continuous extension (dense output).

Every continuous extension used here is a polynomial in ``theta = (t - t_n) / h`` whose
coefficients are linear combinations of the stages (plus the derivative at the new point), so
a method carries one matrix ``interp`` of shape ``(degree, n_ext)``:

    y(t_n + theta h) = y_n + h * sum_j theta^(j+1) * sum_i interp[j, i] * k_i,

where ``k_1..k_s`` are the stages and, for methods that are not FSAL, ``k_{s+1} = f(t_n+h, y_{n+1})``
(which the solver computes anyway as the next step's first stage).

References:
    Butcher, *Numerical Methods for Ordinary Differential Equations*, 3rd ed., Wiley 2016.
    Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed., Springer 1993 (II.4-II.6).
    Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6 (1980).
    Shampine, "Some practical Runge-Kutta formulas", Math. Comp. 46 (1986) (dopri5 midpoint).
    Bogacki & Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2 (1989).
    Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
    assumption", Comput. Math. Appl. 62 (2011).
    Prince & Dormand, "High order embedded Runge-Kutta formulae", J. Comp. Appl. Math. 7 (1981).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ButcherTableau", "TABLEAUS"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge--Kutta tableau.

    **Arguments:**

    - `c`: nodes, length ``s`` (``c[0] == 0``).
    - `a`: rows of the strictly lower-triangular matrix; ``a[i]`` has ``i`` entries (row 0 empty).
    - `b`: solution weights, length ``s``.
    - `order`: order of the propagated solution.
    - `b_err`: ``b - b_hat`` (length ``s``) for an embedded error estimate, or ``None`` (fixed step).
    - `error_order`: order of the embedded solution ``b_hat`` (sets the controller exponent
      ``1 / (error_order + 1)``).
    - `fsal`: first stage of the next step equals the last stage of this one
      (``c[-1] == 1`` and ``a[-1] == b[:-1]``).
    - `interp`: ``(degree, n_ext)`` continuous-extension matrix (see module docstring), or
      ``None`` for the cubic Hermite interpolant built from ``y_n, y_{n+1}, f_n, f_{n+1}``.
    - `c_mid`: instead of `interp`, weights giving ``y(t_n + h/2) = y_n + h * sum c_mid_i k_i``;
      a quartic through ``y_n, y_{n+1}, f_n, f_{n+1}, y_mid`` is then used (Shampine 1986).
    - `name`: for messages.

    **Returns:** a frozen dataclass; `interp_matrix()` gives the continuous-extension matrix.
    """

    c: tuple
    a: tuple
    b: tuple
    order: int
    b_err: tuple | None = None
    error_order: int | None = None
    fsal: bool = False
    interp: tuple | None = None
    c_mid: tuple | None = None
    name: str = "rk"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        s = len(self.c)
        if len(self.b) != s or len(self.a) != s:
            raise ValueError(f"tableau {self.name}: c, a, b must have the same number of stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name}: row {i} of a must have {i} entries")
            # Row-sum condition: each node is the sum of its row (consistency of the stages).
            if i > 0 and abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau {self.name}: row {i} of a does not sum to c[{i}]")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"tableau {self.name}: weights b must sum to 1")
        if self.b_err is not None and len(self.b_err) != s:
            raise ValueError(f"tableau {self.name}: b_err must have {s} entries")
        if self.fsal and not (self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1])
                              and self.b[-1] == 0.0):
            raise ValueError(f"tableau {self.name}: declared FSAL but last row is not b")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def n_ext(self) -> int:
        """Number of derivative vectors the interpolant combines (stages + f at the new point)."""
        return self.stages if self.fsal else self.stages + 1

    def interp_matrix(self) -> np.ndarray:
        """``(degree, n_ext)`` float64 matrix of the continuous extension (see module doc)."""
        if "interp" in self._cache:
            return self._cache["interp"]
        s, n = self.stages, self.n_ext
        bvec = np.zeros(n)
        bvec[:s] = self.b
        f0 = np.zeros(n)
        f0[0] = 1.0
        f1 = np.zeros(n)
        f1[n - 1] = 1.0  # FSAL: last stage is f(t_n+h, y_{n+1}); otherwise the extra vector
        if self.interp is not None:
            m = np.asarray(self.interp, dtype=np.float64)
            if m.shape[1] != n:
                raise ValueError(f"tableau {self.name}: interp must have {n} columns")
        elif self.c_mid is not None:
            # Quartic p(theta) = y0 + sum_j theta^j c_j through p(1)=y1, p'(0)=h f0,
            # p'(1)=h f1, p(1/2)=y_mid; all quantities below are in units of h (y = y0 + h*.).
            mid = np.zeros(n)
            mid[: len(self.c_mid)] = self.c_mid
            c1 = f0
            A = bvec - c1
            B = f1 - c1
            C = 16.0 * mid - 8.0 * c1
            c4 = C - 8.0 * A + 2.0 * B
            c3 = 14.0 * A - 3.0 * B - 2.0 * C
            c2 = -5.0 * A + B + C
            m = np.stack([c1, c2, c3, c4])
        else:
            # Cubic Hermite: y0 + theta h f0 + theta^2 (3D - 2h f0 - h f1) + theta^3 (-2D + h f0 + h f1),
            # with D = y1 - y0 = h * (b . k).
            m = np.stack([f0, 3.0 * bvec - 2.0 * f0 - f1, -2.0 * bvec + f0 + f1])
        self._cache["interp"] = m
        return m


def _tsit5_interp() -> tuple:
    """Tsitouras (2011) continuous extension, as polynomial coefficients in theta.

    Each b_i(theta) is given in product form in the paper; we expand it to powers of theta.
    """
    P = np.polynomial.polynomial
    th = np.array([0.0, 1.0])  # the polynomial "theta"

    def prod(*fs):
        out = np.array([1.0])
        for f in fs:
            out = P.polymul(out, f)
        return out

    def lin(r):  # (theta - r)
        return np.array([-r, 1.0])

    def quad(p, q):  # theta^2 + p theta + q
        return np.array([q, p, 1.0])

    polys = [
        -1.0530884977290216 * prod(th, lin(1.3299890189751412), quad(-1.4364028541716351,
                                                                      0.7139816917074209)),
        0.1017 * prod(th, th, quad(-2.1966568338249754, 1.2949852507374631)),
        2.490627285651252793 * prod(th, th, quad(-2.38535645472061657, 1.57803468208092486)),
        -16.54810288924490272 * prod(th, th, lin(1.21712927295533244), lin(0.61620406037800089)),
        47.37952196281928122 * prod(th, th, lin(1.203071208372362603), lin(0.658047292653547382)),
        -34.87065786149660974 * prod(th, th, lin(1.2), lin(0.666666666666666667)),
        2.5 * prod(th, th, lin(1.0), lin(0.6)),
    ]
    deg = 4
    m = np.zeros((deg, 7))
    for i, p in enumerate(polys):
        p = np.pad(p, (0, deg + 1 - len(p)))
        m[:, i] = p[1: deg + 1]  # constant term is zero for every b_i
    return tuple(map(tuple, m))


_D5_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_D5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_D5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)

_T5_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.897153057105493, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774),
)
_T5_BERR = (-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
            -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 0.015151515151515152)

# Prince & Dormand (1981) RK8(7)13M, rational approximations as published.
_D8_C = (0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200, 5490023248 / 9719169821,
         13 / 20, 1201146811 / 1299019798, 1.0, 1.0)
_D8_A = (
    (),
    (1 / 18,),
    (1 / 48, 1 / 16),
    (1 / 32, 0.0, 3 / 32),
    (5 / 16, 0.0, -75 / 64, 75 / 64),
    (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
    (29443841 / 614563906, 0.0, 0.0, 77736538 / 692538347, -28693883 / 1125000000,
     23124283 / 1800000000),
    (16016141 / 946692911, 0.0, 0.0, 61564180 / 158732637, 22789713 / 633445777,
     545815736 / 2771057229, -180193667 / 1043307555),
    (39632708 / 573591083, 0.0, 0.0, -433636366 / 683701615, -421739975 / 2616292301,
     100302831 / 723423059, 790204164 / 839813087, 800635310 / 3783071287),
    (246121993 / 1340847787, 0.0, 0.0, -37695042795 / 15268766246, -309121744 / 1061227803,
     -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457,
     123872331 / 1001029789),
    (-1028468189 / 846180014, 0.0, 0.0, 8478235783 / 508512852, 1311729495 / 1432422823,
     -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
     -45442868181 / 3398467696, 3065993473 / 597172653),
    (185892177 / 718116043, 0.0, 0.0, -3185094517 / 667107341, -477755414 / 1098053517,
     -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563,
     -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083),
    (403863854 / 491063109, 0.0, 0.0, -5068492393 / 434740067, -411421997 / 543043805,
     652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034,
     3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0.0),
)
_D8_B = (14005451 / 335480064, 0.0, 0.0, 0.0, 0.0, -59238493 / 1068277825,
         181606767 / 758867731, 561292985 / 797845732, -1041891430 / 1371343529,
         760417239 / 1151165299, 118820643 / 751138087, -528747749 / 2220607170, 1 / 4)
_D8_BHAT = (13451932 / 455176623, 0.0, 0.0, 0.0, 0.0, -808719846 / 976000145,
            1757004468 / 5645159321, 656045339 / 265891186, -3867574721 / 1518517206,
            465885868 / 322736535, 53011238 / 667516719, 2 / 45, 0.0)

# Degree-6 continuous extension of RK8(7)13M: b_i(theta) = sum_j P[i][j] theta^(j+1), over the
# 13 stages plus f(t_n + h, y_{n+1}) (column 14). Numbers as distributed with torchdiffeq
# (MIT licence) for this tableau; facts, re-checked here by b_i(1) == b_i.
_D8_P = {
    0: (1.0, -6.6910181737837595697, 19.9990069333683970610, -30.0610568289666450593,
        22.1396504998094068976, -6.3448349392860401388),
    5: (0.0, -7.6142658045872677172, 52.2273532792945524050, -121.4999627731334642623,
        116.4422149550342161651, -39.6107919852202505218),
    6: (0.0, 10.7281392630428866124, -46.8919164181093621583, 83.1721004639847717481,
        -67.1451318825957197185, 20.3761213808791436958),
    7: (0.0, 0.5526637063753648783, -0.1890893225010595467, 9.5724507555993664382,
        -16.5672243527496524646, 7.3347098826795362023),
    8: (0.0, 4.2186562625665153803, -35.7075975946222072821, 87.8406057677205645007,
        -89.9916014847245016028, 32.8801774352459155182),
    9: (0.0, -0.6627209125361597559, 6.2736448083240352160, -17.4152107770762969005,
        22.6237489648532849093, -10.1588990526426760954),
    10: (0.0, -1.2636789001135462218, 10.3160881272450748458, -28.5903289514790976966,
         32.2362340167355370113, -12.5401268098782561200),
    11: (0.0, 5.4106037898590422230, -34.7650769866611817349, 81.6630950584341412934,
         -82.1020315488359848644, 29.5553001484516038033),
    12: (0.0, -7.0321379067945741781, 47.7457971078225540396, -114.9375291377009418170,
         116.2662185791119533462, -41.7923486424390588923),
    13: (0.0, 2.3537586759714983486, -19.0082099341608028453, 50.2558364226176017553,
         -53.9020777466385396792, 20.3006925822100825485),
}
_D8_INTERP = tuple(tuple(_D8_P[i][j] if i in _D8_P else 0.0 for i in range(14)) for j in range(6))

TABLEAUS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1, name="euler"),
    "midpoint": ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2,
                               name="midpoint"),
    "heun": ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, name="heun"),
    "rk4": ButcherTableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                          b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4, name="rk4"),
    "bosh3": ButcherTableau(
        c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0.0), order=3,
        b_err=tuple(x - y for x, y in zip((2 / 9, 1 / 3, 4 / 9, 0.0),
                                          (7 / 24, 1 / 4, 1 / 3, 1 / 8))),
        error_order=2, fsal=True, name="bosh3"),
    "dopri5": ButcherTableau(
        c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0), a=_D5_A, b=_D5_B, order=5,
        b_err=tuple(x - y for x, y in zip(_D5_B, _D5_BHAT)), error_order=4, fsal=True,
        c_mid=(6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2,
               -2691868925 / 45128329728 / 2, 187940372067 / 1594534317056 / 2,
               -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2),
        name="dopri5"),
    "tsit5": ButcherTableau(
        c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0), a=_T5_A,
        b=_T5_A[6] + (0.0,), order=5, b_err=_T5_BERR, error_order=4, fsal=True,
        interp=_tsit5_interp(), name="tsit5"),
    "dopri8": ButcherTableau(
        c=_D8_C, a=_D8_A, b=_D8_B, order=8,
        b_err=tuple(x - y for x, y in zip(_D8_B, _D8_BHAT)), error_order=7,
        interp=_D8_INTERP, name="dopri8"),
}

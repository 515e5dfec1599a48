"""Path simulators for validating stopping methods.

Each simulator observes a process at a fixed grid of times and returns paths of shape
`(n_paths, n_times, dim)`. Markov simulators (geometric and arithmetic Brownian motion, finite
Markov chains) also restart from given states at a given time (:meth:`PathSimulator.sample_from`),
which nested simulation (the Andersen--Broadie dual upper bound) needs. Fractional Brownian motion
is not Markov and only samples whole paths.

All simulators take an optional `torch.Generator` for reproducibility and run on the device of
their parameters (`device=` argument; a `MarkovChain` on that of its transition matrices).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import as_float_tensor, check_positive_float, check_positive_int

__all__ = ["PathSimulator", "GeometricBrownianMotion", "BrownianMotion",
           "FractionalBrownianMotion"]


def _check_times(times, who, dtype, device, allow_zero=True) -> Tensor:
    t = as_float_tensor(times, "times", who).to(dtype=dtype, device=device).reshape(-1)
    if t.numel() < 1:
        raise ValueError(f"{who}: times must contain at least one time")
    if not torch.isfinite(t).all():
        raise ValueError(f"{who}: times contain NaN or infinite values")
    if (t[0] < 0) or (not allow_zero and t[0] <= 0):
        raise ValueError(f"{who}: times must be {'>= 0' if allow_zero else '> 0'}, got first "
                         f"time {float(t[0])}")
    if t.numel() > 1 and not (t[1:] > t[:-1]).all():
        raise ValueError(f"{who}: times must be strictly increasing")
    return t


class PathSimulator:
    """Base class: `sample(n_paths)` and, for Markov processes, `sample_from(t, state, n)`.

    **Attributes:** `times` `(n_times,)`, `n_times`, `dim`.
    """

    times: Tensor
    dim: int

    @property
    def n_times(self) -> int:
        return self.times.numel()

    def sample(self, n_paths: int, generator: torch.Generator | None = None,
               antithetic: bool = False) -> Tensor:
        """`(n_paths, n_times, dim)` independent paths (antithetic pairs if asked: the second
        half uses the negated normals of the first; `n_paths` must then be even)."""
        raise NotImplementedError

    def sample_from(self, time_index: int, state: Tensor, n_per_state: int,
                    generator: torch.Generator | None = None) -> Tensor:
        """Continue from `state` `(m, dim)` at `times[time_index]`: `(m * n_per_state, n_times,
        dim)` paths, state-major (rows `i * n_per_state ... (i + 1) * n_per_state - 1` start
        from `state[i]`); the entries at times `<= time_index` are copies of the state."""
        raise NotImplementedError(f"{type(self).__name__} is not Markov: it cannot restart from "
                                  "a state")

    def _check_sample(self, n_paths, antithetic):
        who = f"{type(self).__name__}.sample"
        n = check_positive_int(n_paths, "n_paths", who)
        if antithetic and n % 2:
            raise ValueError(f"{who}: antithetic sampling needs an even n_paths, got {n}")
        return n

    def _check_from(self, time_index, state, n_per_state):
        who = f"{type(self).__name__}.sample_from"
        if isinstance(time_index, bool) or int(time_index) != time_index or not (
                0 <= time_index < self.n_times):
            raise ValueError(f"{who}: time_index must be an integer in [0, {self.n_times - 1}], "
                             f"got {time_index!r}")
        n = check_positive_int(n_per_state, "n_per_state", who)
        s = as_float_tensor(state, "state", who).to(self.times.device, self.times.dtype)
        if s.dim() == 1 and self.dim == 1:
            s = s.unsqueeze(-1)
        if s.dim() != 2 or s.shape[1] != self.dim:
            raise ValueError(f"{who}: state must have shape (m, {self.dim}), got "
                             f"{tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{who}: state contains NaN or infinite values")
        return int(time_index), s, n


def _normals(shape, generator, antithetic, dtype, device):
    if antithetic:
        half = torch.randn((shape[0] // 2, *shape[1:]), generator=generator, dtype=dtype,
                           device=device)
        return torch.cat([half, -half])
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


class BrownianMotion(PathSimulator):
    """Brownian motion `X_t = x0 + drift t + sigma W_t` in `dim` independent coordinates.

    **Arguments:** `times` `(n_times,)` strictly increasing, `>= 0`; `dim`; `x0` (scalar or
    `(dim,)`); `drift`; `sigma > 0`; `dtype`, `device`.
    """

    def __init__(self, times, dim: int = 1, x0=0.0, drift=0.0, sigma=1.0,
                 dtype=torch.float64, device=None):
        who = "BrownianMotion"
        self.times = _check_times(times, who, dtype, device)
        self.dim = check_positive_int(dim, "dim", who)
        self.x0 = as_float_tensor(x0, "x0", who).to(dtype=dtype, device=self.times.device)
        self.x0 = self.x0.expand(self.dim).clone() if self.x0.numel() in (1, self.dim) else None
        if self.x0 is None or not torch.isfinite(self.x0).all():
            raise ValueError(f"{who}: x0 must be a finite scalar or have shape ({dim},)")
        self.drift = float(drift)
        if not math.isfinite(self.drift):
            raise ValueError(f"{who}: drift must be finite, got {drift}")
        self.sigma = check_positive_float(sigma, "sigma", who)

    def _increments(self, t0: Tensor, n, generator, antithetic):
        dt = torch.diff(self.times, prepend=t0.reshape(1))
        z = _normals((n, self.n_times, self.dim), generator, antithetic, self.times.dtype,
                     self.times.device)
        return self.drift * dt[None, :, None] + self.sigma * dt.sqrt()[None, :, None] * z

    def sample(self, n_paths, generator=None, antithetic=False):
        n = self._check_sample(n_paths, antithetic)
        inc = self._increments(torch.zeros((), dtype=self.times.dtype, device=self.times.device),
                               n, generator, antithetic)
        return self.x0 + inc.cumsum(dim=1)

    def sample_from(self, time_index, state, n_per_state, generator=None):
        t, s, n = self._check_from(time_index, state, n_per_state)
        m = s.shape[0]
        inc = self._increments(self.times[0], m * n, generator, False)
        inc[:, : t + 1] = 0
        return s.repeat_interleave(n, dim=0)[:, None, :] + inc.cumsum(dim=1)


class GeometricBrownianMotion(PathSimulator):
    """Correlated multi-asset geometric Brownian motion under the pricing measure.

    `dS_i = (rate - dividend_i) S_i dt + vol_i S_i dW_i`, `d<W_i, W_j> = corr_ij dt`, sampled
    exactly in log space on the grid `times` (the process starts at `spot` at time 0; if
    `times[0] > 0` the first observation is already random).

    **Arguments:** `spot` (scalar or `(dim,)`, positive); `rate` (a scalar); `vol` (scalar or
    `(dim,)`, positive); `times` `(n_times,)` strictly increasing, `>= 0`; `dividend` (scalar or
    `(dim,)`); `corr` `(dim, dim)` correlation matrix (default identity); `dim` (when every
    parameter is a scalar); `dtype`, `device`.
    """

    def __init__(self, spot, rate, vol, times, dividend=0.0, corr=None, dim: int | None = None,
                 dtype=torch.float64, device=None):
        who = "GeometricBrownianMotion"
        self.times = _check_times(times, who, dtype, device)
        dev = self.times.device
        vals = {name: as_float_tensor(v, name, who).to(dtype=dtype, device=dev).reshape(-1)
                for name, v in (("spot", spot), ("vol", vol), ("dividend", dividend))}
        sizes = {v.numel() for v in vals.values()} - {1}
        if dim is not None:
            sizes.add(check_positive_int(dim, "dim", who))
        if corr is not None:
            corr = as_float_tensor(corr, "corr", who).to(dtype=dtype, device=dev)
            if corr.dim() != 2 or corr.shape[0] != corr.shape[1]:
                raise ValueError(f"{who}: corr must be a square matrix, got {tuple(corr.shape)}")
            sizes.add(corr.shape[0])
        if len(sizes) > 1:
            raise ValueError(f"{who}: spot, vol, dividend, corr and dim disagree on the number "
                             f"of assets: {sorted(sizes)}")
        self.dim = sizes.pop() if sizes else 1
        for name, v in vals.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"{who}: {name} contains NaN or infinite values")
            setattr(self, name, v.expand(self.dim).clone())
        if not (self.spot > 0).all():
            raise ValueError(f"{who}: spot must be positive, got {self.spot.tolist()}")
        if not (self.vol > 0).all():
            raise ValueError(f"{who}: vol must be positive, got {self.vol.tolist()}")
        if torch.as_tensor(rate).numel() != 1:
            raise ValueError(f"{who}: rate must be a scalar (one short rate shared by all "
                             f"assets), got shape {tuple(torch.as_tensor(rate).shape)}")
        self.rate = float(rate)
        if not math.isfinite(self.rate):
            raise ValueError(f"{who}: rate must be finite, got {rate}")
        if corr is None:
            corr = torch.eye(self.dim, dtype=dtype, device=dev)
        if not torch.isfinite(corr).all() or not torch.allclose(corr, corr.T) or not torch.allclose(
                corr.diagonal(), torch.ones(self.dim, dtype=dtype, device=dev)):
            raise ValueError(f"{who}: corr must be a finite symmetric matrix with unit diagonal")
        chol, info = torch.linalg.cholesky_ex(corr)
        if int(info) != 0:
            raise ValueError(f"{who}: corr is not positive definite")
        self.corr = corr
        self._chol = chol

    def discount(self) -> Tensor:
        """`(n_times,)` discount factors `exp(-rate * times)`."""
        return torch.exp(-self.rate * self.times)

    def _log_increments(self, t0, n, generator, antithetic):
        dt = torch.diff(self.times, prepend=t0.reshape(1))
        z = _normals((n, self.n_times, self.dim), generator, antithetic, self.times.dtype,
                     self.times.device) @ self._chol.T
        mu = self.rate - self.dividend - 0.5 * self.vol ** 2
        return mu * dt[None, :, None] + self.vol * dt.sqrt()[None, :, None] * z

    def sample(self, n_paths, generator=None, antithetic=False):
        n = self._check_sample(n_paths, antithetic)
        inc = self._log_increments(torch.zeros((), dtype=self.times.dtype,
                                               device=self.times.device), n, generator, antithetic)
        return self.spot * torch.exp(inc.cumsum(dim=1))

    def sample_from(self, time_index, state, n_per_state, generator=None):
        t, s, n = self._check_from(time_index, state, n_per_state)
        if not (s > 0).all():
            raise ValueError("GeometricBrownianMotion.sample_from: state must be positive")
        inc = self._log_increments(self.times[0], s.shape[0] * n, generator, False)
        inc[:, : t + 1] = 0
        return s.repeat_interleave(n, dim=0)[:, None, :] * torch.exp(inc.cumsum(dim=1))


class FractionalBrownianMotion(PathSimulator):
    """Fractional Brownian motion `B^H` with Hurst index `H` in (0, 1), exact on any grid.

    Covariance `E[B_t B_s] = (t^{2H} + s^{2H} - |t - s|^{2H}) / 2`; paths are `L z` with `L` the
    Cholesky factor of the covariance on `times` (O(n_times^3) once, then O(n_times^2) per path;
    exact, unlike approximate spectral schemes). `B_0 = 0`, so a time 0 in `times` gives a zero
    column. `H = 1/2` is Brownian motion.

    Reference: T. Dieker, "Simulation of fractional Brownian motion", MSc thesis, Univ. Twente
    (2004), section 2.1.2 (Cholesky method).

    **Arguments:** `hurst` in (0, 1); `times` strictly increasing, `>= 0`; `dim` independent
    copies; `dtype`, `device`.
    """

    def __init__(self, hurst: float, times, dim: int = 1, dtype=torch.float64, device=None):
        who = "FractionalBrownianMotion"
        if not isinstance(hurst, int | float) or not 0.0 < hurst < 1.0:
            raise ValueError(f"{who}: hurst must lie in (0, 1), got {hurst!r}")
        self.hurst = float(hurst)
        self.times = _check_times(times, who, dtype, device)
        self.dim = check_positive_int(dim, "dim", who)
        pos = self.times > 0
        self._pos = pos
        tp = self.times[pos]
        self._chol = torch.linalg.cholesky(self.covariance(tp)) if tp.numel() else None

    def covariance(self, times: Tensor | None = None) -> Tensor:
        """`(n, n)` covariance matrix of `B^H` at `times` (default: the simulator's grid)."""
        t = self.times if times is None else times
        h2 = 2 * self.hurst
        ti, tj = t[:, None], t[None, :]
        return 0.5 * (ti ** h2 + tj ** h2 - (ti - tj).abs() ** h2)

    def sample(self, n_paths, generator=None, antithetic=False):
        n = self._check_sample(n_paths, antithetic)
        out = torch.zeros(n, self.n_times, self.dim, dtype=self.times.dtype,
                          device=self.times.device)
        if self._chol is not None:
            m = self._chol.shape[0]
            z = _normals((n, self.dim, m), generator, antithetic, self.times.dtype,
                         self.times.device)
            out[:, self._pos] = (z @ self._chol.T).transpose(1, 2)
        return out

"""Longstaff--Schwartz regression (and the Tsitsiklis--Van Roy variant) on simulated paths.

Backward in time, the value of going on at time `t` is estimated by a least-squares regression of
a target on basis functions of the features at `t`:

- Longstaff & Schwartz (2001): the target is the *realised* reward of the rule already fitted for
  times `t+1, ...` (the cash flow along each path); stop at `t` where the reward of stopping is at
  least the fitted continuation `C_t(x) = basis(x) . beta_t`.
- Tsitsiklis & Van Roy (2001): the target is the estimated *value* at `t+1`,
  `max(reward_{t+1}, C_{t+1}(x_{t+1}))`.

The regression is sequential in time (each step needs the next one's decisions) and vectorised over
paths. In the same solve the immediate reward is regressed on the basis too, so that the policy can
decide when the reward is not observable at decision time (a network's loss needs the label):
then it compares the two fitted functions.

References: F. A. Longstaff, E. S. Schwartz, "Valuing American options by simulation: a simple
least-squares approach", Rev. Financial Studies 14 (2001) 113--147. J. N. Tsitsiklis, B. Van Roy,
"Regression methods for pricing complex American-style options", IEEE Trans. Neural Networks 12
(2001) 694--703.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_paths, check_positive_float, describe, resolve_rewards
from .policy import StoppingFit, StoppingPolicy

__all__ = ["longstaff_schwartz", "RegressionPolicy", "basis_functions", "BASES"]

BASES = ("poly1", "poly2", "poly3", "laguerre3")


def _poly(z: Tensor, degree: int) -> Tensor:
    """All monomials of total degree <= `degree` in the columns of `z` (constant first)."""
    n, k = z.shape
    cols = [torch.ones(n, dtype=z.dtype, device=z.device)]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(k), d):
            c = z[:, combo[0]]
            for j in combo[1:]:
                c = c * z[:, j]
            cols.append(c)
    return torch.stack(cols, dim=1)


def _laguerre3(x: Tensor) -> Tensor:
    # weighted Laguerre polynomials exp(-x/2) L_n(x), n = 0, 1, 2 (Longstaff & Schwartz 2001 eq. 2)
    w = torch.exp(-x / 2)
    cols = [torch.ones(x.shape[0], dtype=x.dtype, device=x.device)]
    for j in range(x.shape[1]):
        xj, wj = x[:, j], w[:, j]
        cols += [wj, wj * (1 - xj), wj * (1 - 2 * xj + xj * xj / 2)]
    return torch.stack(cols, dim=1)


def basis_functions(x: Tensor, basis: str | Callable) -> Tensor:
    """Evaluate a basis on features `x` `(n, k)`; returns `(n, p)`.

    **Arguments:**

    - `x`: features at one time.
    - `basis`: `"poly1"`, `"poly2"`, `"poly3"` (all monomials of total degree <= 1, 2, 3, i.e.
      `C(k + d, d)` functions: keep `k` small for `"poly3"`), `"laguerre3"` (a constant and
      `exp(-x/2) L_n(x)`, `n = 0, 1, 2`, for each feature; meant for positive features of order
      one, e.g. prices divided by the strike), or a callable `x -> (n, p)`.

    Column order (stable; layer 2 evaluates fitted coefficients itself): the constant, then the
    monomials of degree 1, 2, ... in `itertools.combinations_with_replacement(range(k), d)`
    order; for `"laguerre3"` the constant, then three columns per feature.
    """
    if callable(basis):
        out = basis(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"basis callable must return shape (n, p) with n = {x.shape[0]}, "
                             f"got {describe(out)}")
        return out
    if basis == "laguerre3":
        return _laguerre3(x)
    return _poly(x, int(basis[-1]))


def _check_basis(basis, who):
    if callable(basis):
        return basis
    if basis not in BASES:
        raise ValueError(f"{who}: basis must be one of {BASES} or a callable, got {basis!r}")
    return basis


def _itm_mask(itm, x, r):
    if itm is None:
        return None
    if itm == "positive":
        return r > 0
    m = itm(x, r)
    if not isinstance(m, Tensor) or m.shape != r.shape:
        raise ValueError(f"itm callable must return a boolean tensor of shape {tuple(r.shape)}, "
                         f"got {describe(m)}")
    return m.to(torch.bool)


class RegressionPolicy(StoppingPolicy):
    """Stop at `t` where the reward is at least the fitted continuation value `basis(x) . beta_t`.

    Produced by :func:`longstaff_schwartz`. Polynomial bases act on features standardised per
    time with the training paths' mean and standard deviation (the span of polynomials is
    unchanged by this affine map; only the conditioning improves).

    **Attributes:** `coef` `(n_times - 1, p, 2)` float64: per time, the coefficients of the
    continuation value (`[..., 0]`) and of the immediate reward (`[..., 1]`, used when the reward
    is not observed at decision time); `basis`; `itm`.
    """

    def __init__(self, coef: Tensor, basis, shift: Tensor, scale: Tensor, itm, n_features: int):
        self.coef = coef
        self.basis = basis
        self.shift = shift
        self.scale = scale
        self.itm = itm
        self.n_times = coef.shape[0] + 1
        self.n_features = n_features

    def _design(self, t: int, x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        if isinstance(self.basis, str) and self.basis.startswith("poly"):
            x = (x - self.shift[t].to(x.device)) / self.scale[t].to(x.device)
        return basis_functions(x, self.basis).to(torch.float64)

    def _fitted(self, t: int, x: Tensor) -> Tensor:
        return self._design(t, x) @ self.coef[t].to(x.device)

    def continuation(self, time_index: int, features_t: Tensor) -> Tensor:
        """`(n,)` fitted continuation value `basis(x) . beta_t` (float64); 0 at the last time."""
        t = self._check_time(time_index)
        x = self._check_features_t(features_t)
        if t == self.n_times - 1:
            return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        return self._fitted(t, x)[:, 0]

    def reward_estimate(self, time_index: int, features_t: Tensor) -> Tensor:
        """`(n,)` regression estimate of the reward of stopping at `time_index` (< last time)."""
        t = self._check_time(time_index)
        if t == self.n_times - 1:
            raise ValueError("RegressionPolicy.reward_estimate: no regression at the last time")
        return self._fitted(t, self._check_features_t(features_t))[:, 1]

    def _score(self, t: int, x: Tensor, r: Tensor | None) -> Tensor:
        fit = self._fitted(t, x)
        r = fit[:, 1] if r is None else r.to(torch.float64)
        s = r - fit[:, 0]                       # reward minus continuation
        m = _itm_mask(self.itm, x, r)
        return s if m is None else torch.where(m, s, torch.full_like(s, -torch.inf))


def _solve(X: Tensor, Y: Tensor, ridge: float) -> Tensor:
    """Ridge least squares `argmin |X b - Y|^2 + ridge * mean(diag(X'X)) |b|^2` (float64)."""
    G = X.T @ X
    lam = ridge * float(G.diagonal().mean().clamp_min(1e-300))
    G = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return torch.cholesky_solve(X.T @ Y, L)
    return torch.linalg.lstsq(G, X.T @ Y).solution


def longstaff_schwartz(features: Tensor, rewards: Tensor | None = None, *,
                       reward_fn: Callable | None = None, basis: str | Callable = "poly2",
                       itm: str | Callable | None = None, ridge: float = 1e-8,
                       target: str = "cashflow") -> StoppingFit:
    """Fit a stopping rule by backward least-squares regression (Longstaff & Schwartz 2001).

    **Arguments:**

    - `features`: `(n_paths, n_times, k)` Markov state (or any summary) of each path at each time;
      `(n_paths, n_times)` means `k = 1`.
    - `rewards`: `(n_paths, n_times)` discounted rewards of stopping, any sign. Or pass
      `reward_fn(features) -> rewards` instead.
    - `basis`: `"poly1"`, `"poly2"`, `"poly3"`, `"laguerre3"` or a callable `(n, k) -> (n, p)`
      (see :func:`basis_functions`).
    - `itm`: in-the-money filtering for option pricing, off by default. `"positive"` regresses
      and stops only on paths with a positive reward; a callable `(features_t, rewards_t) -> bool
      (n,)` gives any other mask. Paths outside the mask go on.
    - `ridge`: Tikhonov weight relative to the mean diagonal of the normal matrix (keeps
      degenerate designs, e.g. identical features at time 0, solvable).
    - `target`: `"cashflow"` (Longstaff--Schwartz: realised future reward of the fitted rule) or
      `"value"` (Tsitsiklis--Van Roy: `max(reward, fitted continuation)` at the next time).

    **Returns:** :class:`StoppingFit` with the in-sample `value` (mean realised reward of the fitted
    rule on the training paths; biased high), `stop_index` `(n_paths,)` and a
    :class:`RegressionPolicy`. `info["value_regression"]` is the regression estimate at time 0
    (for `target="value"`, the Tsitsiklis--Van Roy value estimate).

    **Raises:** `ValueError`/`TypeError` for mismatched shapes, NaN rewards, unknown bases or
    targets.
    """
    who = "longstaff_schwartz"
    rewards = resolve_rewards(features, rewards, reward_fn, who)
    features, rewards = check_paths(features, rewards, who)
    basis = _check_basis(basis, who)
    ridge = check_positive_float(ridge, "ridge", who, allow_zero=True)
    if target not in ("cashflow", "value"):
        raise ValueError(f"{who}: target must be 'cashflow' or 'value', got {target!r}")
    if itm is not None and itm != "positive" and not callable(itm):
        raise ValueError(f"{who}: itm must be None, 'positive' or a callable, got {itm!r}")
    n, T, k = features.shape
    dev = features.device
    r64 = rewards.to(torch.float64)
    # per-time standardisation, in float64 one time slice at a time (no float64 copy of all paths)
    shift = torch.stack([features[:, t].to(torch.float64).mean(dim=0) for t in range(T)])
    scale = torch.stack([features[:, t].to(torch.float64).std(dim=0, unbiased=False)
                         for t in range(T)])
    scale = torch.where(scale > 1e-12 * (1 + shift.abs()), scale, torch.ones_like(scale))
    policy = RegressionPolicy(torch.zeros(0), basis, shift, scale, itm, k)
    coef = []
    idx = torch.full((n,), T - 1, dtype=torch.long, device=dev)
    cash = r64[:, T - 1].clone()   # realised reward of the rule fitted so far
    value_next = cash.clone()      # estimated value at t + 1 (Tsitsiklis--Van Roy target)
    value_reg = float(cash.mean())
    for t in range(T - 2, -1, -1):
        X = policy._design(t, features[:, t])
        y = cash if target == "cashflow" else value_next
        mask = _itm_mask(itm, features[:, t], r64[:, t])
        Y = torch.stack([y, r64[:, t]], dim=1)
        if mask is None:
            beta = _solve(X, Y, ridge)
        elif bool(mask.any()):
            beta = _solve(X[mask], Y[mask], ridge)
        else:
            beta = torch.zeros(X.shape[1], 2, dtype=torch.float64, device=dev)
        coef.append(beta)
        cont = X @ beta[:, 0]
        stop = r64[:, t] >= cont
        if mask is not None:
            stop = stop & mask
        cash = torch.where(stop, r64[:, t], cash)
        idx = torch.where(stop, torch.full_like(idx, t), idx)
        value_next = torch.where(stop, r64[:, t], cont) if mask is None else torch.where(
            stop, r64[:, t], torch.where(mask, cont, value_next))
        if t == 0:
            value_reg = float(torch.maximum(r64[:, 0], cont).mean())
    policy.coef = torch.stack(coef[::-1]) if coef else torch.zeros(
        0, 1, 2, dtype=torch.float64, device=dev)
    policy.n_times = T
    return StoppingFit(float(cash.mean()), idx, policy,
                       {"value_regression": value_reg, "basis": basis, "target": target})

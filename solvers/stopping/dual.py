"""Dual upper bounds by nested simulation (Andersen & Broadie 2004) and two-sided bounds.

For any martingale `M` with `M_0 = 0`, `V_0 <= E[max_t (Z_t - M_t)]` (Rogers 2002; Haugh & Kogan
2004), with equality for the martingale part of the Snell envelope. Andersen & Broadie build `M`
from a lower-bound policy: with `Q_t = E_t[Z_{tau_{t+1}}]` the value of following the policy from
`t + 1` on and `L_t = Z_t` where the policy stops at `t`, `L_t = Q_t` otherwise,

    M_{t+1} - M_t = L_{t+1} - Q_t,

and every `Q_t` along an outer path is estimated by `n_inner` inner paths restarted from the
outer state at `t`. The better the policy, the tighter the bound; inner-sampling noise only
biases the bound upwards (it stays an upper bound in expectation).

References: L. Andersen, M. Broadie, "Primal-dual simulation algorithm for pricing
multidimensional American options", Management Science 50 (2004) 1222--1234. L. C. G. Rogers,
"Monte Carlo valuation of American options", Math. Finance 12 (2002) 271--286.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_paths, check_positive_int, describe
from .paths import PathSimulator
from .policy import Estimate, StoppingPolicy, estimate_mean, evaluate

__all__ = ["dual_upper_bound", "bounds", "Bounds"]


def _rewards(reward_fn, paths, who):
    z = reward_fn(paths)
    if not isinstance(z, Tensor) or z.shape != paths.shape[:2]:
        raise ValueError(f"{who}: reward_fn must return shape {tuple(paths.shape[:2])}, got "
                         f"{describe(z)}")
    if torch.isnan(z).any():
        raise ValueError(f"{who}: reward_fn returned NaN")
    return z.to(torch.float64)


def _features(features_fn, paths, who):
    if features_fn is None:
        return paths
    f = features_fn(paths)
    if not isinstance(f, Tensor) or f.shape[:2] != paths.shape[:2]:
        raise ValueError(f"{who}: features_fn must return shape {tuple(paths.shape[:2])} + (k,), "
                         f"got {describe(f)}")
    return f


def _check_common(policy, simulator, reward_fn, who):
    if not isinstance(policy, StoppingPolicy):
        raise TypeError(f"{who}: policy must be a StoppingPolicy, got {type(policy).__name__}")
    if not isinstance(simulator, PathSimulator):
        raise TypeError(f"{who}: simulator must be a PathSimulator, got "
                        f"{type(simulator).__name__}")
    if type(simulator).sample_from is PathSimulator.sample_from:
        raise ValueError(f"{who}: {type(simulator).__name__} is not Markov (no sample_from): "
                         "nested simulation needs to restart paths from a state")
    if not callable(reward_fn):
        raise TypeError(f"{who}: reward_fn must be callable, got {describe(reward_fn)}")
    if simulator.n_times != policy.n_times:
        raise ValueError(f"{who}: the simulator has {simulator.n_times} times, the policy "
                         f"{policy.n_times}")


def dual_upper_bound(policy: StoppingPolicy, simulator: PathSimulator, reward_fn: Callable,
                     n_outer: int = 1000, n_inner: int = 500,
                     generator: torch.Generator | None = None, observe_rewards: bool = True,
                     features_fn: Callable | None = None, max_inner_paths: int = 2_000_000,
                     level: float = 0.95) -> Estimate:
    """Andersen--Broadie upper bound on the optimal value, with a confidence interval.

    **Arguments:**

    - `policy`: the lower-bound policy whose value process defines the martingale.
    - `simulator`: a Markov :class:`PathSimulator` (it must implement `sample_from`).
    - `reward_fn`: `paths (n, n_times, k) -> (n, n_times)` discounted rewards.
    - `n_outer`: outer paths (the sample over which the interval is computed).
    - `n_inner`: inner paths per outer path and time, estimating `Q_t`.
    - `generator`: optional `torch.Generator`.
    - `observe_rewards`: whether the policy sees current rewards when deciding.
    - `features_fn`: optional map `paths -> features (n, n_times, k)` giving the policy its
      features when they differ from the simulated state (e.g. prices divided by the strike);
      `reward_fn` always receives the simulated paths.
    - `max_inner_paths`: memory cap; outer paths are processed in chunks so that at most this
      many inner paths exist at once.

    **Returns:** :class:`Estimate` of `E[max_t (Z_t - M_t)]`; its expectation is at least the
    optimal value.
    """
    who = "dual_upper_bound"
    _check_common(policy, simulator, reward_fn, who)
    n_outer = check_positive_int(n_outer, "n_outer", who, minimum=2)
    n_inner = check_positive_int(n_inner, "n_inner", who)
    max_inner_paths = check_positive_int(max_inner_paths, "max_inner_paths", who)
    outer = simulator.sample(n_outer, generator=generator)
    Z = _rewards(reward_fn, outer, who)
    feats = _features(features_fn, outer, who)
    check_paths(feats, Z, who, allow_neg_inf=True)
    T = policy.n_times
    # L_t where the policy stops at t (decisions at every t, not only the first stop)
    stop = torch.zeros(n_outer, T, dtype=torch.bool, device=outer.device)
    for t in range(T):
        stop[:, t] = policy.should_stop(t, feats[:, t], Z[:, t] if observe_rewards else None)
    Q = torch.zeros(n_outer, max(T - 1, 0), dtype=torch.float64, device=outer.device)
    chunk = max(1, max_inner_paths // n_inner)
    for t in range(T - 1):
        for a in range(0, n_outer, chunk):
            st = outer[a: a + chunk, t]
            inner = simulator.sample_from(t, st, n_inner, generator=generator)
            Zi = _rewards(reward_fn, inner, who)
            idx = policy.stop_index(_features(features_fn, inner, who),
                                    Zi if observe_rewards else None, start=t + 1)
            got = Zi.gather(1, idx.unsqueeze(1)).squeeze(1)
            Q[a: a + chunk, t] = got.reshape(st.shape[0], n_inner).mean(dim=1)
    L = torch.where(stop[:, 1:], Z[:, 1:], torch.cat([Q[:, 1:], Z[:, -1:]], dim=1)) if T > 1 \
        else Z[:, :0]
    M = torch.zeros(n_outer, T, dtype=torch.float64, device=outer.device)
    if T > 1:
        M[:, 1:] = (L - Q).cumsum(dim=1)
    upper = (Z - M).amax(dim=1)
    return estimate_mean(upper, level)


@dataclass
class Bounds:
    """Lower and upper bounds on the optimal value, each with its interval.

    **Attributes:** `lower`, `upper` (:class:`Estimate`), `ci` (`(lower.ci[0], upper.ci[1])`: a
    conservative interval for the optimal value), `gap` (`upper.value - lower.value`).
    """

    lower: Estimate
    upper: Estimate

    @property
    def ci(self) -> tuple[float, float]:
        return (self.lower.ci[0], self.upper.ci[1])

    @property
    def gap(self) -> float:
        return self.upper.value - self.lower.value


def bounds(policy: StoppingPolicy, simulator: PathSimulator, reward_fn: Callable, *,
           n_lower: int = 100_000, n_outer: int = 1000, n_inner: int = 500,
           generator: torch.Generator | None = None, observe_rewards: bool = True,
           features_fn: Callable | None = None, level: float = 0.95) -> Bounds:
    """Lower bound (the policy on `n_lower` fresh paths) and Andersen--Broadie upper bound.

    **Arguments:** as in :func:`dual_upper_bound`, plus `n_lower` independent paths for
    :func:`evaluate`.

    **Returns:** :class:`Bounds`.
    """
    who = "bounds"
    _check_common(policy, simulator, reward_fn, who)
    n_lower = check_positive_int(n_lower, "n_lower", who, minimum=2)
    paths = simulator.sample(n_lower, generator=generator)
    low = evaluate(policy, _features(features_fn, paths, who), _rewards(reward_fn, paths, who),
                   observe_rewards=observe_rewards, level=level)
    up = dual_upper_bound(policy, simulator, reward_fn, n_outer=n_outer, n_inner=n_inner,
                          generator=generator, observe_rewards=observe_rewards,
                          features_fn=features_fn, level=level)
    return Bounds(low, up)

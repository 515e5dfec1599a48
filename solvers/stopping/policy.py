"""Stopping policies, fits and unbiased evaluation on independent paths.

A *policy* is a stopping rule on discrete times `0, ..., n_times - 1`: at each time it sees the
features of that time (and, when they are observable, the rewards of that time) and decides,
per path, to stop or to go on. At the last time it always stops. Every method of
:mod:`solvers.stopping` returns one, so that a rule fitted on some paths is applied to new paths
online (:meth:`StoppingPolicy.should_stop`, one time at a time) or offline
(:meth:`StoppingPolicy.stop_index`), and evaluated on independent paths by :func:`evaluate`, which
gives an unbiased estimate of the policy's value: a *lower bound* on the optimal value, since no
stopping rule beats the optimal one.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import as_float_tensor, check_features, check_paths

__all__ = ["StoppingPolicy", "StoppingFit", "Estimate", "evaluate", "estimate_mean"]


class StoppingPolicy:
    """Base class of stopping policies on `n_times` discrete times.

    Subclasses implement a signed score `_score(t, x, r)` (stop where `>= 0`) for the times
    before the last one. Rewards are the
    *discounted* rewards of stopping; larger is better, any sign is allowed.

    **Attributes:**

    - `n_times`: number of decision times; the policy always stops at `n_times - 1`.
    - `n_features`: number `k` of features per time the policy expects.
    """

    n_times: int
    n_features: int

    def _score(self, t: int, x: Tensor, r: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _decide(self, t: int, x: Tensor, r: Tensor | None) -> Tensor:
        return self._score(t, x, r) >= 0

    def score(self, time_index: int, features_t: Tensor,
              rewards_t: Tensor | None = None) -> Tensor:
        """`(n,)` signed stopping score: the policy stops exactly where it is `>= 0`.

        The same contract as `odedepth.stopping.StoppingRule` (layer 2 wraps policies with it):
        reward minus fitted continuation for regression policies, the decision logit for neural
        ones, +-1 for chain policies; `+inf` at the last time. Arguments as in
        :meth:`should_stop`.
        """
        t = self._check_time(time_index)
        x = self._check_features_t(features_t)
        r = self._check_rewards_t(rewards_t, x)
        if t == self.n_times - 1:
            return torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
        return self._score(t, x, r)

    def _check_rewards_t(self, rewards_t, x):
        if rewards_t is None:
            return None
        r = as_float_tensor(rewards_t, "rewards_t", type(self).__name__).to(x.device)
        if r.shape != (x.shape[0],):
            raise ValueError(f"{type(self).__name__}: rewards_t must have shape "
                             f"({x.shape[0]},), got {tuple(r.shape)}")
        if torch.isnan(r).any():
            raise ValueError(f"{type(self).__name__}: rewards_t contain NaN")
        return r

    def continuation(self, time_index: int, features_t: Tensor) -> Tensor:
        """`(n,)` the policy's estimate of the value of going on at `time_index`, if it has one.

        Regression policies have it (the fitted continuation value); others raise
        `NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no continuation-value estimate")

    def _check_time(self, time_index) -> int:
        if isinstance(time_index, Tensor):
            if time_index.numel() != 1:
                raise ValueError(f"{type(self).__name__}: time_index must be a scalar, got shape "
                                 f"{tuple(time_index.shape)}")
            time_index = int(time_index.item())
        if isinstance(time_index, bool) or not isinstance(time_index, numbers.Real) or int(
                time_index) != time_index or not (0 <= time_index < self.n_times):
            raise ValueError(f"{type(self).__name__}: time_index must be an integer in "
                             f"[0, {self.n_times - 1}], got {time_index!r}")
        return int(time_index)

    def _check_features_t(self, features_t) -> Tensor:
        x = as_float_tensor(features_t, "features_t", type(self).__name__)
        if x.dim() == 1 and self.n_features == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"{type(self).__name__}: features_t must have shape (n, "
                             f"{self.n_features}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: features_t contain NaN or infinite values")
        return x

    def should_stop(self, time_index: int, features_t: Tensor,
                    rewards_t: Tensor | None = None) -> Tensor:
        """Online decision at one time.

        **Arguments:**

        - `time_index`: integer in `[0, n_times - 1]`.
        - `features_t`: `(n, k)` features of `n` paths at that time.
        - `rewards_t`: optional `(n,)` rewards of stopping now. Pass them when they are observable
          at decision time (option pricing). When they are not (a network's loss needs the label),
          leave them out: policies that compare a reward with a continuation value then use their
          own regression estimate of the reward from the features.

        **Returns:** `(n,)` boolean tensor, true where the path stops now (always true at the last
        time).
        """
        t = self._check_time(time_index)
        x = self._check_features_t(features_t)
        rewards_t = self._check_rewards_t(rewards_t, x)
        if t == self.n_times - 1:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return self._decide(t, x, rewards_t)

    def stop_index(self, features: Tensor, rewards: Tensor | None = None,
                   start: int = 0) -> Tensor:
        """`(n_paths,)` first time `>= start` at which the policy stops each path.

        **Arguments:**

        - `features`: `(n_paths, n_times, k)` paths.
        - `rewards`: optional `(n_paths, n_times)` rewards, used by the policy when given (see
          :meth:`should_stop`).
        - `start`: first time at which stopping is allowed (used by the dual upper bound, which
          follows the policy from a later time on).
        """
        who = f"{type(self).__name__}.stop_index"
        if rewards is None:
            features = check_features(features, who)
        else:
            features, rewards = check_paths(features, rewards, who, allow_neg_inf=True)
        n, T, k = features.shape
        if T != self.n_times or k != self.n_features:
            raise ValueError(f"{who}: the policy was fitted on n_times = {self.n_times} and k = "
                             f"{self.n_features}, got features of shape {tuple(features.shape)}")
        start = self._check_time(start)
        idx = torch.full((n,), T - 1, dtype=torch.long, device=features.device)
        done = torch.zeros(n, dtype=torch.bool, device=features.device)
        for t in range(start, T - 1):
            live = (~done).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            # Only paths still running are shown to the policy: no work on stopped paths.
            r_t = None if rewards is None else rewards[live, t]
            stop = self._decide(t, features[live, t], r_t)
            hit = live[stop]
            idx[hit] = t
            done[hit] = True
        return idx


@dataclass
class Estimate:
    """A Monte Carlo estimate with its standard error and a normal confidence interval.

    **Attributes:** `value`, `stderr`, `ci` (`(low, high)` at `level`), `n` (number of samples),
    `level`.
    """

    value: float
    stderr: float
    ci: tuple[float, float]
    n: int
    level: float = 0.95

    def __repr__(self) -> str:
        return (f"Estimate(value={self.value:.6g}, stderr={self.stderr:.3g}, "
                f"ci=({self.ci[0]:.6g}, {self.ci[1]:.6g}), n={self.n})")


def _normal_quantile(level: float) -> float:
    # two-sided quantile z with P(|N(0,1)| <= z) = level
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


def estimate_mean(samples: Tensor, level: float = 0.95) -> Estimate:
    """:class:`Estimate` of the mean of i.i.d. `samples` `(n,)` (normal interval at `level`)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"estimate_mean: level must lie in (0, 1), got {level}")
    s = samples.detach().to(torch.float64).reshape(-1)
    n = s.numel()
    if n < 1:
        raise ValueError("estimate_mean: no samples")
    m = float(s.mean())
    se = float(s.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("inf")
    z = _normal_quantile(level)
    return Estimate(m, se, (m - z * se, m + z * se), n, level)


@dataclass
class StoppingFit:
    """What a path method (:func:`longstaff_schwartz`, :func:`neural`) returns.

    **Attributes:**

    - `value`: in-sample estimate of the value at time 0 (biased: the rule was fitted on the same
      paths; use :func:`evaluate` on independent paths for a lower bound).
    - `stop_index`: `(n_paths,)` time at which the fitted rule stops each training path.
    - `policy`: the fitted :class:`StoppingPolicy`.
    - `info`: method-specific diagnostics (dict).
    """

    value: float
    stop_index: Tensor
    policy: StoppingPolicy
    info: dict = field(default_factory=dict)


def evaluate(policy: StoppingPolicy, features: Tensor, rewards: Tensor,
             observe_rewards: bool = True, level: float = 0.95) -> Estimate:
    """Unbiased estimate of the value of `policy` on independent paths (a lower bound).

    **Arguments:**

    - `policy`: a :class:`StoppingPolicy`.
    - `features`: `(n_paths, n_times, k)` paths independent of those the policy was fitted on.
    - `rewards`: `(n_paths, n_times)` discounted rewards on those paths.
    - `observe_rewards`: whether the policy may look at the rewards of the current time when it
      decides (true for option pricing; false when the reward needs information that is not
      available at decision time, like a label).
    - `level`: confidence level of the interval.

    **Returns:** :class:`Estimate` of `E[rewards[tau]]` for the policy's stopping time `tau`.
    When the paths are independent of the fit, its expectation is at most the optimal value.
    """
    if not isinstance(policy, StoppingPolicy):
        raise TypeError(f"evaluate: policy must be a StoppingPolicy, got {type(policy).__name__}")
    features, rewards = check_paths(features, rewards, "evaluate", allow_neg_inf=True)
    idx = policy.stop_index(features, rewards if observe_rewards else None)
    got = rewards.gather(1, idx.unsqueeze(1)).squeeze(1)
    if torch.isinf(got).any():
        raise ValueError("evaluate: the policy stopped some paths where the reward is -inf")
    return estimate_mean(got, level)

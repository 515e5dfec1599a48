"""Input validation shared by the stopping methods: clear errors that name what is wrong."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def as_float_tensor(x, name: str, who: str) -> Tensor:
    """A floating tensor from `x` (tensors keep their device; arrays become float64)."""
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"{who}: {name} must be a real tensor, got {describe(x)}")
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    try:
        # python numbers and lists: float64, never the (float32) default dtype
        t = torch.as_tensor(x) if hasattr(x, "dtype") else torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{who}: {name} must be a tensor or array, got {describe(x)}") from e
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{who}: {name} must be real, got dtype {t.dtype}")
    return t if t.is_floating_point() else t.to(torch.float64)


def check_features(features, who: str) -> Tensor:
    """Validate `features` `(n_paths, n_times, k)` (a 2-D input means k = 1)."""
    features = as_float_tensor(features, "features", who)
    if features.dim() == 2:
        features = features.unsqueeze(-1)
    if features.dim() != 3:
        raise ValueError(f"{who}: features must have shape (n_paths, n_times, k), got "
                         f"{tuple(features.shape)}")
    n, t, _ = features.shape
    if n < 1:
        raise ValueError(f"{who}: need at least one path, got n_paths = {n}")
    if t < 1:
        raise ValueError(f"{who}: need at least one time, got n_times = {t}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{who}: features contain NaN or infinite values")
    return features


def check_paths(features, rewards, who: str, allow_neg_inf: bool = False):
    """Validate `features` `(n_paths, n_times, k)` (a 2-D input means k = 1) and `rewards`
    `(n_paths, n_times)`; return both as floating tensors on the features' device."""
    features = check_features(features, who)
    n, t, _ = features.shape
    rewards = as_float_tensor(rewards, "rewards", who).to(features.device)
    if rewards.shape != (n, t):
        raise ValueError(f"{who}: rewards must have shape (n_paths, n_times) = {(n, t)} to match "
                         f"features {tuple(features.shape)}, got {tuple(rewards.shape)}")
    if torch.isnan(rewards).any():
        raise ValueError(f"{who}: rewards contain NaN")
    bad = torch.isposinf(rewards) if allow_neg_inf else torch.isinf(rewards)
    if bool(bad.any()):
        raise ValueError(f"{who}: rewards contain infinite values")
    return features, rewards


def resolve_rewards(features, rewards, reward_fn, who: str):
    """Exactly one of `rewards` and `reward_fn`; returns the rewards tensor."""
    if (rewards is None) == (reward_fn is None):
        raise ValueError(f"{who}: pass exactly one of rewards and reward_fn")
    if reward_fn is not None:
        if not callable(reward_fn):
            raise TypeError(f"{who}: reward_fn must be callable, got {describe(reward_fn)}")
        f = as_float_tensor(features, "features", who)
        rewards = reward_fn(f if f.dim() == 3 else f.unsqueeze(-1))
    return rewards


def check_positive_int(x, name: str, who: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, int | float) or int(x) != x or x < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def check_positive_float(x, name: str, who: str, allow_zero: bool = False) -> float:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and (
        x >= 0 if allow_zero else x > 0)
    if not ok:
        raise ValueError(f"{who}: {name} must be a {'non-negative' if allow_zero else 'positive'} "
                         f"finite number, got {x!r}")
    return float(x)

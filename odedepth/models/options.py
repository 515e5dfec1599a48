"""Option parsing shared by every model family: branch scale, ADN split, gate probabilities,
configuration strings and exit modes.

Keeping these in one place is what makes the constructor arguments mean the same thing for a
ResNet, a ViT and a residual MLP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "resolve_branch_scale",
    "adn_split",
    "default_gate_probs",
    "parse_configuration",
    "check_exits",
]

_SCALE_NAMES = {
    "1/sqrt(l)": "inv_sqrt",
    "1/sqrt(n)": "inv_sqrt",
    "1/l": "inv",
    "1/n": "inv",
    "rezero": "rezero",
    "skipinit": "rezero",
}


def resolve_branch_scale(branch_scale, n_branches: int) -> tuple[float, bool]:
    """Turn a `branch_scale` option into `(alpha, learnable)`.

    **Arguments:**

    - `branch_scale`: a positive finite number, `"1/sqrt(L)"`, `"1/L"` (L = number of residual
      branches of the whole network) or `"rezero"` (a learnable scalar per branch initialised
      at 0, as in ReZero/SkipInit).
    - `n_branches`: L, the number of residual branches.

    **Returns:** `(alpha, learnable)`; for `"rezero"` alpha is the initial value 0.

    **Raises:** `ValueError`/`TypeError` naming the accepted values.

    Dherin & Munn (arXiv 2510.03470) recommend 1/L (level-k weights of the residual expansion
    stay O(1/k!)) and report 1/sqrt(L) trains better in practice.
    """
    if n_branches < 1:
        raise ValueError(f"branch_scale: the network has no residual branch (L = {n_branches})")
    if isinstance(branch_scale, str):
        key = branch_scale.strip().lower().replace(" ", "")
        kind = _SCALE_NAMES.get(key)
        if kind is None:
            raise ValueError(
                f"branch_scale: unknown string {branch_scale!r}; expected a positive number, "
                "'1/sqrt(L)', '1/L' or 'rezero'"
            )
        if kind == "inv_sqrt":
            return 1.0 / math.sqrt(n_branches), False
        if kind == "inv":
            return 1.0 / n_branches, False
        return 0.0, True
    if isinstance(branch_scale, bool) or not isinstance(branch_scale, (int, float)):
        raise TypeError(
            f"branch_scale: expected a number or one of '1/sqrt(L)', '1/L', 'rezero', got "
            f"{type(branch_scale).__name__}"
        )
    value = float(branch_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"branch_scale: a numeric scale must be positive and finite, got {value}")
    return value, False


def adn_split(n: int) -> int:
    """Number of mandatory blocks of an `n`-block stage under the ADN rule.

    Kang & Lee (NeurIPS 2024), ``models/resnet.py``: the first ``min(n - 1, ceil(n / 2))``
    blocks are mandatory, the rest form the skippable refinement (ResNet-50 [3, 4, 6, 3] ->
    mandatory [2, 2, 3, 2], skippable [1, 2, 3, 1]).
    """
    if int(n) != n or n < 0:
        raise ValueError(f"adn_split: block count must be a non-negative integer, got {n}")
    n = int(n)
    return 0 if n == 0 else min(n - 1, math.ceil(n / 2))


def default_gate_probs(n_stages: int, p_max: float = 0.9, p_min: float = 0.5) -> list[float]:
    """Per-stage keep probabilities, linear from `p_max` (first stage) to `p_min` (last).

    This is one reading of the Gated Depth schedule (Darzi et al. 2025, §3.2 is not available):
    stochastic-depth style, deeper stages are bypassed more often. p_min = 0.5 and p_max = 0.9
    are the paper's cross-validated values.
    """
    if n_stages == 1:
        return [p_max]
    return [p_max - s * (p_max - p_min) / (n_stages - 1) for s in range(n_stages)]


def check_gate_probs(gate_probs, n_stages: int) -> torch.Tensor:
    """Validate `gate_probs` (None, a float, or one value per stage) into a `(S,)` tensor."""
    if gate_probs is None:
        probs = default_gate_probs(n_stages)
    elif isinstance(gate_probs, (int, float)) and not isinstance(gate_probs, bool):
        probs = [float(gate_probs)] * n_stages
    else:
        flat = torch.as_tensor(gate_probs, dtype=torch.float64).reshape(-1)
        probs = [float(p) for p in flat.tolist()]
    if len(probs) != n_stages:
        raise ValueError(f"gate_probs: expected {n_stages} values (one per stage), got {len(probs)}")
    if not all(0.0 < p <= 1.0 for p in probs):
        raise ValueError(f"gate_probs: every probability must lie in (0, 1], got {probs}")
    return torch.tensor(probs, dtype=torch.float64)


def parse_configuration(config, n_stages: int) -> list[bool]:
    """Parse a per-stage skip configuration into a list of booleans (True = skip).

    **Arguments:**

    - `config`: a string of `n_stages` letters, `T` (skip that stage's skippable blocks) or `F`
      (run them), as in ADN ("TTTT" = base network, "FFFF" = full network); or a sequence of
      booleans with the same meaning.
    - `n_stages`: number of gated stages S.

    **Returns:** list of S booleans, True where the stage skips.

    **Raises:** `ValueError` naming the expected length and letters.
    """
    if isinstance(config, str):
        letters = config.strip().upper()
        if len(letters) != n_stages or any(c not in "TF" for c in letters):
            raise ValueError(
                f"configure: expected a string of {n_stages} letters T/F (one per stage, T = skip "
                f"the stage's skippable blocks, e.g. {'T' * n_stages!r}), got {config!r}"
            )
        return [c == "T" for c in letters]
    if isinstance(config, torch.Tensor):
        config = config.reshape(-1).tolist()
    if not isinstance(config, Sequence):
        raise TypeError(f"configure: expected a T/F string or a sequence of bools, got "
                        f"{type(config).__name__}")
    if len(config) != n_stages:
        raise ValueError(f"configure: expected {n_stages} flags (one per stage), got {len(config)}")
    out = []
    for c in config:
        # bools, 0/1 and 0.0/1.0 (a float 0-1 tensor's items, as gate samplers give)
        if isinstance(c, (bool, int, float)) and c in (0, 1):
            out.append(bool(c))
        else:
            raise ValueError(f"configure: flags must be booleans or 0/1, got {c!r}")
    return out


def config_value(v):
    """A JSON-friendly copy of an option (tensors and tuples become lists) for `model.config`."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [config_value(e) for e in v]
    return v


def check_exits(exits):
    """Normalise the `exits` option: None/False, "per_block" or "shared"."""
    if exits is None or exits is False:
        return None
    if exits in ("per_block", "shared"):
        return exits
    raise ValueError(f"exits: expected None, 'per_block' or 'shared', got {exits!r}")

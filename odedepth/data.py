"""Small data sets for the demos and tests.

:func:`load_digits_split`: scikit-learn's handwritten digits (1797 images of 8x8 pixels, 10
classes; the UCI "Optical recognition of handwritten digits" test set), flattened to 64
features, split into train and test with stratification, and standardised with the training
split's per-pixel mean and standard deviation (pixels that are constant in training keep scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DigitsSplit", "load_digits_split", "check_seed"]


@dataclass
class DigitsSplit:
    """`x_train` `(n_train, 64)` float, `y_train` `(n_train,)` int64, `x_test`, `y_test`;
    `mean`, `std` `(64,)` the standardisation fitted on the training split."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: Tensor
    std: Tensor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return 10


def check_seed(seed, caller: str) -> int:
    """`seed` as an int if it is an integer in [0, 2**63) (what numpy and torch both accept),
    else `ValueError` naming `caller` and the seed."""
    try:
        ok = int(seed) == seed
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not 0 <= int(seed) < 2**63:
        raise ValueError(f"{caller}: seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def load_digits_split(seed: int = 0, test_size: float = 0.2, dtype=torch.float32,
                      device=None) -> DigitsSplit:
    """scikit-learn's digits as standardised tensors, split into train and test.

    **Arguments:**

    - `seed`: seed of the stratified split, an integer in [0, 2**63).
    - `test_size`: fraction in (0, 1) held out for testing.
    - `dtype`, `device`: of the feature tensors.

    **Returns:** a :class:`DigitsSplit`.

    **Raises:** `ValueError` for a test size outside (0, 1) or a seed outside [0, 2**63) (naming
    it); `ImportError` naming the missing
    package if scikit-learn is not installed (`pip install odedepth[data]`).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"load_digits_split: test_size must lie in (0, 1), got {test_size}")
    check_seed(seed, "load_digits_split")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - the data extra is missing
        raise ImportError("load_digits_split needs scikit-learn: pip install 'odedepth[data]'") \
            from err
    x, y = load_digits(return_X_y=True)
    # Stratified split: the same fraction of every class is held out (our own few lines, so
    # that the demo does not pay for importing sklearn.model_selection).
    rng = np.random.default_rng(int(seed))
    test_idx = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(members[: int(round(test_size * len(members)))])
    test_mask = np.zeros(len(y), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    train_idx = rng.permutation(np.flatnonzero(~test_mask))
    test_all = rng.permutation(np.flatnonzero(test_mask))
    x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_all], y[test_all]
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)  # constant border pixels: keep them at zero

    def t(a, dt=dtype):
        return torch.as_tensor(a, dtype=dt, device=device)

    return DigitsSplit(x_train=t((x_tr - mean) / std), y_train=t(y_tr, torch.int64),
                       x_test=t((x_te - mean) / std), y_test=t(y_te, torch.int64),
                       mean=t(mean), std=t(std))

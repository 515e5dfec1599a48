"""DepthTrajectory: the common currency of discrete and continuous depth.

A discrete network with exits after its blocks and a continuous-depth network read out on its
dense output both produce the same object: for every sample of a batch, the depths it visited
and, at each of them, the head's output (logits) and optionally the hidden state. Every stopping
rule in :mod:`odedepth.stopping` consumes this object, which is what makes "discrete versus
continuous depth" one comparison rather than two code bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DepthTrajectory"]

_KINDS = ("block", "time", "cost")


@dataclass
class DepthTrajectory:
    """Depths visited by a batch, with the head outputs (and optionally states) there.

    **Arguments:**

    - `depths`: `(n,)` depth coordinates shared by the batch, or `(batch, n)` per sample. They
      are block indices (`kind="block"`), integration times (`kind="time"`) or cumulative compute
      (`kind="cost"`), and must be non-decreasing along the last axis.
    - `outputs`: `(batch, n, *out)` head outputs at each depth (logits for a classifier).
    - `states`: optional `(batch, n, *state)` hidden states at each depth. States of different
      stages may differ in shape; then keep `states=None` and pass the head outputs only.
    - `cost`: optional `(n,)` or `(batch, n)` cumulative cost of reaching each depth (e.g.
      multiply-adds or function evaluations; finite, >= 0, non-decreasing). Defaults to the
      depths themselves.
    - `kind`: what `depths` measures: `"block"`, `"time"` or `"cost"`.
    - `valid`: optional `(batch, n)` boolean mask of the depths a sample actually visited (a sample
      that halted early has no outputs beyond its stop, so each row is true up to some depth
      and false after it). Defaults to all true.

    **Raises:** `ValueError` naming the argument whose shape, dtype or values are wrong.
    """

    depths: Tensor
    outputs: Tensor
    states: Tensor | None = None
    cost: Tensor | None = None
    kind: str = "block"
    valid: Tensor | None = field(default=None)

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"DepthTrajectory: kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.outputs, Tensor) or self.outputs.dim() < 2:
            raise ValueError(
                "DepthTrajectory: outputs must be a tensor of shape (batch, n_depths, ...), got "
                f"{_describe(self.outputs)}"
            )
        batch, n = self.outputs.shape[:2]
        if n == 0:
            raise ValueError("DepthTrajectory: outputs has no depths (n_depths = 0)")
        d = torch.as_tensor(self.depths, device=self.outputs.device)
        if not d.is_floating_point():
            d = d.to(torch.get_default_dtype() if not self.outputs.is_floating_point()
                     else self.outputs.dtype)
        if d.shape not in ((n,), (batch, n)):
            raise ValueError(
                f"DepthTrajectory: depths must have shape ({n},) or ({batch}, {n}) to match "
                f"outputs {tuple(self.outputs.shape)}, got {tuple(d.shape)}"
            )
        if not torch.isfinite(d).all():
            raise ValueError("DepthTrajectory: depths contain NaN or inf")
        if n > 1 and (d.diff(dim=-1) < 0).any():
            raise ValueError("DepthTrajectory: depths must be non-decreasing along the depth axis")
        self.depths = d
        if self.states is not None and tuple(self.states.shape[:2]) != (batch, n):
            raise ValueError(
                f"DepthTrajectory: states must start with (batch, n_depths) = ({batch}, {n}), "
                f"got {tuple(self.states.shape)}"
            )
        if self.cost is not None:
            c = torch.as_tensor(self.cost, device=self.outputs.device, dtype=d.dtype)
            if c.shape not in ((n,), (batch, n)):
                raise ValueError(
                    f"DepthTrajectory: cost must have shape ({n},) or ({batch}, {n}), "
                    f"got {tuple(c.shape)}"
                )
            if not torch.isfinite(c).all() or (c < 0).any():
                raise ValueError("DepthTrajectory: cost must be finite and >= 0")
            if n > 1 and (c.diff(dim=-1) < 0).any():
                raise ValueError("DepthTrajectory: cost is cumulative, so it must be "
                                 "non-decreasing along the depth axis")
            self.cost = c
        if self.valid is not None:
            v = torch.as_tensor(self.valid, device=self.outputs.device)
            if v.dtype != torch.bool or tuple(v.shape) != (batch, n):
                raise ValueError(
                    f"DepthTrajectory: valid must be a bool tensor of shape ({batch}, {n}), got "
                    f"{v.dtype} {tuple(v.shape)}"
                )
            if not v[:, 0].all():
                raise ValueError("DepthTrajectory: every sample must have visited the first depth")
            if n > 1 and (v[:, 1:] & ~v[:, :-1]).any():
                raise ValueError("DepthTrajectory: valid must be a prefix per sample (visited "
                                 "depths, then none once the sample halted), found a gap")
            self.valid = v

    # ------------------------------------------------------------------ shape helpers
    @property
    def batch_size(self) -> int:
        return self.outputs.shape[0]

    @property
    def n_depths(self) -> int:
        return self.outputs.shape[1]

    def depth_grid(self) -> Tensor:
        """`(batch, n)` depths, broadcast over the batch if they were shared."""
        return self.depths.expand(self.batch_size, self.n_depths)

    def cost_grid(self) -> Tensor:
        """`(batch, n)` cumulative cost, defaulting to the depths."""
        c = self.depths if self.cost is None else self.cost
        return c.expand(self.batch_size, self.n_depths)

    def valid_mask(self) -> Tensor:
        if self.valid is None:
            return torch.ones(self.batch_size, self.n_depths, dtype=torch.bool,
                              device=self.outputs.device)
        return self.valid

    def last_index(self) -> Tensor:
        """`(batch,)` index of the deepest depth each sample visited."""
        v = self.valid_mask()
        idx = torch.arange(self.n_depths, device=v.device).expand_as(v)
        return torch.where(v, idx, torch.zeros_like(idx)).amax(dim=1)

    # ------------------------------------------------------------------ selection
    def _check_index(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index, device=self.outputs.device)
        if index.shape != (self.batch_size,) or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"DepthTrajectory: stop index must be an integer tensor of shape "
                f"({self.batch_size},), got {index.dtype} {tuple(index.shape)}"
            )
        if (index < 0).any() or (index >= self.n_depths).any():
            raise ValueError(
                f"DepthTrajectory: stop index out of range [0, {self.n_depths - 1}]"
            )
        if not self.valid_mask().gather(1, index.long()[:, None]).all():
            raise ValueError("DepthTrajectory: stop index points past a sample's last visited depth")
        return index.long()

    def outputs_at(self, index: Tensor) -> Tensor:
        """`(batch, *out)` head outputs at a per-sample depth index."""
        index = self._check_index(index)
        return self.outputs[torch.arange(self.batch_size, device=index.device), index]

    def states_at(self, index: Tensor) -> Tensor:
        """`(batch, *state)` hidden states at a per-sample depth index."""
        if self.states is None:
            raise ValueError("DepthTrajectory: this trajectory carries no states")
        index = self._check_index(index)
        return self.states[torch.arange(self.batch_size, device=index.device), index]

    def depths_at(self, index: Tensor) -> Tensor:
        """`(batch,)` depth reached at a per-sample index."""
        index = self._check_index(index)
        return self.depth_grid().gather(1, index[:, None])[:, 0]

    def cost_at(self, index: Tensor) -> Tensor:
        """`(batch,)` cumulative cost at a per-sample index."""
        index = self._check_index(index)
        return self.cost_grid().gather(1, index[:, None])[:, 0]

    def losses(self, target: Tensor, loss_fn=None) -> Tensor:
        """`(batch, n)` loss of the head output at every depth (cross-entropy by default).

        Depths a sample did not visit get `nan`, so that they cannot be mistaken for zeros.
        """
        if loss_fn is None:
            def loss_fn(logits, y):
                return torch.nn.functional.cross_entropy(logits, y, reduction="none")
        b, n = self.batch_size, self.n_depths
        if target.shape[0] != b:
            raise ValueError(
                f"DepthTrajectory.losses: target has {target.shape[0]} samples, trajectory {b}"
            )
        flat = self.outputs.reshape(b * n, *self.outputs.shape[2:])
        tgt = target.repeat_interleave(n, dim=0)
        out = loss_fn(flat, tgt).reshape(b, n)
        return torch.where(self.valid_mask(), out, torch.full_like(out, float("nan")))

    def to(self, *args, **kwargs) -> DepthTrajectory:
        def mv(x):
            return None if x is None else x.to(*args, **kwargs)
        return DepthTrajectory(
            depths=mv(self.depths), outputs=mv(self.outputs), states=mv(self.states),
            cost=mv(self.cost), kind=self.kind,
            valid=None if self.valid is None else self.valid.to(self.outputs.to(*args, **kwargs).device),
        )

    def detach(self) -> DepthTrajectory:
        def dt(x):
            return None if x is None else x.detach()
        return DepthTrajectory(depths=dt(self.depths), outputs=dt(self.outputs),
                               states=dt(self.states), cost=dt(self.cost), kind=self.kind,
                               valid=self.valid)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__

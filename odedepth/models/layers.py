"""Small building blocks shared by the model families: branch scaling, drop-path, MAC counts."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BranchScale", "drop_path", "conv_macs", "norm_or_identity"]


class BranchScale(nn.Module):
    """Multiply a residual branch by alpha: a fixed float, or a learnable scalar (ReZero).

    A fixed alpha is a plain attribute, not a parameter or buffer, so that the state_dict of a
    model with `branch_scale` = a number keeps the torchvision/timm layout. The learnable gain is
    a 0-dim parameter initialised at `alpha` (0 for ReZero/SkipInit: Bachlechner et al. 2020,
    De & Smith 2020), so the block is the identity at initialisation.
    """

    def __init__(self, alpha: float = 1.0, learnable: bool = False):
        super().__init__()
        self.learnable = bool(learnable)
        if self.learnable:
            self.gain = nn.Parameter(torch.full((), float(alpha)))
        else:
            self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        if self.learnable:
            return x * self.gain
        return x if self.alpha == 1.0 else x * self.alpha

    def value(self) -> float:
        return float(self.gain.detach()) if self.learnable else self.alpha

    def extra_repr(self) -> str:
        return "learnable" if self.learnable else f"alpha={self.alpha:g}"


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch (Huang et al. 2016): drop per sample, rescale."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def conv_macs(conv: nn.Conv2d, shape) -> tuple[int, tuple]:
    """Multiply-adds of `conv` on a `(C, H, W)` input and the output shape."""
    _, h, w = shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    macs = conv.out_channels * ho * wo * (conv.in_channels // conv.groups) * kh * kw
    return macs, (conv.out_channels, ho, wo)


def norm_or_identity(make, use_norm: bool) -> nn.Module:
    """`make()` when normalisation is on, else an identity (normalisation-free variant)."""
    return make() if use_norm else nn.Identity()

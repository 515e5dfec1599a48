"""Vision Transformer (patch 16) with the timm/torchvision-like layout and depth options.

Layout: `patch_embed.proj` (convolution), `cls_token`, `pos_embed`, `blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}` (pre-norm), `norm`, `head` (on the [CLS] token); the
parameter counts equal timm's `vit_{tiny,small,base}_patch16_224` (5,717,416 / 22,050,664 /
86,567,656 at 224 and 1000 classes).

Gating follows ADN's ViT split: the blocks form `gate_groups` groups (4 for 12 layers) and the
last block of every group is skippable; mandatory blocks of such groups get skip-aware
LayerNorm copies `norm1_skip`, `norm2_skip`.

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; Kang & Lee 2024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DepthNet
from .layers import BranchScale, conv_macs, drop_path, norm_or_identity
from .options import check_exits, config_value, resolve_branch_scale

__all__ = ["VisionTransformer", "TransformerBlock"]


def _ln(d):
    return lambda: nn.LayerNorm(d, eps=1e-6)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"VisionTransformer: embed_dim {dim} not divisible by num_heads "
                             f"{num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + a attn(norm1(x)), then x + a mlp(norm2(x)) (two residual branches)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, *, norm=True,
                 skip_norm=False, alpha=1.0, learnable=False, drop_path_rate=0.0):
        super().__init__()
        self.norm1 = norm_or_identity(_ln(dim), norm)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = norm_or_identity(_ln(dim), norm)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.has_skip_norm = bool(skip_norm)
        if skip_norm:
            self.norm1_skip = norm_or_identity(_ln(dim), norm)
            self.norm2_skip = norm_or_identity(_ln(dim), norm)
        self.use_skip_norm = False
        self.attn_scale = BranchScale(alpha, learnable)
        self.mlp_scale = BranchScale(alpha, learnable)
        self.drop_path = float(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        n1 = self.norm1_skip if self.use_skip_norm else self.norm1
        n2 = self.norm2_skip if self.use_skip_norm else self.norm2
        x = x + drop_path(self.attn_scale(self.attn(n1(x))), self.drop_path, self.training)
        return x + drop_path(self.mlp_scale(self.mlp(n2(x))), self.drop_path, self.training)

    def branch_layers(self):
        return None, None

    def macs(self, shape):
        n, d = shape
        hidden = self.mlp.fc1.out_features
        # qkv 3nd^2, scores n^2 d, weighted values n^2 d, projection nd^2, MLP 2 n d hidden
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * hidden, shape


class _TokenHead(nn.Module):
    """Per-block exit: LayerNorm + linear on the [CLS] token."""

    def __init__(self, dim, num_classes, norm=True):
        super().__init__()
        self.norm = norm_or_identity(_ln(dim), norm)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(x[:, 0]))


class VisionTransformer(DepthNet):
    """ViT with [CLS] head and the shared depth options.

    **Arguments:**

    - `img_size` (square input side, a multiple of `patch_size`), `patch_size` (16),
      `in_chans`, `num_classes`, `embed_dim`, `depth`, `num_heads`, `mlp_ratio`, `qkv_bias`.
    - `branch_scale`: 1, float, "1/sqrt(L)", "1/L" (L = 2 x depth residual branches) or
      "rezero" (gains `attn_scale.gain`, `mlp_scale.gain` initialised at 0).
    - `norm`: False replaces every LayerNorm by an identity.
    - `exits`: None, "per_block" (LayerNorm + linear on [CLS] after every block) or "shared"
      (the final `norm` + `head` on the [CLS] token of every block, and of the embeddings).
    - `gated`, `gate_probs`, `calibrate`, `split`: as for :class:`ResNet`; stages are the
      `gate_groups` groups of consecutive blocks, ADN's split keeps all but the last block of a
      group mandatory.
    - `drop_path`: stochastic-depth rate, linear over blocks.
    """

    _input_ndim = 4

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, *, branch_scale=1.0,
                 norm=True, exits=None, gated=False, gate_probs=None, calibrate=True,
                 gate_groups=4, split=None, drop_path=0.0, name="vit"):
        super().__init__()
        for arg, v in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                       ("num_classes", num_classes), ("embed_dim", embed_dim), ("depth", depth),
                       ("num_heads", num_heads), ("gate_groups", gate_groups)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"VisionTransformer: {arg} must be a positive integer, got {v!r}")
        if not 0.0 <= float(drop_path) < 1.0:
            raise ValueError(f"VisionTransformer: drop_path must lie in [0, 1), got {drop_path}")
        if img_size % patch_size:
            raise ValueError(f"VisionTransformer: img_size {img_size} is not a multiple of "
                             f"patch_size {patch_size}")
        if depth % gate_groups:
            raise ValueError(f"VisionTransformer: depth {depth} is not divisible into "
                             f"gate_groups={gate_groups} groups")
        self.config = dict(name=name, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           branch_scale=branch_scale, norm=bool(norm), exits=exits,
                           gated=bool(gated), gate_probs=config_value(gate_probs),
                           calibrate=bool(calibrate), gate_groups=gate_groups,
                           split=config_value(split), drop_path=float(drop_path))
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        alpha, learnable = resolve_branch_scale(branch_scale, 2 * depth)
        n_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, embed_dim))
        per = depth // gate_groups
        layers = [per] * gate_groups
        if gated and split is None:
            split = [per - 1 if per > 1 else per for _ in layers]  # ADN: last of a group skippable
        n_mand = self._mandatory_counts(layers, gated, split)
        self.blocks = nn.ModuleList()
        for k in range(depth):
            s, j = divmod(k, per)
            self.blocks.append(TransformerBlock(
                embed_dim, num_heads, mlp_ratio, qkv_bias, norm=norm,
                skip_norm=gated and n_mand[s] < per and j < n_mand[s], alpha=alpha,
                learnable=learnable, drop_path_rate=float(drop_path) * k / max(depth - 1, 1)))
        self.norm = norm_or_identity(_ln(embed_dim), norm)
        self.head = nn.Linear(embed_dim, num_classes)
        if check_exits(exits) == "per_block":
            self.exits = nn.ModuleList(_TokenHead(embed_dim, num_classes, norm)
                                       for _ in range(depth - 1))
        self._layers = layers
        self._init_weights()
        self._init_depth(n_mandatory=n_mand, gated=gated, gate_probs=gate_probs, exits=exits,
                         calibrate=calibrate)

    def _init_weights(self):
        # Truncated-normal(0.02) for tokens and linear weights, zero biases (ViT convention).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def stage_blocks(self):
        per = self._layers[0]
        return [list(self.blocks[s * per:(s + 1) * per]) for s in range(len(self._layers))]

    def _check_input(self, x):
        c, s = self.in_chans, self.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"VisionTransformer: expected input of shape (batch, {c}, {s}, {s}), "
                             f"got {tuple(x.shape)} (position embeddings fix img_size)")

    def _forward_stem(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return t + self.pos_embed

    def _forward_head(self, h):
        return self.head(self.norm(h)[:, 0])

    def _shared_exit(self, h, stage):
        return self._forward_head(h)

    def _stem_macs(self, shape):
        m, (d, hh, ww) = conv_macs(self.patch_embed.proj, shape)
        return m, (hh * ww + 1, d)

    def _head_macs(self, shape):
        return self.head.in_features * self.head.out_features

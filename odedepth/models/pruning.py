"""Remove residual blocks whose branch vanished (stage-cost pruning).

Püttschneider et al. (arXiv 2506.21453) show that a stage cost on intermediate outputs plus
weight decay drives the branch weights of unnecessary deep blocks to zero; such a block computes
its skip connection only, so it can be removed without changing the function. A block whose
shortcut is a projection (a downsampling first block of a ResNet stage) keeps the projection as
a :class:`~odedepth.models.ShortcutOnly` module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import DepthNet
from .layers import BranchScale
from .mlp import ResidualMLP
from .registry import create_model
from .resnet import ResNet, ShortcutOnly
from .vit import VisionTransformer

__all__ = ["branch_norms", "prune_blocks"]


def _affine_norm(layer: nn.Module, norm: nn.Module | None) -> float:
    """Norm of the last affine map of a branch with an eval-mode BatchNorm folded in.

    With y = gamma (W x - mu) / sigma + beta the branch is identically zero exactly when the
    folded weight W gamma / sigma and bias beta - gamma mu / sigma both vanish.
    """
    w = layer.weight.detach().double()
    b = (layer.bias.detach().double() if getattr(layer, "bias", None) is not None
         else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    if isinstance(norm, nn.BatchNorm2d):
        sigma = (norm.running_var.double() + norm.eps).sqrt()
        g = norm.weight.detach().double() / sigma
        w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
        b = norm.bias.detach().double() + g * (b - norm.running_mean.double())
    return math.sqrt(float(w.pow(2).sum() + b.pow(2).sum()))


def _block_score(block: nn.Module) -> float:
    if isinstance(block, ShortcutOnly):
        return 0.0
    if hasattr(block, "attn_scale"):  # transformer block: two branches
        a = _affine_norm(block.attn.proj, None) * abs(block.attn_scale.value())
        m = _affine_norm(block.mlp.fc2, None) * abs(block.mlp_scale.value())
        return math.hypot(a, m)
    layer, norm = block.branch_layers()
    return _affine_norm(layer, norm) * abs(block.branch_scale.value())


def branch_norms(model: DepthNet) -> list[list[float]]:
    """Per stage, per block: norm of the residual branch's last affine map (BN folded, times the
    branch scale); 0 exactly when the block computes its shortcut only (in eval mode)."""
    return [[_block_score(b) for b in blocks] for blocks in model.stage_blocks()]


def prune_blocks(model: DepthNet, threshold: float = 1e-3) -> DepthNet:
    """Remove the blocks whose relative branch norm is below `threshold`.

    The relative norm of block k is ``branch_norms[k] / max_j branch_norms[j]``. Removed blocks
    are replaced by their shortcut: nothing for an identity shortcut, a
    :class:`~odedepth.models.ShortcutOnly` for a ResNet projection. The result is a fresh model
    built with ``create_model(**config)`` (per-stage `layers`, `shortcut_only` flags; `depth`
    for a ViT), so its state_dict reloads cleanly into ``create_model(**pruned.config)``.
    Per-block exit heads of kept blocks are kept (the new last block uses the final head).

    **Arguments:** `model`: a ResNet, ViT or ResidualMLP built with `gated=False`;
    `threshold`: relative norm in [0, 1).

    **Returns:** the pruned model, in the same train/eval mode and on the same device.

    **Raises:** `ValueError` for a gated model or a bad threshold, `TypeError` for other models.
    """
    if not isinstance(model, (ResNet, VisionTransformer, ResidualMLP)):
        raise TypeError(f"prune_blocks: unsupported model {type(model).__name__}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
        raise ValueError(f"prune_blocks: threshold must lie in [0, 1), got {threshold!r}")
    if model.gated:
        raise ValueError("prune_blocks: gated models are not supported (the mandatory/skippable "
                         "split would change); prune the plain model")
    scores = branch_norms(model)
    top = max((s for st in scores for s in st), default=0.0)
    stages = model.stage_blocks()
    kept, layers, shortcut_only = [], [], []
    for blocks, st in zip(stages, scores):
        new_stage, so = [], False
        for j, (blk, sc) in enumerate(zip(blocks, st)):
            gone = isinstance(blk, ShortcutOnly) or top == 0.0 or sc / top < threshold
            if not gone:
                new_stage.append(blk)
            elif j == 0 and getattr(blk, "downsample", None) is not None:
                new_stage.append(blk)
                so = True
        kept.append(new_stage)
        layers.append(len(new_stage))
        shortcut_only.append(so)

    config = dict(model.config)
    if isinstance(config.get("branch_scale"), str):
        # "1/L" and "1/sqrt(L)" were resolved for the unpruned depth: keep that value (a
        # rebuilt config would resolve them for the pruned depth and change every kept block)
        fixed = {m.alpha for m in model.modules() if isinstance(m, BranchScale) and not m.learnable}
        if len(fixed) == 1:
            config["branch_scale"] = fixed.pop()
    if isinstance(model, ResNet):
        config.update(layers=layers, shortcut_only=shortcut_only if any(shortcut_only) else None)
    elif isinstance(model, ResidualMLP):
        config.update(layers=layers)
    else:
        config.update(depth=sum(layers), gate_groups=1)
        if config["depth"] == 0:
            raise ValueError("prune_blocks: every transformer block would be removed")
    new = create_model(**config).to(next(model.parameters()).device)

    old_flat = [b for st in kept for b in st]
    new_flat = [b for st in new.stage_blocks() for b in st]
    with torch.no_grad():
        for old_b, new_b in zip(old_flat, new_flat):
            if isinstance(new_b, ShortcutOnly):
                new_b.downsample.load_state_dict(old_b.downsample.state_dict())
            else:
                new_b.load_state_dict(old_b.state_dict())
        # Everything outside the blocks (stem, head, norms, tokens) by name.
        block_names = {name for name, m in model.named_modules()
                       if any(m is b for st in stages for b in st)}
        prefixes = tuple(n + "." for n in block_names) + ("exits.",)
        old_sd = model.state_dict()
        new_sd = new.state_dict()
        for k in new_sd:
            if not k.startswith(prefixes) and k in old_sd:
                new_sd[k].copy_(old_sd[k])
        if getattr(model, "exits", None) is not None:
            old_index = {id(b): i for i, b in enumerate(b for st in stages for b in st)}
            for i, old_b in enumerate(old_flat[:-1]):
                k = old_index[id(old_b)]
                if k < len(model.exits):
                    new.exits[i].load_state_dict(model.exits[k].state_dict())
    return new.train(model.training)

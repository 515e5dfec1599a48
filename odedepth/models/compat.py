"""Load plain torchvision/timm checkpoints into models whose options add parameters."""

from __future__ import annotations

import torch
from torch import nn

from .. import checkpoint

__all__ = ["load_torchvision_state_dict"]


def load_torchvision_state_dict(model: nn.Module, source) -> list[str]:
    """Load a plain (options-off) checkpoint into `model`, filling the option parameters.

    - skip-aware norm copies (`bn1_skip`, `norm1_skip`, ...) start as copies of the plain norm
      they duplicate (ADN fine-tunes them from there);
    - ReZero/SkipInit gains (`branch_scale.gain`, `*_scale.gain`) are set to 1 so the loaded
      network computes the checkpoint's function;
    - per-block exit heads (`exits.*`) keep their fresh initialisation (a plain checkpoint has
      nothing to say about them) and are returned so the caller can train them.

    **Arguments:** `model`: an odedepth model; `source`: a path or a state_dict.

    **Returns:** the keys left at their initial values (exit heads).

    **Raises:** :class:`odedepth.checkpoint.CheckpointError` if, after filling, keys or shapes
    still do not match (e.g. a different depth or `num_classes`).
    """
    if not isinstance(source, dict):
        source = checkpoint.load(source)
    source = checkpoint._extract_state_dict(source)
    target = model.state_dict()
    filled = dict(source)
    left = []
    for key, value in target.items():
        if key in filled:
            continue
        if "_skip." in key:
            plain = key.replace("_skip.", ".", 1)
            if plain in source:
                filled[key] = source[plain].clone()
                continue
        if key.endswith("scale.gain"):
            filled[key] = torch.ones_like(value)
            continue
        if key.startswith("exits."):
            filled[key] = value
            left.append(key)
    checkpoint.load_state_dict(model, filled, strict=True)
    return left

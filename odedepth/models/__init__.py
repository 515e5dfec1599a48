"""Discrete-depth models: ResNet and ViT with exits, gated sub-paths and branch scaling.

- :func:`create_model` / :func:`list_models`: the registry (`resnet18/34/50/101`,
  `vit_tiny/small/base`, `resmlp`);
- :class:`ResNet`, :class:`VisionTransformer`, :class:`ResidualMLP`: the families, all
  :class:`DepthNet` subclasses sharing gates (`configure`, `set_gates`, `sample_gates`),
  exits (`forward` -> `(logits, DepthTrajectory)`) and per-sample :func:`early_exit`;
- :func:`prune_blocks`: remove blocks whose residual branch vanished;
- :func:`load_torchvision_state_dict`: load a plain torchvision checkpoint into a model with
  options on (fills the skip-aware BN copies).

See ``docs/models.md``.
"""

from .base import DepthNet, early_exit
from .compat import load_torchvision_state_dict
from .mlp import ResidualMLP, ResidualMLPBlock
from .options import adn_split, default_gate_probs, parse_configuration, resolve_branch_scale
from .pruning import branch_norms, prune_blocks
from .registry import create_model, list_models, register_model
from .resnet import BasicBlock, Bottleneck, ResNet, ShortcutOnly
from .vit import TransformerBlock, VisionTransformer

__all__ = [
    "DepthNet", "early_exit", "load_torchvision_state_dict", "create_model", "list_models", "register_model",
    "ResNet", "BasicBlock", "Bottleneck", "ShortcutOnly", "VisionTransformer",
    "TransformerBlock", "ResidualMLP", "ResidualMLPBlock",
    "prune_blocks", "branch_norms", "adn_split", "default_gate_probs", "parse_configuration", "resolve_branch_scale",
]


def _resnet(block, layers):
    def build(name, **options):
        kw = dict(block=block, layers=layers)
        kw.update(options)
        return ResNet(name=name, **kw)
    return build


register_model("resnet18", _resnet("basic", [2, 2, 2, 2]))
register_model("resnet34", _resnet("basic", [3, 4, 6, 3]))
register_model("resnet50", _resnet("bottleneck", [3, 4, 6, 3]))
register_model("resnet101", _resnet("bottleneck", [3, 4, 23, 3]))


def _vit(embed_dim, depth, num_heads):
    def build(name, **options):
        kw = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=16)
        kw.update(options)
        return VisionTransformer(name=name, **kw)
    return build


register_model("vit_tiny", _vit(192, 12, 3))
register_model("vit_small", _vit(384, 12, 6))
register_model("vit_base", _vit(768, 12, 12))
register_model("resmlp", lambda name, **options: ResidualMLP(name=name, **options))

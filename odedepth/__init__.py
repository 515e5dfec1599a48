"""odedepth: how deep should a network be, per input?

Layer 2 of the package (layer 1 is :mod:`solvers`). Concepts, one per module:

- :class:`odedepth.DepthTrajectory` (``odedepth.trajectory``): the common currency, the depths a
  batch visited with the states and head outputs there;
- ``odedepth.flows``: continuous depth (vector fields, ODE and SDE blocks);
- ``odedepth.stopping``: stopping rules shared by discrete and continuous models;
- ``odedepth.losses``: stopped loss plus running/stage costs, depth regularisers;
- ``odedepth.models``: ResNet and ViT with exits, gates, branch scaling, and a registry;
- ``odedepth.bridge``: discrete <-> continuous depth;
- ``odedepth.analysis``: MACs/FLOPs, latency, residual expansion, Pareto frontiers.

Submodules are imported lazily, so ``import odedepth; odedepth.analysis.count_macs(...)`` works
without paying for every import up front.
"""

import importlib

from .trajectory import DepthTrajectory

__version__ = "0.1.0"
__all__ = ["DepthTrajectory", "__version__"]

_SUBMODULES = {
    "analysis",
    "bridge",
    "checkpoint",
    "cli",
    "data",
    "demos",
    "flows",
    "losses",
    "models",
    "plots",
    "stopping",
    "train",
    "trajectory",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'odedepth' has no attribute {name!r}")

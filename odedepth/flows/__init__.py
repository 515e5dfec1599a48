"""Continuous depth: vector fields, time-dependent weights, ODE and SDE blocks.

- :mod:`.fields`: MLP, convolutional and Transformer-block vector fields; weights varying with
  depth (t as input, piecewise-constant stages, hat-function / Legendre basis expansions);
- :mod:`.ode_block`: :class:`ODEBlock` over :func:`solvers.ode.solve` (checkpoints, running
  integrals, per-sample halting by events), :func:`trajectory_from_solution`;
- :mod:`.sde_block`: :class:`SDEBlock` (torchsde, or our Euler--Maruyama with per-sample stopping);
- :mod:`.classifier`: :class:`ContinuousDepthClassifier` (embed -> flow -> head).
"""

from .classifier import ContinuousDepthClassifier, Prediction
from .fields import TIME_MODES, ConvField, MLPField, TimeLinear, TransformerField
from .ode_block import Augmentation, FlowSolution, ODEBlock, trajectory_from_solution
from .sde_block import SDEBlock, SDESolution

__all__ = ["TIME_MODES", "TimeLinear", "MLPField", "ConvField", "TransformerField",
           "Augmentation", "FlowSolution", "ODEBlock", "trajectory_from_solution",
           "SDEBlock", "SDESolution", "ContinuousDepthClassifier", "Prediction"]

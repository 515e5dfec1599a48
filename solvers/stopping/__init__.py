"""Discrete-time optimal stopping on paths (layer 1, no neural-network notions).

See ``docs/optimal_stopping.md``. Methods: exact :func:`backward_induction` on finite chains and
lattices, :func:`longstaff_schwartz` regression, :func:`neural` stopping decisions (Becker,
Cheridito & Jentzen 2019), the Andersen--Broadie :func:`dual_upper_bound` and :func:`bounds`;
path simulators for validation.
"""

from .backward import (
    BackwardInductionResult,
    ChainPolicy,
    Lattice,
    MarkovChain,
    backward_induction,
    crr_lattice,
)
from .dual import Bounds, bounds, dual_upper_bound
from .neural import NeuralPolicy, neural
from .paths import BrownianMotion, FractionalBrownianMotion, GeometricBrownianMotion, PathSimulator
from .policy import Estimate, StoppingFit, StoppingPolicy, estimate_mean, evaluate
from .regression import BASES, RegressionPolicy, basis_functions, longstaff_schwartz

__all__ = [
    "BackwardInductionResult", "ChainPolicy", "Lattice", "MarkovChain", "backward_induction",
    "crr_lattice", "BrownianMotion", "FractionalBrownianMotion", "GeometricBrownianMotion",
    "PathSimulator", "Estimate", "StoppingFit", "StoppingPolicy", "estimate_mean", "evaluate",
    "BASES", "RegressionPolicy", "basis_functions", "longstaff_schwartz", "Bounds", "bounds",
    "dual_upper_bound", "NeuralPolicy", "neural",
]

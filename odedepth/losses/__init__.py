"""Training objectives and regularisers for depth.

- :mod:`.continuous`: expected stopped loss plus running cost and stage cost along a flow, depth
  regularisers (diminishing returns), kinetic-energy and Jacobian (Hutchinson) regularisers.
- :mod:`.discrete`: gated depth with self-distillation and gate scheduling, the ADN super/base
  distillation, stage cost through skip projections, for networks with blocks.

Everything is re-exported here: ``from odedepth.losses import stage_cost_loss``.
"""

from .continuous import *  # noqa: F401,F403
from .continuous import __all__ as _continuous_all
from .discrete import *  # noqa: F401,F403
from .discrete import __all__ as _discrete_all

__all__ = list(_continuous_all) + list(_discrete_all)

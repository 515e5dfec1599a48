"""Stopping rules shared by discrete exits and continuous flows (see :mod:`.base`)."""

from .base import Entropy, FixedDepth, MaxProbability, Patience, StoppingRule, first_true_or_last

__all__ = ["StoppingRule", "FixedDepth", "MaxProbability", "Entropy", "Patience",
           "first_true_or_last"]
from .event_boundary import EventBoundaryRule  # noqa: E402
from .free_boundary import FreeBoundaryRule  # noqa: E402
from .hazard import HazardRule, RuleFeatures  # noqa: E402

__all__ += ["RuleFeatures", "HazardRule", "FreeBoundaryRule", "EventBoundaryRule"]

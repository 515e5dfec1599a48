"""Stopping rules shared by discrete exits and continuous flows (see :mod:`.base`)."""

from .base import Entropy, FixedDepth, MaxProbability, Patience, StoppingRule, first_true_or_last

__all__ = ["StoppingRule", "FixedDepth", "MaxProbability", "Entropy", "Patience",
           "first_true_or_last"]

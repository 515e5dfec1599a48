"""Objectives for networks with blocks (see the package docstring)."""

__all__ = []

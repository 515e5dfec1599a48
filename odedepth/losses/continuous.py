"""Objectives along continuous-depth flows (see the package docstring)."""

__all__ = []

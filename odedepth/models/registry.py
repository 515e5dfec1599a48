"""Model registry: `create_model(name, **options)` and `list_models()` (timm style)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: dict[str, Callable] = {}


def register_model(name: str, builder: Callable | None = None):
    """Register `builder(**options)` under `name` (usable as a decorator)."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"register_model: {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco if builder is None else deco(builder)


def create_model(name: str, **options):
    """Build a registered model.

    **Arguments:**

    - `name`: a name from :func:`list_models` (e.g. `"resnet50"`, `"vit_tiny"`).
    - `**options`: constructor arguments, shared across families: `num_classes`, `in_chans`,
      `branch_scale`, `norm`, `exits`, `gated`, `gate_probs`, `calibrate`, `drop_path`, and the
      family's own (`stem`, `layers`, `channels` for ResNets; `img_size`, `depth` for ViTs).

    **Returns:** the model; `create_model(**model.config)` rebuilds an identical architecture.

    **Raises:** `ValueError` for an unknown name (listing the known ones) or a bad option.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"create_model: unknown model {name!r}; known models: {list_models()}")
    return _REGISTRY[name](name=name, **options)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a substring."""
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)

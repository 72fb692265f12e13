"""Name -> model constructor. A model file registers itself with ``@register("name", **defaults)``."""
from __future__ import annotations

import functools
import importlib
import os

PLUGIN_ENV = "GENBENCH_PLUGINS"

_REGISTRY: dict[str, functools.partial] = {}


def register(name: str, **defaults):
    """Register the decorated class under ``name``; ``defaults`` are its constructor arguments
    (so one class can be registered in several configurations, e.g. ``vae-z2`` and ``vae-z4``)."""

    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name].func is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = functools.partial(cls, **defaults)
        return cls

    return decorate


def names() -> list[str]:
    return list(_REGISTRY)


def model_class(name: str):
    return _get(name).func


def build(name: str, image_shape=(1, 28, 28), **overrides):
    """A fresh model called ``name`` for images of ``image_shape`` (C, H, W)."""
    model = _get(name)(image_shape=image_shape, **overrides)
    model.name = name
    return model


def _get(name: str) -> functools.partial:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name]


def load_plugins() -> list[str]:
    """Import the modules named (comma-separated) in ``$GENBENCH_PLUGINS``: models registered there
    join the registry without editing this package (the worker processes load them too)."""
    loaded = []
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{PLUGIN_ENV} names {module!r}, which cannot be imported: {exc}") from exc
        loaded.append(module)
    return loaded

"""SAE variants behind one registry. Every variant carries a leading seed axis S on all parameters.

A variant outside the package registers itself with `@register_variant("name")` on a subclass of the base
class, or through the entry-point group `synthsae.variants` (name = "module:Class").
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, TypeVar

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_variant(name: str) -> Callable[[T], T]:
    """Class decorator: make `name` a trainable, analysable variant."""

    def deco(cls: T) -> T:
        cls.variant = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin_and_plugins() -> None:
    from synthsae.sae import variants  # noqa: F401  (registers the shipped variants)

    for ep in entry_points(group="synthsae.variants"):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def registered_variants() -> list[str]:
    """Names of every known variant, shipped and plug-in."""
    _load_builtin_and_plugins()
    return sorted(_REGISTRY)


def get_variant(name: str) -> type:
    """The class registered under `name`; a ConfigError lists the known names otherwise."""
    _load_builtin_and_plugins()
    if name not in _REGISTRY:
        from synthsae.config import ConfigError

        raise ConfigError(f"sae.variant = {name!r}: unknown; known variants are {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_sae(cfg, d_in: int, init_seeds: list[int], device=None, dtype=None):
    """A freshly initialised SAE of cfg.variant with one seed per entry of init_seeds."""
    import torch

    cls = get_variant(cfg.variant)
    return cls(cfg, d_in, list(init_seeds), device=device, dtype=dtype or torch.float32)

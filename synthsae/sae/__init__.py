"""SAE variants behind one registry. Every variant carries a leading seed axis S on all parameters.

A variant outside the package registers itself with `@register_variant("name")` on a subclass of the base
class, or through the entry-point group `synthsae.variants` (name = "module:Class"). Plug-ins are loaded lazily
and one at a time: a broken one is named in one warning line and skipped, and only using it by name fails.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

_REGISTRY: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # plug-in name -> one-line reason it could not be used
_WARNED: set[str] = set()
T = TypeVar("T", bound=type)


def register_variant(name: str) -> Callable[[T], T]:
    """Class decorator: make `name` a trainable, analysable variant."""

    def deco(cls: T) -> T:
        cls.variant = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return deco


def _builtins() -> None:
    from synthsae.sae import variants  # noqa: F401  (registers the shipped variants)


def _plugin_entry_points() -> dict:
    """name -> entry point of every `synthsae.variants` plug-in not shadowed by a registered name (nothing loaded)."""
    from importlib.metadata import entry_points

    _builtins()
    return {ep.name: ep for ep in entry_points(group="synthsae.variants") if ep.name not in _REGISTRY}


def _package(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"package {dist.name!r}" if dist is not None and getattr(dist, "name", None) else f"entry point {ep.value!r}"


def _load_plugin(name: str, ep) -> type | None:
    """Import one plug-in and check it is an SAE class; on failure remember a one-line reason and return None."""
    from synthsae.sae.base import SAE

    if name in _BROKEN:
        return None
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party import is that plug-in's, not ours
        _BROKEN[name] = f"{_package(ep)} ({ep.value}) failed to import: {type(exc).__name__}: {_first_line(exc)}"
        return None
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        _BROKEN[name] = f"{_package(ep)} ({ep.value}) is not an SAE class (a subclass of synthsae.sae.base.SAE)"
        return None
    cls.variant = name  # type: ignore[attr-defined]
    _REGISTRY[name] = cls
    return cls


def _first_line(exc: BaseException) -> str:
    s = str(exc)
    return s.splitlines()[0] if s else ""


def _warn(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        print(f"warning: plug-in variant {name!r} skipped: {_BROKEN[name]}", file=sys.stderr)


def registered_variants() -> list[str]:
    """Names of every usable variant, shipped and plug-in (each plug-in loaded once; broken ones warned and left out)."""
    for name, ep in _plugin_entry_points().items():
        if _load_plugin(name, ep) is None:
            _warn(name)
    return sorted(_REGISTRY)


def known_names() -> list[str]:
    """Every registered and declared variant name, without importing any plug-in (for error messages, CLI help)."""
    declared = _plugin_entry_points()  # imports the shipped variants first, so they are in _REGISTRY below
    return sorted(set(_REGISTRY) | set(declared) - set(_BROKEN))


def get_variant(name: str) -> type:
    """The class registered under `name` (a plug-in is imported only now); a one-line ConfigError otherwise."""
    from synthsae.errors import ConfigError

    _builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _plugin_entry_points()
    if name in eps:
        cls = _load_plugin(name, eps[name])
        if cls is not None:
            return cls
    if name in _BROKEN:
        raise ConfigError(f"sae.variant = {name!r}: the plug-in cannot be used: {_BROKEN[name]}")
    raise ConfigError(f"sae.variant = {name!r}: unknown; known variants are {', '.join(known_names())}")


def check_variant_config(cfg, prefix: str = "sae") -> None:
    """The variant's own config rules (`check_config` of its class); a plug-in's check failing with anything but a
    ConfigError is a one-line ConfigError naming the plug-in."""
    from synthsae.errors import ConfigError

    cls = get_variant(cfg.variant)
    if not is_plugin(cfg.variant):
        cls.check_config(cfg, prefix)
        return
    try:
        cls.check_config(cfg, prefix)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party check: its failure is named, not a traceback
        raise ConfigError(f"{prefix}.variant = {cfg.variant!r}: plug-in class {cls.__module__}.{cls.__qualname__} "
                          f"failed to check its config: {type(exc).__name__}: {_first_line(exc)}") from None


def saelens_architectures() -> dict[str, str]:
    """SAELens architecture -> our variant, for folders SAELens wrote itself (no metadata.variant): the names each
    registered class lists in its own `saelens_reads` (not inherited; the first class to claim a name keeps it).
    Plug-ins not imported yet are not imported for this."""
    _builtins()
    out: dict[str, str] = {}
    for name, cls in _REGISTRY.items():
        for arch in vars(cls).get("saelens_reads", ()):
            out.setdefault(arch, name)
    return dict(sorted(out.items()))


def is_plugin(name: str) -> bool:
    from synthsae.sae import variants as _v  # noqa: F401

    cls = _REGISTRY.get(name)
    return cls is not None and not cls.__module__.startswith("synthsae.")


def build_sae(cfg, d_in: int, init_seeds: list[int], device=None, dtype=None):
    """A freshly initialised SAE of cfg.variant with one seed per entry of init_seeds.

    A plug-in whose constructor raises (or returns something that is not an SAE) is a one-line ConfigError naming
    the plug-in; the shipped variants' own errors pass through unchanged.
    """
    import torch

    from synthsae.sae.base import SAE

    cls = get_variant(cfg.variant)
    if not is_plugin(cfg.variant):
        return cls(cfg, d_in, list(init_seeds), device=device, dtype=dtype or torch.float32)
    where = f"sae.variant = {cfg.variant!r}: plug-in class {cls.__module__}.{cls.__qualname__}"
    try:
        sae = cls(cfg, d_in, list(init_seeds), device=device, dtype=dtype or torch.float32)
    except Exception as exc:  # noqa: BLE001 - a third-party constructor: its failure is named, not a traceback
        from synthsae.errors import ConfigError

        raise ConfigError(f"{where} failed to build: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(sae, SAE):
        from synthsae.errors import ConfigError

        raise ConfigError(f"{where} built a {type(sae).__name__}, not an SAE")
    return sae

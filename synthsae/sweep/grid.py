"""A sweep's grid: parse GRID.toml or a preset, check every field, expand the axes into cells with stable ids.

A grid is a base (a truth preset for synthetic cells, a real preset for real ones), a few fixed settings and
axes; every combination of axis values is one cell, an ordinary run folder under OUT/cells/<cell id>. The id is
built from the axis values alone (in a fixed axis order), so adding a value to an axis leaves every existing
cell's id, hence its folder, unchanged.
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from synthsae.config import ConfigError

KINDS = ("synthetic", "real")
AXES = {  # allowed axes per kind, in the order they appear in a cell id
    "synthetic": ("truth", "width", "d_sae", "l0", "variant", "seeds"),
    "real": ("model", "layer", "width", "d_sae", "k", "variant", "seeds"),
}
SETTINGS = {  # fixed settings per kind (scalars, applied to every cell)
    "synthetic": ("steps", "batch_size", "eval_tokens", "pool_refit_steps", "max_probes", "l0_tolerance"),
    "real": ("tokens", "eval_tokens", "passes", "batch_size", "ctx_len", "lr", "pool_refit_steps", "splice_contexts",
             "trigger_tokens", "device", "pool_rules", "corpus"),
}
TOP = ("name", "kind", "base", "axes", "settings")


@dataclass(frozen=True)
class Grid:
    """What a sweep trains: kind, base preset, fixed settings and the axes: a list of blocks (name -> values), each
    block a product of its axes, the grid their union (e.g. widths at one layer plus layers at one width)."""

    name: str
    kind: str
    base: str
    axes: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One combination of axis values; `id` is also its folder name under OUT/cells/."""

    id: str
    values: dict


def _tag(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    s = str(v)
    if "/" in s or "\\" in s:  # a model path: its folder name and a short hash of the whole path
        import hashlib

        s = f"{Path(s).name}-{hashlib.sha256(s.encode()).hexdigest()[:6]}"
    return s.replace(" ", "_")


def cell_id(kind: str, values: dict) -> str:
    """'width-2x_variant-topk_...' from the axis values in the fixed axis order (stable under new axis values)."""
    parts = []
    for name in AXES[kind]:
        if name in values:
            v = values[name]
            parts.append(f"{name}-{_tag(v)}{'x' if name == 'width' else ''}")
    return "_".join(parts)


def cells(grid: Grid) -> list[Cell]:
    """Every combination of axis values of each block, in axis order (the first axis varies slowest); a cell in two
    blocks is listed once."""
    out: dict[str, Cell] = {}
    for block in grid.axes:
        names = [n for n in AXES[grid.kind] if n in block]
        for combo in itertools.product(*(block[n] for n in names)):
            values = dict(zip(names, combo))
            out.setdefault(cell_id(grid.kind, values), Cell(cell_id(grid.kind, values), values))
    return list(out.values())


def _fail(field_: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{field_} = {value!r}: {allowed}")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_grid(grid: Grid) -> Grid:
    """Raise a one-line ConfigError naming the first bad field and its allowed values."""
    from synthsae.sae import registered_variants

    if grid.kind not in KINDS:
        raise _fail("kind", grid.kind, f"must be one of {', '.join(KINDS)}")
    if grid.kind == "synthetic":
        from synthsae.config import PRESETS

        if grid.base not in PRESETS:
            raise _fail("base", grid.base, f"must be a truth preset: {', '.join(PRESETS)}")
    else:
        from real.config import PRESETS as RP

        if grid.base not in RP:
            raise _fail("base", grid.base, f"must be a real preset: {', '.join(RP)}")
    allowed = AXES[grid.kind]
    if not isinstance(grid.axes, list) or not grid.axes or not all(isinstance(b, dict) and b for b in grid.axes):
        raise _fail("axes", grid.axes, "must be a table of axes ([axes]) or a list of them ([[axes]]), none empty")
    for name, vals in ((n, v) for b in grid.axes for n, v in b.items()):
        if name not in allowed:
            raise _fail(f"axes.{name}", vals, f"unknown axis for a {grid.kind} grid; allowed axes are {', '.join(allowed)}")
        if not isinstance(vals, list) or not vals:
            raise _fail(f"axes.{name}", vals, "must be a non-empty list")
        if len(set(map(_tag, vals))) != len(vals):
            raise _fail(f"axes.{name}", vals, "must not repeat a value")
        for v in vals:
            if name == "variant":
                if v not in registered_variants():
                    raise _fail("axes.variant", v, f"must be one of {', '.join(registered_variants())}")
            elif name == "truth":
                from synthsae.config import PRESETS

                if v not in PRESETS:
                    raise _fail("axes.truth", v, f"must be a truth preset: {', '.join(PRESETS)}")
            elif name == "model":
                if not isinstance(v, str) or not v:
                    raise _fail("axes.model", v, "must be a model name or path (a non-empty string)")
            elif name in ("width", "l0"):
                if not _num(v) or v <= 0:
                    raise _fail(f"axes.{name}", v, "must be a number > 0")
            elif name == "layer":
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise _fail("axes.layer", v, "must be an integer >= 0")
            elif name == "seeds":
                if not isinstance(v, int) or isinstance(v, bool) or v < 2:
                    raise _fail("axes.seeds", v, "must be an integer >= 2 (stability compares seeds)")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:  # d_sae, k
                raise _fail(f"axes.{name}", v, "must be an integer >= 1")
    for b in grid.axes:
        if "width" in b and "d_sae" in b:
            raise _fail("axes.d_sae", b["d_sae"], "give either axes.width (a multiple) or axes.d_sae, not both")
    for name, v in grid.settings.items():
        if name not in SETTINGS[grid.kind]:
            raise _fail(f"settings.{name}", v, f"unknown setting; allowed are {', '.join(SETTINGS[grid.kind])}")
        if name == "corpus":
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
                raise _fail("settings.corpus", v, "must be a non-empty list of files or folders (text / jsonl)")
        elif name == "pool_rules":
            from synthsae.pooling import RULES

            if not isinstance(v, list) or not v or any(r not in RULES for r in v):
                raise _fail("settings.pool_rules", v, f"must be a non-empty list of {', '.join(RULES)}")
        elif name == "device":
            if not isinstance(v, str):
                raise _fail("settings.device", v, "must be a device string (auto, cpu, cuda, cuda:N)")
        elif name in ("lr", "l0_tolerance"):
            if not _num(v) or v <= 0:
                raise _fail(f"settings.{name}", v, "must be a number > 0")
        elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(f"settings.{name}", v, "must be an integer >= 1")
    for c in cells(grid):  # every cell's own config must validate too (e.g. k > d_sae)
        from synthsae.sweep.configs import cell_config

        cell_config(grid, c)
    return grid


def from_dict(raw: dict, name: str = "grid") -> Grid:
    """A Grid from a parsed TOML table (validated)."""
    for k in raw:
        if k not in TOP:
            raise _fail(k, raw[k], f"unknown grid field; allowed are {', '.join(TOP)}")
    for k in ("kind", "base", "axes"):
        if k not in raw:
            raise ConfigError(f"{k}: missing; a grid needs kind ({' or '.join(KINDS)}), base and [axes]")
    if "settings" in raw and not isinstance(raw["settings"], dict):
        raise _fail("settings", raw["settings"], "must be a table")
    axes = raw["axes"]
    axes = [axes] if isinstance(axes, dict) else axes
    return validate_grid(Grid(str(raw.get("name", name)), raw["kind"], raw["base"], copy.deepcopy(axes),
                              copy.deepcopy(raw.get("settings", {}))))


def load_grid(path: str | Path) -> Grid:
    """Read and validate GRID.toml (one-line ConfigError on any problem)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"GRID = {str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"GRID = {str(path)!r}: not valid TOML ({e})") from None
    return from_dict(raw, path.stem)


def to_dict(grid: Grid) -> dict:
    return {"name": grid.name, "kind": grid.kind, "base": grid.base, "axes": grid.axes, "settings": grid.settings}


def cell_folder(out: Path, cell) -> Path:
    """A cell's run folder: OUT/cells/<cell id> (the id depends on its axis values only)."""
    return Path(out) / "cells" / cell.id


def cell_finished(folder: Path) -> bool:
    """A cell is done once its run wrote its report and metrics."""
    return (folder / "report.html").is_file() and (folder / "metrics.json").is_file()

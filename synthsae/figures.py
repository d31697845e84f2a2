"""Plain matplotlib (Agg) figure writers used by the report: histogram, scatter, grouped bars.

Each takes arrays and labels, writes one PNG atomically and returns its file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthsae.fileio import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> str:
    """Write `fig` as PNG to `path` atomically, close it, and return the file name (what a report section lists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def histogram(
    path: Path, series: dict[str, np.ndarray], xlabel: str, title: str, bins: int | Sequence[float] = 20,
    vlines: dict[str, float] | None = None,
) -> str:
    """Overlaid histograms (one per named series) with optional labelled vertical lines (cut-offs, nulls)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, values in series.items():
        ax.hist(np.asarray(values).ravel(), bins=bins, alpha=0.6, label=f"{name} (n={np.asarray(values).size})")
    for name, x in (vlines or {}).items():
        ax.axvline(x, ls="--", lw=1, color="k")
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latents")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def scatter(
    path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
    logx: bool = False, annotate: dict[str, tuple[float, float]] | None = None,
) -> str:
    """Scatter of named (x, y) series; optional text labels at points."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, (x, y) in series.items():
        ax.scatter(np.asarray(x).ravel(), np.asarray(y).ravel(), s=10, alpha=0.6, label=name)
    for text, (x, y) in (annotate or {}).items():
        ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def grouped_bars(
    path: Path, groups: list[str], series: dict[str, tuple[list[float], list[float] | None]], ylabel: str, title: str,
    hlines: dict[str, float] | None = None,
) -> str:
    """Bars per group, one bar per named series, with optional error bars (e.g. std over seeds)."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * len(groups) * max(1, len(series))), 3.8))
    n = max(1, len(series))
    width = 0.8 / n
    xs = np.arange(len(groups))
    for i, (name, (vals, errs)) in enumerate(series.items()):
        v = np.array([np.nan if x is None else x for x in vals], dtype=float)
        e = None if errs is None else np.array([0.0 if x is None else x for x in errs], dtype=float)
        ax.bar(xs + (i - (n - 1) / 2) * width, v, width, yerr=e, capsize=2, label=name)
    for name, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="k")
        ax.text(len(groups) - 0.5, y, f"{name} ", fontsize=8, ha="right", va="bottom")
    ax.set_xticks(xs)
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    return save_figure(fig, path)

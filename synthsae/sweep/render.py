"""sweep.json (typed, schema generated from these classes), sweep.md and a self-contained sweep.html: the verdict
map (claims x cells, each cell linking to its report.html) and per claim the trend of its deciding number against
width and against layer, with its null and the spread over seeds."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from synthsae.fileio import atomic_write_json, atomic_write_text
from synthsae.results import doc
from synthsae.serialize import to_json

SCHEMA = "synthsae.sweep/1"
COLOURS = {"held": "#b7e1b0", "partly held": "#f6e3a1", "did not hold": "#f2b1ab", "not measured": "#e4e4e4"}
TREND_AXES = {"width": ("width", "d_sae"), "layer": ("layer",)}


@dataclass
class ClaimCell:
    """One claim in one cell: its verdict (from the cell's own files) and its deciding number."""

    claim: str = doc("the claim's verdict title")
    verdict: str = doc("held / partly held / did not hold / not measured")
    why: str = doc("the verdict's one line of numbers", "")
    value: float | None = doc("the deciding number (null: not measured)", None)
    null: float | None = doc("the same number under its null", None)
    spread: float | None = doc("standard deviation of the deciding number over seeds (null: not available)", None)


@dataclass
class SweepCell:
    """One cell of the grid: its axis values, folder and claims."""

    id: str = doc("cell id, also its folder name under cells/")
    values: dict[str, str] = doc("axis values", factory=dict)
    folder: str = doc("run folder, relative to the sweep folder", "")
    finished: bool = doc("report.html and metrics.json exist", False)
    claims: list[ClaimCell] = doc("every claim the cell was judged on", factory=list)


@dataclass
class TrendPointOut:
    cell: str = doc("cell id")
    x: float = doc("the axis value (width multiple, d_sae or layer)")
    value: float | None = doc("deciding number", None)
    null: float | None = doc("its null", None)
    spread: float | None = doc("std over seeds", None)


@dataclass
class Trend:
    """Does a claim strengthen along an axis, on one line of cells that differ only there (synthsae.sweep.trends)."""

    claim: str = doc("claim key")
    number: str = doc("what the deciding number is")
    axis: str = doc("width or layer")
    line: str = doc("the other axis values shared by the line's cells")
    verdict: str = doc("held / did not hold / not measured")
    why: str = doc("the numbers that decided", "")
    points: list[TrendPointOut] = doc("the line's cells in axis order", factory=list)


@dataclass
class SweepResult:
    """A sweep folder's summary: every cell's verdicts and deciding numbers, and the trends."""

    schema: str = doc("format tag")
    name: str = doc("grid name")
    kind: str = doc("synthetic or real")
    claims: list[str] = doc("claim titles, in map order", factory=list)
    cells: list[SweepCell] = doc("every cell of the grid", factory=list)
    trends: list[Trend] = doc("per claim, axis and line", factory=list)


def sweep_schema() -> dict:
    from synthsae.serialize import json_schema

    return {**json_schema(SweepResult), "title": "synthsae sweep.json"}


def summarize(grid, out: Path) -> SweepResult:
    """Read every cell back from its own files (verdicts and numbers by claim key) and test the trends."""
    from synthsae.sweep.grid import cells
    from synthsae.sweep.numbers import DECIDING, cell_numbers, cell_verdicts
    from synthsae.sweep.grid import cell_finished, cell_folder

    rows, order, nums = [], [], {}
    for c in cells(grid):
        folder = cell_folder(out, c)
        sc = SweepCell(c.id, {k: str(v) for k, v in c.values.items()}, str(folder.relative_to(out)), cell_finished(folder))
        if sc.finished:
            verdicts, nums[c.id] = cell_verdicts(folder, grid.kind), cell_numbers(folder)
            for key, v in verdicts.items():
                if v.title not in order:
                    order.append(v.title)
                n = nums[c.id].get(key)
                sc.claims.append(ClaimCell(v.title, v.verdict, v.why, n.value if n else None, n.null if n else None,
                                           n.spread if n else None))
        rows.append(sc)
    trends = []
    from synthsae.sweep.trends import TrendPoint, trend_rule

    for key, number in DECIDING.items():
        for axis, names in TREND_AXES.items():
            lines: dict[str, list] = {}
            for c in cells(grid):
                ax = next((n for n in names if n in c.values), None)
                if ax is None or c.id not in nums or key not in nums[c.id]:
                    continue
                line = ", ".join(f"{k}={v}" for k, v in c.values.items() if k != ax)
                n = nums[c.id][key]
                lines.setdefault(line, []).append((c.id, float(c.values[ax]), n))
            for line, pts in lines.items():
                if len({p[1] for p in pts}) < 2:
                    continue
                pts.sort(key=lambda p: p[1])
                verdict, why = trend_rule([TrendPoint(x, n.value, n.null, n.spread) for _, x, n in pts])
                trends.append(Trend(key, number, axis, line, verdict, why,
                                    [TrendPointOut(i, x, n.value, n.null, n.spread) for i, x, n in pts]))
    return SweepResult(SCHEMA, grid.name, grid.kind, order, rows, trends)


def _verdict_of(cell: SweepCell, title: str) -> ClaimCell | None:
    return next((c for c in cell.claims if c.claim == title), None)


def _figure(res: SweepResult, key: str, fig_dir: Path) -> str | None:
    """One PNG per claim: the deciding number (error bars: spread over seeds) and its null against width and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthsae.fileio import atomic_path

    ts = [t for t in res.trends if t.claim == key]
    if not ts:
        return None
    axes_used = [a for a in TREND_AXES if any(t.axis == a for t in ts)]
    fig, axs = plt.subplots(1, len(axes_used), figsize=(5 * len(axes_used), 3.6), squeeze=False)
    for ax, name in zip(axs[0], axes_used):
        for t in (t for t in ts if t.axis == name):
            x = [p.x for p in t.points]
            y = [p.value if p.value is not None else float("nan") for p in t.points]
            e = [p.spread or 0.0 for p in t.points]
            line = ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"{t.line} ({t.verdict})")
            ax.plot(x, [p.null if p.null is not None else float("nan") for p in t.points], "--",
                    color=line[0].get_color(), alpha=0.6)
        ax.set_xlabel(name + (" (log scale)" if name == "width" else ""))
        if name == "width":
            ax.set_xscale("log", base=2)
        ax.set_ylabel(ts[0].number)
        ax.legend(fontsize=6)
    fig.suptitle(f"{key}: deciding number (solid, ± seeds' std) and its null (dashed)", fontsize=9)
    path = fig_dir / f"trend_{key}.png"
    fig_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _md(res: SweepResult, figs: dict[str, str]) -> str:
    lines = [f"# synthsae sweep: {res.name}", "",
             f"{len(res.cells)} cells ({sum(c.finished for c in res.cells)} finished), {res.kind}. Verdicts come from "
             "each cell's own metrics.json; trends: docs/sweep.md.", "", "## Verdict map", ""]
    lines.append("| claim | " + " | ".join(f"[{c.id}]({c.folder}/report.html)" for c in res.cells) + " |")
    lines.append("|---" * (len(res.cells) + 1) + "|")
    for title in res.claims:
        row = [(_verdict_of(c, title).verdict if _verdict_of(c, title) else "not measured") for c in res.cells]
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    lines += ["", "## Trends", ""]
    lines.append("| claim | number | axis | line | verdict | why |")
    lines.append("|---|---|---|---|---|---|")
    for t in res.trends:
        lines.append(f"| {t.claim} | {t.number} | {t.axis} | {t.line} | {t.verdict} | {t.why} |")
    for key, f in figs.items():
        lines += ["", f"![{key}](figures/{f})"]
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #bbb;padding:3px 6px}a{color:inherit}")


def _html(res: SweepResult, figs: dict[str, str], fig_dir: Path) -> str:
    e = html.escape
    p = ["<!DOCTYPE html>", f"<html lang='en'><head><meta charset='utf-8'><title>sweep {e(res.name)}</title>"
         f"<style>{_CSS}</style></head><body>", f"<h1>synthsae sweep: {e(res.name)}</h1>",
         f"<p>{len(res.cells)} cells ({sum(c.finished for c in res.cells)} finished), {e(res.kind)}. Each verdict is the "
         "cell's own (from its metrics.json); click a cell for its report.</p>", "<h2>Verdict map</h2><table><tr><th>claim</th>"]
    p += [f"<th><a href='{e(c.folder)}/report.html'>{e(c.id)}</a></th>" for c in res.cells]
    p.append("</tr>")
    for title in res.claims:
        p.append(f"<tr><th>{e(title)}</th>")
        for c in res.cells:
            v = _verdict_of(c, title)
            verdict = v.verdict if v else "not measured"
            tip = e(v.why) if v else ""
            p.append(f"<td class='v' data-verdict='{e(verdict)}' style='background:{COLOURS.get(verdict, '#fff')}' "
                     f"title='{tip}'><a href='{e(c.folder)}/report.html'>{e(verdict)}</a></td>")
        p.append("</tr>")
    p.append("</table><h2>Trends</h2><table><tr><th>claim</th><th>number</th><th>axis</th><th>line</th><th>verdict</th>"
             "<th>why</th></tr>")
    for t in res.trends:
        p.append(f"<tr><td>{e(t.claim)}</td><td>{e(t.number)}</td><td>{e(t.axis)}</td><td>{e(t.line)}</td>"
                 f"<td style='background:{COLOURS.get(t.verdict, '#fff')}'>{e(t.verdict)}</td><td>{e(t.why)}</td></tr>")
    p.append("</table>")
    for key, f in figs.items():
        data = base64.b64encode((fig_dir / f).read_bytes()).decode("ascii")
        p.append(f"<figure><img alt='{e(key)}' src='data:image/png;base64,{data}'></figure>")
    p.append("</body></html>")
    return "\n".join(p)


def write_sweep(grid, out: str | Path) -> SweepResult:
    """sweep.json, sweep.md, figures/trend_<claim>.png and sweep.html of a sweep folder (atomic writes)."""
    from synthsae.sweep.numbers import DECIDING

    out = Path(out)
    res = summarize(grid, out)
    fig_dir = out / "figures"
    figs = {k: f for k in DECIDING if (f := _figure(res, k, fig_dir))}
    atomic_write_json(out / "sweep.json", to_json(res))
    atomic_write_text(out / "sweep.md", _md(res, figs))
    atomic_write_text(out / "sweep.html", _html(res, figs, fig_dir))
    return res

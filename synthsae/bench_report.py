"""The bench's leaderboard: leaderboard.md, a sortable leaderboard.html and the Pareto figure (stability vs EV).

Only lays out the rows that bench.py measured; every number shown is read from a cell's bench.json.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from synthsae.fileio import atomic_write_text
from synthsae.report_render import fmt

COLUMNS = [  # (header, key in a leaderboard row, digits)
    ("variant", "name", None),
    ("kind", "kind", None),
    ("width", "width", None),
    ("L0 target", "l0_target", 1),
    ("L0 reached", "l0", 2),
    ("EV", "ev", 3),
    ("dead", "dead_fraction", 3),
    ("atom MCC", "mcc", 3),
    ("MCC chance", "mcc_chance", 3),
    ("atoms cos>=0.9", "atom_recovery", 3),
    ("atoms chance", "atom_recovery_chance", 3),
    ("subspace rec. orthogonal", "subspace_recovery_orthogonal", 3),
    ("subspace rec. superposed", "subspace_recovery_superposed", 3),
    ("stability maxcos", "stability", 3),
    ("maxcos null", "stability_null", 3),
    ("stability strict", "stability_strict", 3),
    ("strict null", "stability_strict_null", 3),
    ("group stability", "group_stability", 3),
    ("group null", "group_stability_null", 3),
    ("pooled stability", "pooled_stability", 3),
    ("stability AUROC for true latents", "truth_auroc", 3),
    ("AUROC null", "truth_auroc_null", 3),
    ("stable: precision", "truth_precision", 3),
    ("stable: recall", "truth_recall", 3),
    ("true base rate", "truth_base_rate", 3),
    ("stable share ± at S-1 seeds", "seed_budget_within", 3),
    ("seeds for ±0.05", "seed_budget_n", None),
    ("tokens x seeds / s", "throughput", 0),
    ("wall s", "wall_seconds", 1),
]

NOTES = """\
- **variant** rows: S seeds of one registered variant at the L0 target (TopK family: k = target; L1 / JumpReLU:
  penalty calibrated on one-seed probes, the calibration's probes and the reached L0 are in the cell's
  calibration.json). EV = 1 - FVU, L0 and dead fraction (never fired) on held-out samples, mean over seeds.
- **atom MCC**: SynthSAEBench's definition (Hungarian one-to-one matching on |cos| between decoder rows and
  planted atoms, mean over matched pairs), mean over seeds; chance = a Gaussian random dictionary of the same shape.
- **atoms cos>=0.9**, **subspace recovery**, **stability** (maxcos and strict, live latents, tau from the config)
  and their nulls are what `synthsae analyze` reports for the cell's run folder.
- **stability** is over live latents; its **null** is the rotated-seeds null (every seed's dictionary turned
  by its own random rotation, then matched the same way). **dead**: never fired on the analysis' held-out sample.
- **group stability** (group variants only, e.g. blocktopk; '-' for the others): a group variant's features are
  its groups, whose latents may turn freely inside the group's span, so its stability is per group: the fraction
  of other seeds with a group spanning the same space (overlap ||U_g^T U_h||^2 / max(r_g, r_h) >= 0.9, as
  `synthsae atlas`), over live groups; null: the same for the rotated seeds. Its latent-level columns are shown too.
- **stability AUROC for true latents** (synthetic truths): how well a latent's stability ranks true latents (cos >=
  0.9 to a planted atom or squared projection >= 0.9 into a planted block) above the other live latents; **AUROC
  null**: the same for the rotated-seeds null's stability (about 0.5); **stable: precision / recall**: "stability
  >= the stable cut-off" as a detector of true latents, beside the **true base rate** (the precision of keeping
  every live latent). Says how far a variant's stability can be trusted as a filter (docs/metrics.md).
- **stable share ± at S-1 seeds**: 95% of the subsets of S-1 seeds give a stable share within ± this of all S
  seeds'; **seeds for ±0.05**: the smallest n from which every n < S is within ±0.05 ('-': none; docs/metrics.md).
- **pooled stability**: stability between the two primary pooled SAEs (config `analysis.pool_primary`, at the
  variant's width) built from disjoint halves of the seeds.
- **baseline** rows (not variants): *pooled* = the primary pooled SAE of all seeds (its stability: pool of half A
  vs pool of half B, null: against a rotated partner); the single SAE at the pooled width is the variant row
  itself; *bagging* = a half's dictionaries concatenated (the mean of their reconstructions), stability between
  the two halves' bags; *wide* = one SAE of the same variant as wide as a bag, trained at the same L0 target
  (stability between its seeds). Throughput and wall time of baselines: '-' (no training) or their own run.
- **matched compute** (`--matched-compute`): a half of the seeds costs S / 2 trainings at the base width. The *wide*
  baseline (S / 2 = 2 times wider, same steps) and the *long* baseline (base width, S / 2 times the steps) spend the
  same training compute in one SAE; each has 2 seeds, one standing for each half, so its stability is between
  disjoint halves' compute as the pooled SAE's and bagging's are. EV at the same L0 target and truth recovery
  (MCC, atoms) in the same columns.
"""


def leaderboard_rows(rows: list[dict]) -> list[dict]:
    """Flatten cells into table rows: one per variant plus its baselines (bagging, pooled, wide single SAE)."""
    out = []
    for r in rows:
        base = {"preset": r["preset"], "l0_target": r["l0_target"], "variant": r["variant"]}
        if r.get("wide"):
            out.append({**r, **base, "name": f"{r['variant']} wide", "kind": "baseline: single SAE at bag width",
                        "width": r["d_sae"], "pooled_stability": None})
            continue
        if r.get("long"):
            out.append({**r, **base, "name": f"{r['variant']} long", "kind": "baseline: single SAE, a half's compute in steps",
                        "width": r["d_sae"], "pooled_stability": None})
            continue
        out.append({**r, **base, "name": r["variant"], "kind": "variant", "width": r["d_sae"]})
        for key, label in (("bagging", "baseline: bagging"), ("pooled", "baseline: pooled SAE")):
            b = r.get(key)
            if b:
                out.append({**base, "name": f"{r['variant']} {key}", "kind": label, **b,
                            "wall_seconds": b.get("seconds")})
    return out


def groups(rows: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """Table rows by (preset, L0 target): variants by EV, then each variant's baselines."""
    by: dict[tuple[str, float], list[dict]] = {}
    for r in leaderboard_rows(rows):
        by.setdefault((r["preset"], r["l0_target"]), []).append(r)
    for key in by:
        by[key].sort(key=lambda r: (r["kind"] != "variant", r["variant"] if r["kind"] != "variant" else "",
                                    -(r.get("ev") or 0.0)))
    return dict(sorted(by.items()))


def cell_text(r: dict, key: str, digits: int | None) -> str:
    v = r.get(key)
    if digits is None:
        return "-" if v is None else str(v)
    if isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    return fmt(v, digits)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (EV, stability) (both higher is better), in EV order."""
    idx = [i for i, (x, y) in enumerate(points)
           if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(idx, key=lambda i: points[i][0])


def pareto_figure(path: Path, grouped: dict[tuple[str, float], list[dict]]) -> str:
    """One panel per (preset, L0): stability (maxcos) against EV; variants filled, baselines hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthsae.figures import save_figure

    n = max(len(grouped), 1)
    cols = min(n, 3)
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.8 * rows_n), squeeze=False)
    for ax, ((pre, l0), rs) in zip(axes.flat, grouped.items()):
        var = [r for r in rs if r["kind"] == "variant" and r.get("ev") is not None and r.get("stability") is not None]
        bas = [r for r in rs if r["kind"] != "variant" and r.get("ev") is not None and r.get("stability") is not None]
        for r in var:
            ax.scatter(r["ev"], r["stability"], s=36, zorder=3)
            ax.annotate(r["name"], (r["ev"], r["stability"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for r in bas:
            ax.scatter(r["ev"], r["stability"], s=30, facecolors="none", edgecolors="grey", zorder=2)
            ax.annotate(r["name"], (r["ev"], r["stability"]), fontsize=6, color="grey", xytext=(3, -8),
                        textcoords="offset points")
        front = pareto_front([(r["ev"], r["stability"]) for r in var])
        if len(front) > 1:
            ax.plot([var[i]["ev"] for i in front], [var[i]["stability"] for i in front], "k--", lw=0.8, zorder=1)
        ax.set_title(f"{pre}, L0 {l0:g}", fontsize=9)
        ax.set_xlabel("EV (held-out)")
        ax.set_ylabel("latent stability (maxcos)")
    for ax in list(axes.flat)[len(grouped):]:
        ax.axis("off")
    fig.suptitle("variants (filled; dashed = Pareto front) and baselines (hollow)", fontsize=9)
    return save_figure(fig, path)


def render_md(grouped, suite_name: str, figure: str) -> str:
    lines = [f"# SAE variant leaderboard (suite `{suite_name}`)", "", NOTES, f"![Pareto: stability vs EV](figures/{figure})", ""]
    heads = [h for h, _, _ in COLUMNS]
    for (pre, l0), rs in grouped.items():
        lines += [f"## {pre}, L0 target {l0:g}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in rs:
            lines.append("| " + " | ".join(cell_text(r, k, d) for _, k, d in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


_SORT_JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th);
const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const b=t.tBodies[0];
const key=r=>{const s=r.children[i].textContent.trim();const v=parseFloat(s);return isNaN(v)?(s==='-'?-Infinity:s):v;};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a>c?1:a<c?-1:0)*(asc?1:-1);}).forEach(r=>b.appendChild(r));}
"""


def render_html(grouped, suite_name: str, figure_png: bytes) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>SAE variant leaderboard ({esc(suite_name)})</title>",
        "<style>body{font-family:sans-serif;max-width:1500px;margin:auto}table{border-collapse:collapse;font-size:12px}"
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{cursor:pointer;background:#f3f3f3}"
        "td:first-child,td:nth-child(2){text-align:left}tr.baseline{color:#666;font-style:italic}</style>",
        f"<script>{_SORT_JS}</script></head><body>",
        f"<h1>SAE variant leaderboard (suite <code>{esc(suite_name)}</code>)</h1>",
        "<p>Click a column header to sort.</p>",
        "<ul>" + "".join(f"<li>{esc(line[2:])}</li>" for line in _note_items()) + "</ul>",
        f"<img alt='Pareto: stability vs EV' src='data:image/png;base64,{base64.b64encode(figure_png).decode()}'>",
    ]
    for (pre, l0), rs in grouped.items():
        parts.append(f"<h2>{esc(pre)}, L0 target {l0:g}</h2><table class='leaderboard'><thead><tr>")
        parts += [f"<th onclick='sortTable(this)'>{esc(h)}</th>" for h, _, _ in COLUMNS]
        parts.append("</tr></thead><tbody>")
        for r in rs:
            cls = "variant" if r["kind"] == "variant" else "baseline"
            parts.append(f"<tr class='{cls}'>" + "".join(f"<td>{esc(cell_text(r, k, d))}</td>" for _, k, d in COLUMNS)
                         + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _note_items() -> list[str]:
    items, cur = [], ""
    for line in NOTES.splitlines():
        if line.startswith("- "):
            if cur:
                items.append(cur)
            cur = line
        else:
            cur += " " + line.strip()
    if cur:
        items.append(cur)
    return [i.replace("**", "").replace("*", "").replace("`", "") for i in items]


def write_leaderboard(out: Path, rows: list[dict], suite) -> tuple[Path, Path]:
    """Write leaderboard.md, leaderboard.html and figures/pareto.png under `out` (atomically)."""
    grouped = groups(rows)
    fig = pareto_figure(out / "figures" / "pareto.png", grouped)
    md, page = out / "leaderboard.md", out / "leaderboard.html"
    atomic_write_text(md, render_md(grouped, suite.name, fig))
    atomic_write_text(page, render_html(grouped, suite.name, (out / "figures" / fig).read_bytes()))
    return md, page

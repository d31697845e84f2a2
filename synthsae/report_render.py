"""Render report sections to report.md and a self-contained report.html (figures embedded as base64 PNG).

A section states a claim, shows numbers beside their chance baselines and says whether the claim held.
This module only lays out; what goes into each section is decided in report.py.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from synthsae.fileio import atomic_write_text
from synthsae.results import Verdict

VERDICTS = ("held", "partly held", "did not hold", "not measured")


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    claim: str
    verdict: str  # one of VERDICTS
    why: str  # one line: the numbers behind the verdict
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # file names under figures/

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: must be one of {', '.join(VERDICTS)}")


def verdict_section(v: Verdict) -> Section:
    """A section holding the verdict, its rule and a table of its checks (figures and tables added by the caller)."""
    sec = Section(v.title, v.claim, v.verdict, v.why, paragraphs=[f"Rule: {v.rule}."] if v.checks else [])
    if v.checks:
        sec.tables.append(Table(["check", "core", "passed", "numbers"],
                                [[c.name, "core" if c.core else "supporting", "yes" if c.passed else "NO", c.detail]
                                 for c in v.checks], "Checks of the rule"))
    return sec


def fmt(x: float | int | None, digits: int = 3) -> str:
    """A number for a table: fixed digits, '-' for missing / NaN."""
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if x != x:  # NaN
        return "-"
    return f"{x:.{digits}f}"


def pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    """'mean ± std' (the spread over seeds)."""
    if std is None or std != std:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def _md_table(t: Table) -> str:
    lines = []
    if t.caption:
        lines.append(f"*{t.caption}*\n")
    lines.append("| " + " | ".join(t.headers) + " |")
    lines.append("|" + "|".join("---" for _ in t.headers) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in t.rows]
    return "\n".join(lines)


def render_markdown(title: str, summary: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    out += summary + [""]
    out.append("| claim | verdict | numbers |")
    out.append("|---|---|---|")
    out += [f"| {s.title} | **{s.verdict}** | {s.why} |" for s in sections]
    out.append("")
    for s in sections:
        out += [f"## {s.title}", "", f"**Claim.** {s.claim}", "", f"**Verdict: {s.verdict}.** {s.why}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for t in s.tables:
            out += [_md_table(t), ""]
        for f in s.figures:
            out += [f"![{f}](figures/{f})", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
.held{color:#11772d}.partly-held{color:#a86b00}.did-not-hold{color:#b3261e}.not-measured{color:#666}
.claim{background:#f7f7fb;border-left:4px solid #88a;padding:.4em .8em}caption{font-style:italic;text-align:left}
"""


def _html_table(t: Table) -> str:
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t.rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, summary: list[str], sections: list[Section], figures_dir: Path) -> str:
    """One file with every figure inlined, so it can be mailed or opened anywhere."""
    v = lambda s: s.verdict.replace(" ", "-")  # noqa: E731
    parts = [
        "<!DOCTYPE html>",
        f"<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(p)}</p>" for p in summary]
    rows = [[s.title, s.verdict, s.why] for s in sections]
    parts.append(_html_table(Table(["claim", "verdict", "numbers"], rows)))
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.append(f"<p class='claim'><b>Claim.</b> {html.escape(s.claim)}</p>")
        parts.append(f"<p><b class='{v(s)}'>Verdict: {html.escape(s.verdict)}.</b> {html.escape(s.why)}</p>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        parts += [_html_table(t) for t in s.tables]
        for f in s.figures:
            data = base64.b64encode((figures_dir / f).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(f)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Path, title: str, summary: list[str], sections: list[Section]) -> tuple[Path, Path]:
    """Write report.md and report.html into out_dir (figures must already be in out_dir/figures)."""
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, render_markdown(title, summary, sections))
    atomic_write_text(page, render_html(title, summary, sections, out_dir / "figures"))
    return md, page

"""Claims by key: each claim is registered once with its title, claim text, rule (typed results -> Verdict) and
report-section builder, so reports, terminal summaries, compare and the sweep look claims up by name, never by
position in a list.

`run` below is a run's typed results: a `synthsae.metrics_file.Metrics` (or the real side's extension of it, which
adds what real runs measure). Shared claims register where their sections are built (synthsae.report,
synthsae.report_questions); the real-only ones in real.report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from synthsae.results import Verdict

# report order of the shared claims
ANALYSIS_CLAIMS = ("stability", "frequency", "recovery", "clusters", "ablation", "pooling")
QUESTION_CLAIMS = ("truth_filter", "seed_budget", "seed_modes")
REPORT_CLAIMS = ANALYSIS_CLAIMS + QUESTION_CLAIMS + ("atlas",)
SUMMARY_CLAIMS = ANALYSIS_CLAIMS + QUESTION_CLAIMS  # `synthsae report`'s terminal table and report.verdicts


@dataclass(frozen=True)
class Claim:
    """One claim: its key, section title and claim text, its rule and its report section."""

    key: str
    title: str
    claim: str
    rule: Callable[[Any], Verdict]  # run -> Verdict (rules only: no files, no figures)
    section: Optional[Callable[[Verdict, Any, dict, Path], Any]] = None  # (verdict, run, per-latent arrays, figure dir) -> Section
    shown: Optional[Callable[[Any], bool]] = None  # whether reports list it for this run (None: always)


REGISTRY: dict[str, Claim] = {}


def register(key: str, text: tuple[str, str], rule: Callable[[Any], Verdict], section=None, shown=None) -> Claim:
    """Register a claim under `key` (text: its (title, claim)); a second, different registration of a key is an error."""
    c = Claim(key, text[0], text[1], rule, section, shown)
    old = REGISTRY.get(key)
    if old is not None and (old.title, old.claim) != (c.title, c.claim):
        raise ValueError(f"claim {key!r} is already registered as {old.title!r}")
    REGISTRY[key] = c
    return c


def claim(key: str) -> Claim:
    """The claim registered under `key`; KeyError (one line, the registered keys) when there is none."""
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown claim {key!r}; registered: {', '.join(REGISTRY) or 'none'} (shared claims register "
                       "when synthsae.report is imported, real-only ones with real.report)") from None


def shown_keys(run, keys: Iterable[str]) -> list[str]:
    """The keys, in order, whose claim applies to this run (e.g. truth_filter only with a planted truth)."""
    return [k for k in keys if claim(k).shown is None or claim(k).shown(run)]


def claim_verdicts(run, keys: Iterable[str]) -> dict[str, Verdict]:
    """key -> the claim's verdict for this run, in the order of `keys` (rules only, no figures drawn)."""
    return {k: claim(k).rule(run) for k in keys}


def claim_sections(run, keys: Iterable[str], lat: dict, fig_dir: Path, builders: dict | None = None) -> list:
    """One report section per key: its verdict laid out by its registered builder (or `builders[key]`, a report's
    own layout of a shared claim)."""
    out = []
    for k, v in claim_verdicts(run, keys).items():
        build = (builders or {}).get(k) or claim(k).section
        if build is None:
            raise ValueError(f"claim {k!r} has no report section registered")
        out.append(build(v, run, lat, fig_dir))
    return out

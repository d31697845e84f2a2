"""The claims registry: a new metric with a verdict is one small result, one rule and one registration, and it then
shows up in verdict lookups and report sections by key; an unknown key is a one-line error naming the known ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import synthsae.report  # noqa: F401  (registers the shared claims)
from synthsae import claims
from synthsae.claims import ANALYSIS_CLAIMS, REPORT_CLAIMS, claim, claim_sections, claim_verdicts, register, shown_keys
from synthsae.metrics_file import Metrics
from synthsae.report_render import Section, render_markdown
from synthsae.results import Chance, Check, Verdict
from synthsae.verdicts import above, decide

# ---------------------------------------------------------------- a toy metric, all of it in this test


@dataclass
class ToyResult:
    """The toy metric: a number beside its null."""

    score: Chance


@dataclass
class ToyRun(Metrics):
    toy: ToyResult | None = None


TOY = ("Toy claim", "The toy score beats its null by 0.1.")


def toy_verdict(run) -> Verdict:
    if run.toy is None:
        return Verdict(*TOY, "-", "not measured", "no toy result", [])
    checks = [Check("score above the null", above(run.toy.score, 0.1), True, f"{run.toy.score.value} vs {run.toy.score.baseline}")]
    return Verdict(*TOY, "core: score >= null + 0.1", decide(checks), f"score {run.toy.score.value}", checks)


def toy_section(v: Verdict, run, lat: dict, fig_dir: Path) -> Section:
    return Section(v.title, v.claim, v.verdict, v.why, paragraphs=[f"Rule: {v.rule}."])


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (the toy claim never leaks into other tests)."""
    monkeypatch.setattr(claims, "REGISTRY", dict(claims.REGISTRY))
    return claims.REGISTRY


def test_a_registered_toy_metric_is_looked_up_by_key_in_verdicts_and_the_report(registry, tmp_path: Path) -> None:
    register("toy", TOY, toy_verdict, toy_section)
    run = ToyRun(toy=ToyResult(Chance(0.9, 0.2)))
    vs = claim_verdicts(run, [*ANALYSIS_CLAIMS, "toy"])
    assert list(vs) == [*ANALYSIS_CLAIMS, "toy"]
    assert vs["toy"].verdict == "held" and vs["toy"].title == "Toy claim"
    assert vs["stability"].verdict == "not measured"  # the shared claims still answer for this run
    assert claim_verdicts(ToyRun(toy=ToyResult(Chance(0.25, 0.2))), ["toy"])["toy"].verdict == "did not hold"
    assert claim_verdicts(ToyRun(), ["toy"])["toy"].verdict == "not measured"
    secs = claim_sections(run, ["stability", "toy"], {}, tmp_path)
    assert [s.title for s in secs] == [claim("stability").title, "Toy claim"]
    md = render_markdown("t", [], secs)
    assert "| Toy claim | **held** | score 0.9 |" in md and "Rule: core: score >= null + 0.1." in md


def test_unknown_claim_is_a_clear_error(registry) -> None:
    with pytest.raises(KeyError, match=r"unknown claim 'nope'; registered: stability, frequency"):
        claim("nope")
    with pytest.raises(KeyError, match="unknown claim 'nope'"):
        claim_verdicts(Metrics(), ["stability", "nope"])


def test_a_key_registers_once(registry) -> None:
    register("toy", TOY, toy_verdict)
    register("toy", TOY, toy_verdict)  # the same claim again (a re-imported module) is fine
    with pytest.raises(ValueError, match="claim 'stability' is already registered"):
        register("stability", TOY, toy_verdict)


def test_every_report_key_is_registered_with_its_own_title() -> None:
    pytest.importorskip("real.report")
    from real.report import REAL_CLAIMS

    keys = set(REPORT_CLAIMS) | set(REAL_CLAIMS)
    assert keys <= set(claims.REGISTRY)
    assert len({claim(k).title for k in keys}) == len(keys)
    m = Metrics()  # no planted truth known, no seed modes, no atlas: what the report lists
    assert shown_keys(m, REPORT_CLAIMS) == [*ANALYSIS_CLAIMS, "truth_filter", "seed_budget"]

"""report.md / report.html of a real run: the shared sections where they apply, plus fidelity, triggers and convergence.

Stability, frequency, unstable clusters, ablation and pooling are the synthetic report's own sections and verdicts
(no truth, so no recovery section; the ablation's prediction cost is the spliced next-token KL); fidelity (CE loss
recovered), triggers and convergence exist only here, with their typed verdicts from real/verdicts.py.
Each section states its rule and its checks, and every rule is tested on a planted case where it must fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from real.triggers import LIVE_FREQ
from real.verdicts import CONVERGENCE, FIDELITY, TRIGGERS, convergence_verdict, fidelity_verdict, triggers_verdict, typed
from synthsae import figures
from synthsae.claims import claim_sections, claim_verdicts, register
from synthsae.metrics_file import Metrics
from synthsae.report import atlas_sections, load_latents  # importing it also registers the shared claims listed here
from synthsae.report_render import Section, Table, fmt, pm, verdict_section, write_report
from synthsae.results import ConvergenceResult, TriggersResult, Verdict
from synthsae.verdicts import always_on_text

# report order of a real run's claims (no recovery, truth filter or seed budget: there is no planted truth)
REAL_CLAIMS = ("convergence", "fidelity", "stability", "frequency", "clusters", "ablation", "triggers", "pooling", "atlas")


def fidelity_section(v: Verdict, ab=None) -> Section:
    """CE loss recovered with the reconstruction spliced in; with the ablation, each group's share of the CE cost."""
    sec = verdict_section(v)
    if ab is not None and v.checks:
        rows = []
        for name, g in ab.groups.items():
            c = g.costs.get("ce")
            if c is not None:
                rows.append([name, pm(g.size.mean, g.size.std, 1), pm(c.share.mean, c.share.std), fmt(c.per_latent.mean, 5),
                             pm(c.share_per_mass_share.mean, c.share_per_mass_share.std, 2)])
        sec.tables.append(Table(["group", "latents", "share of the CE cost", "dCE / latent (nats)", "CE share / mass share"],
                                rows, "Next-token cross-entropy when a group is zeroed (share of zeroing every latent)"))
    return sec


def triggers_section(v: Verdict, tr: TriggersResult | None, trig: dict | None, lat: dict, fig_dir: Path, examples: list[str],
                     cutoffs: tuple[float, float] = (0.8, 0.2)) -> Section:
    sec = verdict_section(v)
    if not v.checks:
        return sec
    tr = typed(TriggersResult, tr)
    rows = [[name, str(r.n), fmt(r.surface_score_median), fmt(r.frac_surface_ge_05), fmt(r.token_entropy_median, 2)]
            for name, r in (("stable", tr.stable), ("unstable", tr.unstable))]
    sec.tables.append(Table(["group", "live latents", "median surface score", "share with score >= 0.5",
                             "median token entropy (bits)"], rows,
                            "Firing frequency is the Frequency section's (one sample, one answer)"))
    if trig is not None and "stability" in lat:
        stab = lat["stability"]
        score = trig["surface_score"]
        live = trig["frequency"] > LIVE_FREQ
        ss = live & (stab >= cutoffs[0]) & np.isfinite(score)
        uu = live & (stab <= cutoffs[1]) & np.isfinite(score)
        sec.figures.append(figures.histogram(fig_dir / "surface_score.png", {"stable": score[ss], "unstable": score[uu]},
                                             "surface-form score", "Share of a latent's activation mass on its top token",
                                             bins=np.linspace(0, 1, 21)))
    sec.paragraphs += examples
    return sec


def convergence_section(v: Verdict, train: ConvergenceResult | dict | None, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    if not v.checks:
        return sec
    conv = typed(ConvergenceResult, train).convergence or []
    if any(c.core and not c.passed for c in v.checks):
        sec.paragraphs.append("This run did NOT converge: more tokens or passes would change its stability numbers, so "
                              "read the other sections as a snapshot, not a result.")
    sec.tables.append(Table(["step", "tokens / seed", "FVU", "L0", "mean stability (live)", "stable", "unstable", "live"],
                            [[str(c.step), str(c.tokens_per_seed), fmt(float(np.mean(c.fvu))), fmt(float(np.mean(c.l0)), 1),
                              fmt(c.mean_stability_live), fmt(c.frac_stable_live), fmt(c.frac_unstable_live),
                              fmt(c.frac_live)] for c in conv], "Stability against training tokens"))
    x = np.array([c.tokens_per_seed for c in conv], dtype=float)
    sec.figures.append(figures.scatter(fig_dir / "convergence.png", {
        "stable share (live)": (x, np.array([c.frac_stable_live for c in conv])),
        "unstable share (live)": (x, np.array([c.frac_unstable_live for c in conv])),
        "FVU": (x, np.array([float(np.mean(c.fvu)) for c in conv]))},
        "training tokens per seed", "share / FVU", "Convergence: stability and FVU against training tokens"))
    return sec


def _examples(run_dir: Path, trig: dict, lat: dict, tokenizer, cutoffs: tuple[float, float], n_latents: int = 4) -> list[str]:
    """A few stable and unstable latents of seed 0 (chosen at random, always-on ones left out) with their top token and
    strongest contexts ([[token]] marked); contexts a latent shares with one shown before are said to be shared."""
    if tokenizer is None or trig is None or "stability" not in lat:
        return []
    from real.activations import ActivationStore
    from real.triggers import EXAMPLE_SEED, context_snippet, pick_examples, same_contexts_note, visible_token
    from synthsae.metrics.frequency import ALWAYS_ON

    try:
        store = ActivationStore(run_dir / "acts")
    except Exception:  # noqa: BLE001 - examples are optional
        return []
    tokens = store.tokens()
    n = int(trig["top_rows"].max()) + 1 if trig["top_rows"].size else 0
    ctx = store.load("eval", "context_ids", limit=n).numpy()
    pos = store.load("eval", "positions", limit=n).numpy()
    stab, freq = lat["stability"][0], trig["frequency"][0]
    picks = pick_examples(stab, freq, cutoffs, n_latents)
    n_on = int((freq >= ALWAYS_ON).sum())
    out = [f"Examples: {n_latents} latents of seed 0 drawn at random (numpy seed {EXAMPLE_SEED}) among its stable "
           f"(stability >= {cutoffs[0]}) and among its unstable (<= {cutoffs[1]}) live latents; always-on latents "
           f"(frequency >= {ALWAYS_ON}; {n_on} in seed 0) are left out. Each shows its {trig['top_rows'].shape[-1]} "
           "strongest firings on held-out tokens; whitespace tokens print as ␣ (space), ⏎ (newline), ⇥ (tab)."]
    seen: dict[tuple, str] = {}
    for name, idx in picks.items():
        for i in idx:
            rows = tuple(int(r) for r in trig["top_rows"][0, i] if r >= 0)
            snips = [context_snippet(tokenizer, tokens[ctx[r]], int(pos[r])) for r in rows]
            top = visible_token(tokenizer.decode([int(trig["top_token"][0, i])])) if trig["top_token"][0, i] >= 0 else "?"
            same = same_contexts_note(seen, rows, f"{name} latent {i}")
            out.append(f"{name} latent {i} (stability {stab[i]:.2f}, frequency {freq[i]:.4f}, surface score "
                       f"{trig['surface_score'][0, i]:.2f}, top token {top!r}){same}: " + " | ".join(snips))
    return out


def atlas_section(at) -> Section:
    """The atlas stage (an AtlasResult): the synthetic report's atlas section (verdict on held-out seeds, kinds), plus
    the rank histogram and the EV and spliced CE the reproducible features carry against the remainder."""
    from synthsae.metrics.atlas_run import atlas_verdict

    if at is None:
        v = atlas_verdict(None)
        return Section(v.title, v.claim, "not measured",
                       "no atlas stage in metrics.json (`synthsae real run` or `synthsae atlas RUN_DIR` adds it)")
    (sec,) = atlas_sections(at)
    if at.rank_histogram:
        sec.tables.append(Table(["rank", "features"], [[r, str(n)] for r, n in at.rank_histogram.items()],
                                "Features by rank (rank 1: stable latent directions; > 1: reproducible subspaces)"))
    c = at.ce
    if c is None:
        sec.paragraphs.append("Spliced CE of the features against the remainder: not measured.")
        return sec
    rem_ev = None if at.ev_share_remainder is None else at.ev_share_remainder + (at.ev_share_dead or 0.0)
    sp = lambda s: pm(s.mean, s.std)  # noqa: E731
    sec.tables.append(Table(
        ["latents kept", f"EV share (atlas of all {at.n_seeds} seeds)", "CE share", "CE (nats)", "CE recovered",
         "KL to clean (nats)"],
        [[f"reproducible features ({at.n_stable_rank1} stable rank-1, {at.n_subspaces} subspaces)",
          fmt(at.ev_share_features), sp(c.ce_share_features), sp(c.ce_features_only), sp(c.ce_recovered_features_only),
          sp(c.kl_features_only)],
         [f"irreproducible remainder ({at.n_remainder_latents} latents; dead latents with it)", fmt(rem_ev),
          sp(c.ce_share_remainder), sp(c.ce_remainder_only), sp(c.ce_recovered_remainder_only), sp(c.kl_remainder_only)],
         ["all (the full reconstruction)", "1", "1", sp(c.ce_full), sp(c.ce_recovered_full), "-"],
         ["none (b_dec only)", "0", "0", sp(c.ce_no_latents), "-", "-"]],
        "What the reproducible features and the remainder carry, each spliced in alone (mean ± std over seeds)"))
    sec.paragraphs.append(
        f"CE spliced after block {c.layer} on {c.splice_windows} held-out windows ({c.splice_tokens} predicted tokens): "
        f"clean {fmt(c.ce_clean)}, zero-ablation {fmt(c.ce_zero_ablation)} nats. {c.definition}. EV share: the Shapley "
        "share of each latent in its seed's explained variance, summed (docs/atlas.md).")
    return sec


@dataclass
class RealRun(Metrics):
    """A real run's typed results: metrics.json's stages (splice and triggers among them) plus train.json's
    convergence curve, and what the report reads beside them (train.json's provenance, per-latent trigger arrays)."""

    convergence: ConvergenceResult | None = None  # train.json's convergence curve
    train: dict | None = None  # train.json as written (tokens, norm scaling factor for the report's summary)
    trig: dict | None = None  # triggers.safetensors
    cutoffs: tuple[float, float] = (0.8, 0.2)  # the analysis' stable / unstable cut-offs
    examples: list[str] = field(default_factory=list)  # example latents with their contexts (report only)


def _read_run(run_dir: Path) -> RealRun:
    from synthsae.metrics_file import read_metrics

    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no metrics.json; run `synthsae real run` first")
    m = read_metrics(mpath)
    train = json.loads((run_dir / "train.json").read_text()) if (run_dir / "train.json").is_file() else None
    trig = None
    if (run_dir / "triggers.safetensors").is_file():
        from safetensors.numpy import load_file

        trig = load_file(str(run_dir / "triggers.safetensors"))
    s = m.analysis.settings if m.analysis is not None else None
    cutoffs = (s.stable_cutoff, s.unstable_cutoff) if s is not None else (0.8, 0.2)
    tr = m.triggers
    if tr is not None and tr.null is None and trig is not None:
        # a run made before the null was stored: the same random splits from the saved per-latent arrays
        from real.triggers import split_null
        from synthsae.results import TriggerNull

        tr.null = typed(TriggerNull, split_null(trig, trig["frequency"] > LIVE_FREQ, (tr.stable.n if tr.stable else None) or 0,
                                                (tr.unstable.n if tr.unstable else None) or 0))
    return RealRun(**{f.name: getattr(m, f.name) for f in fields(Metrics)}, convergence=typed(ConvergenceResult, train),
                   train=train, trig=trig, cutoffs=cutoffs)


def _register_claims() -> None:
    """The real-only claims, once each: key, (title, claim), rule on a RealRun, section builder."""
    register("convergence", CONVERGENCE, lambda r: convergence_verdict(r.convergence),
             lambda v, r, lat, d: convergence_section(v, r.convergence, d))
    register("fidelity", FIDELITY, lambda r: fidelity_verdict(r.splice), lambda v, r, lat, d: fidelity_section(v, r.ablation))
    register("triggers", TRIGGERS,
             lambda r: triggers_verdict(r.triggers, r.analysis.frequency if r.analysis is not None else None),
             lambda v, r, lat, d: triggers_section(v, r.triggers, r.trig, lat, d, r.examples, r.cutoffs))


_register_claims()


def real_claim_verdicts(run_dir: str | Path) -> dict[str, Verdict]:
    """key -> verdict of every claim of a real run (REAL_CLAIMS order): rules only, no figures drawn."""
    return claim_verdicts(_read_run(Path(run_dir)), REAL_CLAIMS)


def real_verdicts(run_dir: str | Path) -> list[Verdict]:
    """Every claim's verdict for a real run (terminal summaries), in report order."""
    return list(real_claim_verdicts(run_dir).values())


def build_real_report(run_dir: str | Path, tokenizer=None) -> tuple[Path, Path]:
    """figures/*.png, report.md and report.html of a real run from its saved files."""
    run_dir = Path(run_dir)
    m = _read_run(run_dir)
    lat, train = load_latents(run_dir), m.train
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    m.examples = _examples(run_dir, m.trig, lat, tokenizer, m.cutoffs)
    sections = claim_sections(m, REAL_CLAIMS, lat, fig_dir, builders={"atlas": lambda v, r, lat_, d: atlas_section(r.atlas)})
    cfg = json.loads((run_dir / "real_config.json").read_text()) if (run_dir / "real_config.json").is_file() else {}
    c, s = cfg.get("collect", {}), cfg.get("sae", {})
    meta = json.loads((run_dir / "acts" / "meta.json").read_text()) if (run_dir / "acts" / "meta.json").is_file() else {}
    counts = meta.get("counts", {})
    from real.model import DEFAULT_MODEL, DEFAULT_MODEL_NAME

    model = DEFAULT_MODEL_NAME if c.get("model") == DEFAULT_MODEL else c.get("model")
    bos = (f"each starting with BOS (token {meta.get('bos_token_id')})" if meta.get("prepend_bos")
           else "without BOS")
    summary = [f"Run: {run_dir}. Model {model}, residual stream after block {c.get('layer')} "
               f"(d = {meta.get('d_model')}); windows of {c.get('ctx_len')} tokens {bos}, from {meta.get('corpus')}.",
               f"Tokens kept {counts.get('kept')}; left out: position 0 {counts.get('position0')}, padding "
               f"{counts.get('padding')}, norm outliers {counts.get('outliers')} ({meta.get('outlier_rule')}).",
               f"{cfg.get('train', {}).get('seeds')} seeds of {s.get('variant')} d_sae = {s.get('d_sae')}, k = {s.get('k')}, "
               f"{cfg.get('passes')} passes ({(train or {}).get('tokens_per_seed')} training tokens per seed); activations "
               f"scaled by {fmt((train or {}).get('norm_scaling_factor'), 4)} (SAELens expected_average_only_in).",
               ("Always-on latents: " + always_on_text(m.analysis.frequency).split(": ", 1)[1] + " (they fire on nearly "
                "every token: a bias direction, not a feature; left out of the trigger examples).")
               if m.analysis is not None and m.analysis.frequency is not None else "Always-on latents: not measured.",
               "Each verdict: held (every check passed), partly held (every core check passed, a supporting one did not), "
               "did not hold (a core check failed), not measured. Rules and nulls: docs/metrics.md."]
    return write_report(run_dir, f"synthsae real report: {run_dir.name}", summary, sections)

"""The study's report: one section per claim, built only from a run's saved files (metrics.json through its
typed results, analysis_latents.safetensors, config.toml), so `synthsae report RUN_DIR` never retrains.

Verdicts come from `synthsae.verdicts` (rules beside the result types); this module lays out each verdict with
its rule, its checks and its numbers, and draws each figure once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthsae import figures
from synthsae import verdicts as rules
from synthsae.claims import ANALYSIS_CLAIMS, REPORT_CLAIMS, SUMMARY_CLAIMS, claim_sections, claim_verdicts, register, shown_keys
from synthsae.metrics.atlas_run import ATLAS, atlas_verdict
from synthsae.metrics_file import Metrics, read_metrics
from synthsae.metrics.run_analysis import LATENTS_FILE
from synthsae.report_render import Section, Table, fmt, pm, verdict_section, write_report
from synthsae.results import AblationResult, AnalysisResult, AtlasResult, PoolingResult, SourcesResult, Spread, Verdict


def load_latents(run_dir: Path) -> dict[str, np.ndarray]:
    """Per-latent arrays written by the analysis (empty dict when absent)."""
    path = run_dir / LATENTS_FILE
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    return load_file(str(path))


def _live(lat: dict) -> np.ndarray:
    st = lat["stability"]
    return lat["frequency"] > 0 if "frequency" in lat else np.ones_like(st, dtype=bool)


def _pm(s: Spread | None, digits: int = 3) -> str:
    return pm(s.mean, s.std, digits) if s is not None else "-"


# ----------------------------------------------------------------------------------------------- sections


def stability_section(v: Verdict, an: AnalysisResult | None, lat: dict, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    if an is None:
        return sec
    s, st = an.settings, an.stability
    sec.paragraphs.append(f"S = {s.seeds} seeds, d_sae = {s.d_sae}; numbers over {st.n_latents} {st.over} latents. "
                          f"Null: every seed rotated at random (same matching); a Gaussian random dictionary would give "
                          f"{fmt(st.random_dictionary_mean)}.")
    sec.tables.append(Table(["tau", "mean stability", "stable", "unstable"],
                            [[fmt(r.tau, 2), fmt(r.mean_stability), fmt(r.frac_stable), fmt(r.frac_unstable)] for r in st.sweep],
                            f"Threshold sweep ({st.over} latents)"))
    if "stability" in lat:
        live = _live(lat)
        series = {f"{st.over} latents": lat["stability"][live]}
        if "null_stability" in lat:
            series["rotated-seeds null"] = lat["null_stability"][live]
        sec.figures.append(figures.histogram(
            fig_dir / "stability_hist.png", series, "stability (fraction of other seeds matched)",
            f"Per-latent stability, tau = {s.tau}", bins=np.linspace(0, 1, s.seeds + 1) if s.seeds <= 20 else 20,
            vlines={"unstable cut-off": s.unstable_cutoff, "stable cut-off": s.stable_cutoff}))
    return sec


def frequency_section(v: Verdict, an: AnalysisResult | None, lat: dict, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    fq = an.frequency if an is not None else None
    if fq is None:
        return sec
    sec.paragraphs.append(f"Frequencies: {fq.source}. Dead: {fq.dead_rule}; {fq.n_dead} dead, {fq.n_live} live latents.")
    sec.tables.append(Table(["log10 frequency", "latents", "mean stability"],
                            [[f"{b.log10_freq_lo:.2f}..{b.log10_freq_hi:.2f}", str(b.n), fmt(b.mean_stability)] for b in fq.by_decile],
                            "Mean stability per frequency decile (live latents)"))
    if "frequency" in lat and "stability" in lat:
        live = _live(lat)
        sec.figures.append(figures.scatter(
            fig_dir / "stability_vs_frequency.png", {"live latents": (lat["frequency"][live], lat["stability"][live])},
            "firing frequency (log)", "stability", f"Stability against frequency (Spearman {fmt(fq.spearman.value, 2)})", logx=True))
    return sec


def recovery_section(v: Verdict, an: AnalysisResult | None, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    tr = an.truth if an is not None else None
    if tr is None:
        return sec
    at = tr.atoms
    if at is not None:
        sec.paragraphs.append(
            f"Atoms: {at.n_atoms} planted; recovered at cos >= 0.9: {fmt(at.frac_recovered.value)} (chance "
            f"{fmt(at.frac_recovered.baseline)}); frequent half {fmt(at.frac_recovered_frequent_half)}, rare half "
            f"{fmt(at.frac_recovered_rare_half)}; recovered in some seeds but not all (competition of rare atoms for "
            f"latents): {fmt(at.frac_recovered_in_some_not_all_seeds)}.")
    rows = [[str(b.block), str(b.rank), "orthogonal" if b.orthogonal else "superposed", fmt(b.prob, 4),
             fmt(float(np.mean(b.n_assigned_per_seed)), 1), f"{fmt(b.recovery.value)} ({fmt(b.recovery.baseline, 2)})",
             fmt(b.stability), fmt(b.rotation_null), fmt(b.stability_minus_rotation_null),
             fmt(b.span_reproducibility[0] if b.span_reproducibility else None),
             fmt(b.span_reproducibility[-1] if b.span_reproducibility else None)] for b in tr.blocks]
    if rows:
        k = len(tr.blocks[0].span_reproducibility) or 1
        sec.tables.append(Table(["block", "rank", "geometry", "p(fire)", "latents/seed", "recovery (chance)", "stability",
                                 "rotation null", "stab - null", "span k=1", f"span k={k}"], rows,
                                "Every planted subspace: recovered as a subspace; its latents' stability beside the rotation null"))
    if tr.by_geometry:
        sec.tables.append(Table(["geometry", "blocks", "with latents", "recovery (all blocks)", "stability", "rotation null"],
                                [[g.geometry, str(g.n_blocks), str(g.n_blocks_with_latents), fmt(g.mean_recovery),
                                  fmt(g.mean_stability), fmt(g.mean_rotation_null)] for g in tr.by_geometry],
                                "Orthogonal blocks (clean theory case) vs blocks in superposition; stability over blocks with latents"))
    groups = sorted({(b.rank, b.orthogonal) for b in tr.blocks})
    labels = (["1 (atoms)"] if at else []) + [f"{r} {'orth' if o else 'sup'}" for r, o in groups]

    def per_group(get):
        vals = [[get(b) for b in tr.blocks if (b.rank, b.orthogonal) == g] for g in groups]
        return [float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v) else None for v in vals]

    stab_v = ([at.atom_latent_stability] if at else []) + per_group(lambda b: b.stability)
    null_v = ([None] if at else []) + per_group(lambda b: b.rotation_null)
    rec_v = ([at.frac_recovered.value] if at else []) + per_group(lambda b: b.recovery.value)
    if labels:
        sec.figures.append(figures.grouped_bars(
            fig_dir / "recovery_by_rank.png", labels,
            {"latent stability": (stab_v, None), "rotation null": (null_v, None), "recovery (atoms: frac >= 0.9)": (rec_v, None)},
            "value", "Identifiability of latents beside recovery of what they tile, by rank (orth = orthogonal, sup = superposed)"))
    return sec


def clusters_section(v: Verdict, an: AnalysisResult | None, lat: dict, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    if an is None:
        return sec
    sp, uc = an.span_reproducibility, an.unstable_clusters
    sec.tables.append(Table(
        ["k", f"{sp.over} latents (null)", "stable", "unstable (null)", "random dictionary"],
        [[str(k), f"{fmt(a.value)} ({fmt(a.baseline)})", fmt(s), f"{fmt(u.value)} ({fmt(u.baseline)})", fmt(r)]
         for k, a, s, u, r in zip(sp.k, sp.all, sp.stable, sp.unstable, sp.random_dictionary)],
        "Span reproducibility: norm of a latent's projection on the span of its k nearest latents in another seed"))
    rows = [[str(i), str(c.size), str(c.n_seeds), fmt(c.effective_rank, 2), str(c.energy_rank_95),
             f"{fmt(c.cross_seed_overlap)} ({fmt(c.cross_seed_overlap_baseline, 2)})",
             "-" if c.best_block is None else str(c.best_block), "-" if c.best_block_rank is None else str(c.best_block_rank),
             fmt(c.best_block_overlap)] for i, c in enumerate(uc.clusters[:20])]
    if rows:
        sec.tables.append(Table(["cluster", "latents", "seeds", "eff. rank", "95% rank", "cross-seed overlap (random subspaces)",
                                 "best block", "block rank", "overlap"], rows,
                                f"Largest multi-seed clusters of unstable latents (mean overlap {fmt(uc.mean_cross_seed_overlap.value)}, "
                                f"null clusters {fmt(uc.mean_cross_seed_overlap.baseline)})"))
    if {"block_label", "atom_label", "cluster", "stability"} <= set(lat):
        sec.tables.append(_instability_sources(lat, an.settings.unstable_cutoff))
    al = an.truth.cluster_alignment if an.truth is not None else None
    if al is not None and an.truth.blocks:
        blocks = an.truth.blocks
        labels = [f"b{b.block} r{b.rank}{'o' if b.orthogonal else 's'}" for b in blocks]
        found = {p.block: p.largest_cluster_energy_rank_95 for p in al.per_block}
        sec.figures.append(figures.grouped_bars(
            fig_dir / "clusters_vs_blocks.png", labels,
            {"planted rank": ([b.rank for b in blocks], None), "largest cluster's 95% rank": ([found.get(b.block) for b in blocks], None)},
            "rank", "Unstable-latent clusters against planted blocks (o = orthogonal, s = superposed; no bar: no cluster)"))
    return sec


def _instability_sources(lat: dict, s_cut: float) -> Table:
    """Unstable live latents split by what they sit on: a planted block (basis ambiguity), an atom, or neither
    (rare atoms competing for latents end up as mixtures), with how many join a multi-seed cluster."""
    st, bl, al, cl = lat["stability"], lat["block_label"], lat["atom_label"], lat["cluster"]
    un = _live(lat) & (st <= s_cut)
    seed = np.broadcast_to(np.arange(st.shape[0])[:, None], st.shape)
    multi = np.zeros_like(un)
    for c in np.unique(cl[un]):
        members = un & (cl == c)
        if len(np.unique(seed[members])) >= 2:
            multi |= members
    freq = lat.get("frequency")
    rows = []
    for name, sel in (("inside a planted block", un & (bl >= 0)), ("on an atom (cos >= 0.9)", un & (bl < 0) & (al >= 0)),
                      ("neither (mixtures)", un & (bl < 0) & (al < 0))):
        n = int(sel.sum())
        rows.append([name, str(n), f"{n / max(int(un.sum()), 1):.0%}", f"{(multi & sel).sum() / max(n, 1):.0%}",
                     fmt(float(np.median(freq[sel])) if n and freq is not None else None, 5)])
    return Table(["unstable live latents", "count", "share", "in multi-seed clusters", "median frequency"], rows,
                 "Two sources of instability kept apart: basis ambiguity inside blocks vs the rest")


def ablation_section(v: Verdict, ab: AblationResult | None, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    if ab is None:
        return sec
    metrics_ = list(ab.units)
    sec.paragraphs.append(f"Eval on {ab.eval_tokens} held-out tokens; prediction cost: {ab.prediction_cost}; random groups: "
                          f"{ab.n_draws} draws each, drawn among live latents; mean ± std over seeds.")
    headers = ["group", "latents", "mass share"]
    for mt in metrics_:
        headers += [f"share of {mt} cost", f"Δ{mt} / latent", f"{mt} share / mass share"]
    rows = []
    for name, g in ab.groups.items():
        r = [name, _pm(g.size, 1), _pm(g.mass_share)]
        for mt in metrics_:
            c = g.costs.get(mt)
            r += [_pm(c.share) if c else "-", fmt(c.per_latent.mean, 5) if c else "-", _pm(c.share_per_mass_share, 2) if c else "-"]
        rows.append(r)
    sec.tables.append(Table(headers, rows, "Zero a group, decode: cost as a share of zeroing every latent"))
    names = list(ab.groups)
    series = {f"{mt} share / mass share": ([ab.groups[n].costs[mt].share_per_mass_share.mean for n in names],
                                           [ab.groups[n].costs[mt].share_per_mass_share.std for n in names]) for mt in metrics_}
    sec.figures.append(figures.grouped_bars(fig_dir / "ablation.png", names, series, "cost share / activation-mass share",
                                            "Ablation: cost per unit of activation mass, groups vs random controls (std over seeds)",
                                            hlines={"in proportion to mass": 1.0}))
    return sec


def pool_row_name(pv) -> str:
    """A pool's row label by what it is: its rule and the width it was built at, and the asked width when the pool
    came out narrower (too few clusters), so no row says w1152 above a width of 672."""
    built = sorted({p.width for p in pv.pools.values()})
    if pv.width is None:
        return f"{pv.rule} (every cluster)"
    w = "/".join(str(b) for b in built) if built else str(pv.width)
    return f"{pv.rule} at width {w}" + (f" (asked {pv.width}: too few clusters)" if built and built != [pv.width] else "")


def pooling_section(v: Verdict, po: PoolingResult | None, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    if po is None:
        return sec
    s = po.single
    sec.paragraphs.append(
        f"Live latents: {po.live_rule}. Pools refit for {po.refit_steps} steps with the decoder frozen. Single seeds: EV "
        f"{_pm(s.ev)}, L0 {_pm(s.l0, 2)}, stability between halves {_pm(s.stability_between_halves)} (rotated null "
        f"{_pm(s.stability_null)}), vs held-out seeds {_pm(s.stability_vs_heldout)}.")
    rows, pts = [], {}
    if s.stability_between_halves is not None:
        rows.append(["single seeds (baseline)", str(po.base_width), _pm(s.ev), _pm(s.l0, 2), _pm(s.stability_between_halves),
                     _pm(s.stability_null), _pm(s.stability_vs_heldout)])
        pts["single seeds"] = ([s.ev.mean], [s.stability_between_halves.mean])
    if po.bagging is not None:
        b = po.bagging
        rows.append(["bagging (baseline)", str(b.width), _pm(b.ev_halves), _pm(b.l0_halves, 1), _pm(b.stability_between_halves),
                     _pm(b.stability_null), "-"])
        pts["bagging"] = ([b.ev_halves.mean], [b.stability_between_halves.mean])
    for name, pv in po.variants.items():
        rows.append([f"{pool_row_name(pv)} ({pv.role})", str(pv.pools["A"].width if "A" in pv.pools else pv.pools["all"].width),
                     _pm(pv.ev_halves), _pm(pv.l0_halves, 2), _pm(pv.stability_pool_vs_pool), _pm(pv.stability_null),
                     _pm(pv.stability_vs_heldout)])
        if pv.ev_halves is not None and pv.stability_pool_vs_pool is not None:
            pts[f"{pool_row_name(pv)} ({pv.role})"] = ([pv.ev_halves.mean], [pv.stability_pool_vs_pool.mean])
    sec.tables.append(Table(["SAE", "width", "EV (halves)", "L0", "stability between halves", "rotated null",
                             "vs held-out seeds"], rows,
                            "Primary pool, baselines and secondary pools (secondary ones never change the verdict)"))
    if pts:
        sec.figures.append(figures.scatter(fig_dir / "pooling.png", pts, "explained variance", "stability between halves",
                                           "Pooling: stability against explained variance"))
    return sec


def atlas_sections(at: AtlasResult | None) -> list[Section]:
    """The feature atlas (issue 15) when metrics.json holds an "atlas" stage (`synthsae atlas RUN_DIR`); none otherwise."""
    return [] if at is None else [atlas_section(atlas_verdict(at), at)]


def atlas_section(v: Verdict, at: AtlasResult) -> Section:
    """The atlas stage's verdict with its kinds, held-out, resample and planted-block tables."""
    sec = verdict_section(v)
    sec.paragraphs.append(
        f"{at.n_features} features from {at.n_seeds} seeds: {at.n_stable_rank1} stable rank-1 directions, "
        f"{at.n_subspaces} reproducible subspaces (ranks {at.rank_histogram}), {at.n_remainder_latents} "
        f"latents in the irreproducible remainder. EV share of the atlas of all {at.n_seeds} seeds (mean over seeds): "
        f"features {fmt(at.ev_share_features)}, remainder {fmt(at.ev_share_remainder)}; the held-out table's EV shares "
        f"are those of the smaller atlases built on half of the seeds. Rules: docs/atlas.md.")
    if at.kinds:
        sec.tables.append(Table(["where latents end", "features", "latents (all seeds)", "EV share", "mean stability",
                                 "EV-weighted stability"],
                                [[k.kind, str(k.n_features), str(k.n_latents), fmt(k.ev_share), fmt(k.mean_stability),
                                  fmt(k.ev_weighted_stability)] for k in at.kinds],
                                "Stable rank-1 features, reproducible subspaces, the remainder and dead latents"))
    h = at.heldout
    if h is not None:
        rows = [[f"{r.build_seeds} -> {r.judge_seeds}", str(r.n_features), fmt(r.feature_stability_heldout),
                 fmt(r.feature_stability_heldout_ev_weighted), fmt(r.ev_share_features),
                 fmt(r.latent_stability_heldout.mean), fmt(r.latent_stability_heldout.ev_weighted)]
                for r in h.halves]
        sec.tables.append(Table(["atlas seeds -> judged on", "features", "feature stability", "EV-weighted",
                                 "EV share of features (this half's atlas)", f"latent stability (tau {h.latent_tau})",
                                 "EV-weighted"],
                                rows, "Held-out judgement: the atlas of one half of the seeds against the other half"))
    rs = at.resamples
    if rs is not None and rs.n_features:
        ev = rs.ev_share_features or [None] * len(rs.n_features)
        sec.tables.append(Table(["seed left out", "features", "subspaces", "remainder latents", "largest feature's share of "
                                 "live latents", "EV share of features"],
                                [[str(s), str(f), str(n), str(r), fmt(b), fmt(e)] for s, f, n, r, b, e in
                                 zip(rs.left_out, rs.n_features, rs.n_subspaces, rs.n_remainder_latents,
                                     rs.largest_feature_share, ev)],
                                f"The atlas on resamples of the seeds ({rs.method}): its spread"))
        evs = rs.ev_share_features_spread
        sec.paragraphs.append(
            f"Over {len(rs.n_features)} resamples ({rs.method}): subspaces {pm(rs.n_subspaces_spread.mean, rs.n_subspaces_spread.std, 1)} "
            f"(min {min(rs.n_subspaces)}, max {max(rs.n_subspaces)}), EV share of features "
            f"{pm(evs.mean, evs.std) if evs is not None else 'not measured'} (mean ± std over resamples; the CE share "
            "is spliced for the all-seed atlas only).")
    if at.planted_blocks:
        sec.tables.append(Table(["block", "rank", "geometry", "best feature", "its rank", "overlap", "its stability"],
                                [[str(b.block), str(b.rank), "orthogonal" if b.orthogonal else "superposed",
                                  str(b.best_feature), fmt(b.feature_rank), fmt(b.overlap),
                                  fmt(b.feature_stability)] for b in at.planted_blocks],
                                "Planted blocks against the atlas (overlap ||B^T U||^2 / max rank: 1 = the same span)"))
    if at.group_stability is not None:
        g = at.group_stability
        sec.paragraphs.append(f"blocktopk group-level stability: {fmt(g.mean)} over {g.n_live_groups} live groups.")
    return sec


# ----------------------------------------------------------------------------------------------- assembly


def _register_claims() -> None:
    """The shared claims, once each: key, (title, claim), rule on the typed Metrics, section builder."""
    from synthsae import report_questions as q

    an = lambda m: m.analysis  # noqa: E731
    register("stability", rules.STABILITY, lambda m: rules.stability_verdict(m.analysis),
             lambda v, m, lat, d: stability_section(v, an(m), lat, d))
    register("frequency", rules.FREQUENCY, lambda m: rules.frequency_verdict(m.analysis),
             lambda v, m, lat, d: frequency_section(v, an(m), lat, d))
    register("recovery", rules.RECOVERY, lambda m: rules.recovery_verdict(m.analysis),
             lambda v, m, lat, d: recovery_section(v, an(m), d))
    register("clusters", rules.CLUSTERS, lambda m: rules.clusters_verdict(m.analysis),
             lambda v, m, lat, d: clusters_section(v, an(m), lat, d))
    register("ablation", rules.ABLATION, lambda m: rules.ablation_verdict(m.ablation),
             lambda v, m, lat, d: ablation_section(v, m.ablation, d))
    register("pooling", rules.POOLING, lambda m: rules.pooling_verdict(m.pooling),
             lambda v, m, lat, d: pooling_section(v, m.pooling, d))
    register("truth_filter", rules.TRUTH_FILTER, lambda m: rules.truth_filter_verdict(m.analysis),
             lambda v, m, lat, d: q.truth_filter_section(v, an(m), lat, d),
             shown=lambda m: m.analysis is None or m.analysis.truth_filter is not None)  # planted truth only
    register("seed_budget", rules.SEED_BUDGET, lambda m: rules.seed_budget_verdict(m.analysis),
             lambda v, m, lat, d: q.seed_budget_section(v, an(m), d))
    register("seed_modes", rules.SEED_MODES, lambda m: rules.seed_modes_verdict(m.seed_modes),
             lambda v, m, lat, d: q.seed_modes_section(v, m.seed_modes),
             shown=lambda m: m.seed_modes is not None)  # only when `synthsae seed-modes` ran
    register("atlas", ATLAS, lambda m: atlas_verdict(m.atlas), lambda v, m, lat, d: atlas_section(v, m.atlas),
             shown=lambda m: m.atlas is not None)  # only with an atlas stage


_register_claims()


def build_sections(m: Metrics, lat: dict, fig_dir: Path) -> list[Section]:
    """The analysis claims' sections (stability, frequency, recovery, clusters, ablation, pooling)."""
    return claim_sections(m, ANALYSIS_CLAIMS, lat, fig_dir)


def _summary(run_dir: Path, m: Metrics) -> list[str]:
    lines = [f"Run: {run_dir}."]
    if m.analysis is not None:
        s = m.analysis.settings
        lines.append(f"{s.seeds} seeds of a {s.variant or '?'} SAE, d_in = {s.d_in}, d_sae = {s.d_sae}; matching {s.match} "
                     f"at tau = {s.tau}; stable >= {s.stable_cutoff}, unstable <= {s.unstable_cutoff}.")
    lines += sources_lines(m.sources)
    from synthsae.metrics_file import tau_warning

    if tau_warning(m):
        lines.append(tau_warning(m).replace("warning: ", "Warning: ", 1) + ".")
    lines.append("Each verdict: held (every check passed), partly held (every core check passed, a supporting one did not), "
                 "did not hold (a core check failed), not measured. Rules and nulls: docs/metrics.md.")
    return lines


def _metrics(run_dir: Path) -> Metrics:
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no metrics.json; run `synthsae analyze {run_dir}` (or `synthsae run`) first")
    return read_metrics(mpath)


def sources_lines(src: SourcesResult | None) -> list[str]:
    """Where loaded SAEs came from (library, version recorded in the files, paths) and what was measured on what."""
    if src is None or not src.folders:
        return []
    lines = [f"SAEs loaded from {len(src.folders)} folders written by {', '.join(src.libraries) or '?'} (one seed per folder):"]
    for i, f in enumerate(src.folders):
        det = ", ".join(f"{k} {v}" for k, v in f.details.items())
        lines.append(f"- seed {i}: {f.path} ({f.format}, {f.library} {f.version or 'version not recorded'}; "
                     f"{f.architecture} as {f.variant}, d_in {f.d_in}, d_sae {f.d_sae}{'; ' + det if det else ''})")
    lines.append(f"Firing frequency: {src.frequency_source}.")
    act = src.activations
    if act is not None:
        lines.append(f"Activations: {act.n_tokens} vectors from {act.path}; FVU per seed {', '.join(fmt(v) for v in act.fvu_per_seed)}; "
                     f"L0 per seed {', '.join(fmt(v, 1) for v in act.l0_per_seed)}.")
    elif src.ablation_folders:
        lines.append("No activations given to the latest analysis (weights only); the ablation shown was measured on these "
                     "folders by an earlier run with --acts.")
    else:
        lines.append("No activations given (--acts): weights-only analysis; FVU and ablation not measured.")
    return lines


def build_report(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write figures/*.png, report.md and report.html of a run from its saved files."""
    run_dir = Path(run_dir)
    m = _metrics(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    lat = load_latents(run_dir)
    sections = claim_sections(m, shown_keys(m, REPORT_CLAIMS), lat, fig_dir)
    return write_report(run_dir, title or f"synthsae report: {run_dir.name}", _summary(run_dir, m), sections)


def verdicts(run_dir: str | Path) -> list[Verdict]:
    """Every claim's verdict for a run (for terminal summaries): rules only, no figures drawn."""
    m = _metrics(Path(run_dir))
    return list(claim_verdicts(m, shown_keys(m, SUMMARY_CLAIMS)).values())


# ----------------------------------------------------------------------------------------------- comparison

_KEY_NUMBERS = [  # (label, getter on Metrics, digits)
    ("mean stability", lambda m: m.analysis.stability.mean.value, 3),
    ("rotated-seeds null", lambda m: m.analysis.stability.mean.baseline, 3),
    ("stable fraction", lambda m: m.analysis.stability.frac_stable.value, 3),
    ("unstable fraction", lambda m: m.analysis.stability.frac_unstable.value, 3),
    ("Spearman(log freq, stability)", lambda m: m.analysis.frequency.spearman.value, 3),
    ("dead fraction", lambda m: m.analysis.frequency.frac_dead, 3),
    ("atom MCC", lambda m: m.analysis.truth.atoms.mcc.value, 3),
    ("atom-latent stability", lambda m: m.analysis.truth.atoms.atom_latent_stability, 3),
    ("rank>=4 block-latent stability", lambda m: m.analysis.truth.block_latent_stability_rank_ge_4, 3),
    ("unstable in multi-seed clusters", lambda m: m.analysis.unstable_clusters.frac_in_multi_seed.value, 3),
    ("stability AUROC for true latents", lambda m: m.analysis.truth_filter.auroc.value, 3),
    ("stable share +- at S-1 seeds (95%)", lambda m: m.analysis.seed_budget.rows[-1].stable_share_within, 3),
    ("single-seed EV", lambda m: m.pooling.single.ev.mean, 4),
    ("single-seed stability between halves", lambda m: m.pooling.single.stability_between_halves.mean, 3),
    ("primary pool stability between halves", lambda m: m.pooling.variants[m.pooling.primary].stability_pool_vs_pool.mean, 3),
    ("ablation: stable FVU share / mass share", lambda m: m.ablation.groups["stable"].costs["fvu"].share_per_mass_share.mean, 3),
    ("ablation: unstable FVU share / mass share", lambda m: m.ablation.groups["unstable"].costs["fvu"].share_per_mass_share.mean, 3),
]


def _get(fn, m: Metrics):
    try:
        return fn(m)
    except (AttributeError, KeyError, TypeError):
        return None


def build_comparison(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """compare.md / compare.html: the runs' verdicts per claim and their key numbers side by side."""
    from synthsae.fileio import atomic_write_text
    from synthsae.report_render import render_html, render_markdown

    runs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in runs]
    metrics = [_metrics(r) for r in runs]
    lats = [load_latents(r) for r in runs]
    per_run = [claim_verdicts(m, ANALYSIS_CLAIMS) for m in metrics]
    variants = [(m.analysis.settings.variant if m.analysis else None) or "?" for m in metrics]
    numbers = Table(["", *[f"{n} ({v})" for n, v in zip(names, variants)]],
                    [[label, *[fmt(_get(fn, m), digits) for m in metrics]] for label, fn, digits in _KEY_NUMBERS], "Key numbers")
    sections = []
    for key in ANALYSIS_CLAIMS:
        first = per_run[0][key]
        vs = [verdicts_[key].verdict for verdicts_ in per_run]
        measured = [v for v in vs if v != "not measured"]
        if not measured:
            overall = "not measured"
        elif all(v == "held" for v in measured):
            overall = "held"
        elif all(v == "did not hold" for v in measured):
            overall = "did not hold"
        else:
            overall = "partly held"
        sections.append(Section(first.title, first.claim, overall, "; ".join(f"{n}: {v}" for n, v in zip(names, vs)),
                                tables=[Table(["run", "verdict", "numbers"], [[n, r[key].verdict, r[key].why] for n, r in zip(names, per_run)])]))
    sweep = {n: ([r.tau for r in m.analysis.stability.sweep], [r.mean_stability for r in m.analysis.stability.sweep])
             for n, m in zip(names, metrics) if m.analysis is not None and m.analysis.stability.sweep}
    if sweep:
        sections[0].figures.append(figures.scatter(fig_dir / "compare_sweep.png", sweep, "tau", "mean stability",
                                                   "Mean stability against the matching threshold"))
    hist = {n: lat["stability"][_live(lat)] for n, lat in zip(names, lats) if "stability" in lat}
    if hist:
        sections[0].figures.append(figures.histogram(fig_dir / "compare_stability.png", hist, "stability",
                                                     "Per-latent stability of each run (live latents)", bins=np.linspace(0, 1, 11)))
    sections[0].tables.insert(0, numbers)
    title = "synthsae comparison: " + ", ".join(names)
    summary = [f"Runs: {', '.join(str(r) for r in runs)}."]
    md, page = out_dir / "compare.md", out_dir / "compare.html"
    atomic_write_text(md, render_markdown(title, summary, sections))
    atomic_write_text(page, render_html(title, summary, sections, fig_dir))
    return md, page

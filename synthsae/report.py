"""The study's report: one section per claim, built only from a run's saved files (metrics.json,
analysis_latents.safetensors, config.toml), so `synthsae report RUN_DIR` never retrains.

Every verdict follows a rule written in the section itself, so a reader can check it against the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthsae import figures
from synthsae.report_render import Section, Table, fmt, pm, write_report

from synthsae.metrics.run_analysis import LATENTS_FILE


def _get(d: dict | None, *keys, default=None):
    """d[k1][k2]... or default when any level is missing / None."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def _val(x):
    """The value of a {"value", "baseline"} pair, or x itself."""
    return x.get("value") if isinstance(x, dict) else x


def _base(x):
    return x.get("baseline") if isinstance(x, dict) else None


def _mean(values) -> float | None:
    """Mean of the finite values (None / NaN skipped); None when there are none."""
    ok = [float(v) for v in values if v is not None and v == v]
    return float(np.mean(ok)) if ok else None


def load_latents(run_dir: Path) -> dict[str, np.ndarray]:
    """Per-latent arrays written by the analysis (empty dict when absent)."""
    path = run_dir / LATENTS_FILE
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    return load_file(str(path))


def _verdict(checks: list[bool]) -> str:
    """held when every check of a section's rule passes, partly held when some do, did not hold when none."""
    return "held" if all(checks) else ("partly held" if any(checks) else "did not hold")


def _not_measured(title: str, claim: str, what: str) -> Section:
    return Section(title, claim, "not measured", f"{what} is missing from this run's metrics.json")


# ----------------------------------------------------------------------------------------------- sections


def stability_section(an: dict, lat: dict, fig_dir: Path) -> Section:
    title = "Stability distribution"
    claim = ("Latents split into a stable core (stability >= the stable cut-off: they come back in most other seeds) "
             "and an unstable fringe (<= the unstable cut-off), both far from a random dictionary's chance level.")
    st = _get(an, "stability")
    if not st:
        return _not_measured(title, claim, "the analysis")
    s = an["settings"]
    fs, fu = st["frac_stable_alive"], st["frac_unstable_alive"]
    mean, chance = _val(st["mean_alive"]), _base(st["mean_alive"])
    rule = "held if >= 20% of live latents are stable, >= 5% unstable and the mean is >= chance + 0.1"
    ok = [fs >= 0.2, fu >= 0.05, mean is not None and chance is not None and mean >= chance + 0.1]
    verdict = _verdict(ok)
    why = (f"{fs:.0%} of live latents stable, {fu:.0%} unstable at tau = {s['tau']} ({s['match']}); mean stability "
           f"{fmt(mean)} vs random-dictionary chance {fmt(chance)}")
    sec = Section(title, claim, verdict, why, paragraphs=[f"Rule: {rule}. S = {s['seeds']} seeds, d_sae = {s['d_sae']}."])
    rows = [[fmt(r["tau"], 2), fmt(r["mean_stability"]), f"{r['frac_stable']:.1%}", f"{r['frac_unstable']:.1%}"]
            for r in st["sweep"]]
    sec.tables.append(Table(["tau", "mean stability", "stable", "unstable"], rows, "Threshold sweep (all latents)"))
    if "stability" in lat:
        stab = lat["stability"]
        live = lat["frequency"] > 0 if "frequency" in lat else np.ones_like(stab, dtype=bool)
        sec.figures.append(figures.histogram(
            fig_dir / "stability_hist.png", {"live latents": stab[live]}, "stability (fraction of other seeds matched)",
            f"Per-latent stability, tau = {s['tau']}", bins=np.linspace(0, 1, s["seeds"] + 1) if s["seeds"] <= 20 else 20,
            vlines={"unstable cut-off": s["unstable_cutoff"], "stable cut-off": s["stable_cutoff"]}))
    return sec


def frequency_section(an: dict, lat: dict, fig_dir: Path) -> Section:
    title = "Stability against firing frequency"
    claim = "Unstable latents fire rarely: stability rises with firing frequency."
    fq = _get(an, "frequency")
    if not fq:
        return _not_measured(title, claim, "firing frequency")
    rho = _val(fq["spearman_log_freq_stability"])
    s = an["settings"]
    med_s = med_u = None
    if "frequency" in lat and "stability" in lat:
        f, st = lat["frequency"], lat["stability"]
        live = f > 0
        su, ss = live & (st <= s["unstable_cutoff"]), live & (st >= s["stable_cutoff"])
        med_u = float(np.median(f[su])) if su.any() else None
        med_s = float(np.median(f[ss])) if ss.any() else None
    rule = "held if Spearman(log frequency, stability) >= 0.2 and unstable latents' median frequency is below stable ones'"
    ok = [rho is not None and rho >= 0.2, med_u is not None and med_s is not None and med_u < med_s]
    verdict = _verdict(ok)
    why = (f"Spearman {fmt(rho)} (chance 0); median frequency unstable {fmt(med_u, 4)} vs stable {fmt(med_s, 4)}; "
           f"{fq['n_dead']} dead latents ({fq['frac_dead']:.1%})")
    sec = Section(title, claim, verdict, why, paragraphs=[f"Rule: {rule}. Frequencies: {s.get('frequency_source')}."])
    rows = [[f"{b['log10_freq_lo']:.2f}..{b['log10_freq_hi']:.2f}", str(b["n"]), fmt(b["mean_stability"])] for b in fq["by_decile"]]
    sec.tables.append(Table(["log10 frequency", "latents", "mean stability"], rows, "Mean stability per frequency decile"))
    if "frequency" in lat and "stability" in lat:
        f, st = lat["frequency"], lat["stability"]
        live = f > 0
        sec.figures.append(figures.scatter(
            fig_dir / "stability_vs_frequency.png", {"live latents": (f[live], st[live])}, "firing frequency (log)",
            "stability", f"Stability against frequency (Spearman {fmt(rho, 2)})", logx=True))
    return sec


def recovery_section(an: dict, fig_dir: Path) -> Section:
    title = "Truth recovery by component rank"
    claim = ("Rank-1 atoms give identifiable, stable latents; inside isotropic subspaces of rank >= 4 the subspace is "
             "recovered but its latents are not identifiable (stability near the rotation null, not near the atoms').")
    tr = _get(an, "truth")
    if not tr:
        return _not_measured(title, claim, "a planted truth (real-data runs have none)")
    atoms, blocks = tr.get("atoms"), tr.get("blocks", [])
    mcc = _val(atoms["mcc"]) if atoms else None
    a_stab = atoms["atom_latent_stability"] if atoms else None
    big = [b for b in blocks if b["rank"] >= 4]
    rec4 = _mean(_val(b["recovery"]) for b in big)
    st4 = tr.get("block_latent_stability_rank_ge_4")
    rule = ("held if atom MCC >= 0.9, atom latents' stability >= 0.8, rank >= 4 blocks' mean recovery >= 0.9 and "
            "their latents' stability at least 0.3 below the atom latents'")
    ok = [mcc is not None and mcc >= 0.9, a_stab is not None and a_stab >= 0.8, rec4 is not None and rec4 >= 0.9,
          st4 is not None and a_stab is not None and st4 <= a_stab - 0.3]
    verdict = _verdict(ok)
    why = (f"atoms: MCC {fmt(mcc)} (chance {fmt(_base(atoms['mcc']) if atoms else None)}), latent stability {fmt(a_stab)}; "
           f"rank >= 4 blocks: recovery {fmt(rec4)}, latent stability {fmt(st4)}")
    sec = Section(title, claim, verdict, why, paragraphs=[f"Rule: {rule}."])
    if atoms:
        k = [key for key in atoms if key.startswith("frac_recovered_") and key.count("_") == 2]
        fr = atoms[k[0]] if k else None
        sec.paragraphs.append(
            f"Atoms: {atoms['n_atoms']} planted; recovered at cos >= 0.9: {fmt(_val(fr))} (chance {fmt(_base(fr))}); "
            f"frequent half {fmt(atoms.get('frac_recovered_0.9_frequent_half'))}, rare half "
            f"{fmt(atoms.get('frac_recovered_0.9_rare_half'))}; recovered in some seeds but not all (competition of rare "
            f"atoms for latents): {fmt(atoms.get('frac_atoms_recovered_in_some_not_all_seeds'))}.")
    rows = []
    for b in blocks:
        span = b.get("span_reproducibility") or []
        rows.append([str(b["block"]), str(b["rank"]), "orthogonal" if b["orthogonal"] else "superposed", fmt(b["prob"], 4),
                     fmt(float(np.mean(b["n_assigned_per_seed"])), 1), f"{fmt(_val(b['recovery']))} ({fmt(_base(b['recovery']), 2)})",
                     fmt(b["stability"]), fmt(b["rotation_null"]), fmt(b["stability_minus_rotation_null"]),
                     fmt(span[0] if span else None), fmt(span[-1] if span else None)])
    if rows:
        sec.tables.append(Table(
            ["block", "rank", "geometry", "p(fire)", "latents/seed", "recovery (chance)", "stability", "rotation null",
             "stab - null", "span k=1", f"span k={len(blocks[0].get('span_reproducibility') or [1])}"], rows,
            "Planted subspaces: recovered as subspaces; their latents' stability beside the rotation null"))
    geo = tr.get("blocks_by_geometry", {})
    if geo:
        sec.tables.append(Table(["geometry", "blocks", "stability", "rotation null", "stability (rank>=4)", "null (rank>=4)", "recovery"],
                                [[g, str(v["n_blocks"]), fmt(v["mean_stability"]), fmt(v["mean_rotation_null"]),
                                  fmt(v["mean_stability_rank_ge_4"]), fmt(v["mean_rotation_null_rank_ge_4"]), fmt(v["mean_recovery"])]
                                 for g, v in geo.items()], "Orthogonal blocks (clean theory case) vs blocks in superposition"))
    # identifiability (latent stability) beside subspace recovery, per component rank and block geometry
    groups = sorted({(b["rank"], b["orthogonal"]) for b in blocks})
    labels = (["1 (atoms)"] if atoms else []) + [f"{r} {'orth' if o else 'sup'}" for r, o in groups]

    def per_group(key):
        return [_mean(_val(b[key]) for b in blocks if (b["rank"], b["orthogonal"]) == g) for g in groups]

    stab_v = ([a_stab] if atoms else []) + per_group("stability")
    null_v = ([None] if atoms else []) + per_group("rotation_null")
    rec_v = ([_val(fr) if k else None] if atoms else []) + per_group("recovery")
    if labels:
        sec.figures.append(figures.grouped_bars(
            fig_dir / "recovery_by_rank.png", labels,
            {"latent stability": (stab_v, None), "rotation null": (null_v, None), "recovery (atoms: frac >= 0.9)": (rec_v, None)},
            "value", "Identifiability of latents beside recovery of what they tile, by rank (orth = orthogonal, sup = superposed)"))
    return sec


def clusters_section(an: dict, lat: dict, fig_dir: Path) -> Section:
    title = "Unstable latents tile reproducible subspaces"
    claim = ("Unstable latents are not noise: clustered across seeds by span reproducibility they form low-rank "
             "subspaces that reproduce across seeds and, on synthetic data, line up with the planted blocks and ranks.")
    uc = _get(an, "unstable_clusters")
    if not uc:
        return _not_measured(title, claim, "the unstable-cluster analysis")
    sp = _get(an, "span_reproducibility")
    al = _get(an, "truth", "cluster_alignment")
    clusters = uc["clusters"]
    ov = [c["cross_seed_overlap"] for c in clusters]
    ovb = [c["cross_seed_overlap_baseline"] for c in clusters]
    frac_in = uc["frac_unstable_in_multi_seed_clusters"]
    un_span = sp["unstable"] if sp else []
    ok = [frac_in >= 0.5, bool(ov) and float(np.mean(ov)) >= float(np.mean(ovb)) + 0.3,
          bool(un_span) and un_span[-1] is not None and un_span[0] is not None and un_span[-1] >= un_span[0] + 0.1]
    rank_ok = None
    if al:
        pb = [b for b in al["per_block"] if b["largest_cluster_energy_rank_95"] is not None]
        rank_ok = (sum(abs(b["largest_cluster_energy_rank_95"] - b["rank"]) <= 1 for b in pb) / len(pb)) if pb else 0.0
        ok += [al["frac_clustered_latents_aligned_0.8"] >= 0.8, rank_ok >= 0.75]
    rule = ("held if >= 50% of unstable live latents fall in multi-seed clusters, clusters' cross-seed overlap is >= chance + 0.3, "
            "unstable latents' span reproducibility rises from k = 1 to k = 4 by >= 0.1"
            + ("; with a truth also >= 80% of clustered latents in clusters overlapping a planted block >= 0.8 and >= 75% of "
               "blocks' largest cluster within 1 of the planted rank (95%-energy rank)" if al else ""))
    verdict = _verdict(ok)
    why = (f"{uc['n_unstable_alive']} unstable live latents, {frac_in:.0%} in {uc['n_clusters_multi_seed']} multi-seed clusters; "
           f"cross-seed overlap {fmt(float(np.mean(ov)) if ov else None)} (chance {fmt(float(np.mean(ovb)) if ovb else None)})"
           + (f"; aligned with planted blocks {al['frac_clustered_latents_aligned_0.8']:.0%}, ranks right {rank_ok:.0%}" if al else ""))
    sec = Section(title, claim, verdict, why, paragraphs=[f"Rule: {rule}."])
    if sp:
        rows = [[str(k), f"{fmt(_val(a))} ({fmt(_base(a))})", fmt(s), fmt(u)]
                for k, a, s, u in zip(sp["k"], sp["all"], sp["stable"], sp["unstable"])]
        sec.tables.append(Table(["k", "all latents (random dict.)", "stable", "unstable"], rows,
                                "Span reproducibility: norm of a latent's projection on the span of its k nearest latents in another seed"))
    rows = [[str(i), str(c["size"]), str(c["n_seeds"]), fmt(c["effective_rank"], 2), str(c["energy_rank_95"]),
             f"{fmt(c['cross_seed_overlap'])} ({fmt(c['cross_seed_overlap_baseline'], 2)})",
             str(c.get("best_block", "-")), str(c.get("best_block_rank", "-")), fmt(c.get("best_block_overlap"))]
            for i, c in enumerate(clusters[:20])]
    if rows:
        sec.tables.append(Table(["cluster", "latents", "seeds", "eff. rank", "95% rank", "cross-seed overlap (chance)",
                                 "best block", "block rank", "overlap"], rows, "Largest multi-seed clusters of unstable latents"))
    if {"block_label", "atom_label", "cluster", "stability"} <= set(lat):
        sec.tables.append(_instability_sources(lat, s_cut=an["settings"]["unstable_cutoff"]))
    if al:
        blocks = _get(an, "truth", "blocks", default=[])
        by_block = {b["block"]: b for b in al["per_block"]}
        labels = [f"b{b['block']} r{b['rank']}{'o' if b['orthogonal'] else 's'}" for b in blocks]
        planted = [b["rank"] for b in blocks]
        found = [by_block.get(b["block"], {}).get("largest_cluster_energy_rank_95") for b in blocks]
        sec.figures.append(figures.grouped_bars(
            fig_dir / "clusters_vs_blocks.png", labels, {"planted rank": (planted, None), "largest cluster's 95% rank": (found, None)},
            "rank", "Unstable-latent clusters against planted blocks (o = orthogonal, s = superposed)"))
    return sec


def _instability_sources(lat: dict, s_cut: float) -> Table:
    """Unstable live latents split by what they sit on: a planted block (basis ambiguity), an atom, or neither
    (rare atoms competing for latents end up as mixtures), with how many join a multi-seed cluster."""
    st, bl, al, cl = lat["stability"], lat["block_label"], lat["atom_label"], lat["cluster"]
    live = lat["frequency"] > 0 if "frequency" in lat else np.ones_like(st, dtype=bool)
    un = live & (st <= s_cut)
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


def ablation_section(ab: dict | None, fig_dir: Path) -> Section:
    title = "Functional asymmetry (ablation)"
    claim = ("Stable latents carry most of the reconstruction and prediction signal; zeroing the unstable ones costs little, "
             "also per latent, against random groups of the same size and of matched frequency.")
    if not ab:
        return _not_measured(title, claim, "the ablation study")
    g = ab["groups"]
    pred = "pred" if any(k.startswith("delta_pred") for k in g.get("stable", {})) else None
    def m(name, key):  # noqa: E306
        return _get(g, name, key, "mean")
    ok = [(m("stable", "share_fvu") or 0) > (m("unstable", "share_fvu") or 0),
          (m("stable", "delta_fvu_per_latent") or 0) > (m("unstable", "delta_fvu_per_latent") or 0)]
    if pred:
        ok.append((m("stable", "share_pred") or 0) > (m("unstable", "share_pred") or 0))
    rule = "held if stable latents' share of the reconstruction cost and their cost per latent both exceed the unstable ones'" + (
        ", and likewise their share of the prediction cost" if pred else "")
    verdict = _verdict(ok)
    why = (f"share of FVU cost: stable {pm(m('stable', 'share_fvu'), _get(g, 'stable', 'share_fvu', 'std'))}, unstable "
           f"{pm(m('unstable', 'share_fvu'), _get(g, 'unstable', 'share_fvu', 'std'))}"
           + (f"; of prediction cost: stable {fmt(m('stable', 'share_pred'))}, unstable {fmt(m('unstable', 'share_pred'))}" if pred else ""))
    sec = Section(title, claim, verdict, why, paragraphs=[
        f"Rule: {rule}. Eval on {ab['eval_tokens']} held-out tokens; prediction cost: {ab.get('prediction_cost')}; "
        f"random groups: {ab['n_draws']} draws each; mean ± std over seeds."])
    metrics_ = ["fvu"] + (["pred"] if pred else [])
    rows = []
    for name, row in g.items():
        r = [name, pm(_get(row, "size", "mean"), _get(row, "size", "std"), 1), pm(_get(row, "mass_share", "mean"), _get(row, "mass_share", "std"))]
        for mt in metrics_:
            r += [pm(_get(row, f"share_{mt}", "mean"), _get(row, f"share_{mt}", "std")),
                  fmt(_get(row, f"delta_{mt}_per_latent", "mean"), 5), fmt(_get(row, f"share_{mt}_per_mass_share", "mean"), 2)]
        rows.append(r)
    headers = ["group", "latents", "mass share"]
    for mt in metrics_:
        headers += [f"share of {mt} cost", f"Δ{mt} / latent", f"{mt} share / mass share"]
    sec.tables.append(Table(headers, rows, "Zero a group, decode: cost as a share of zeroing every latent"))
    names = list(g)
    series = {f"share of {mt} cost": ([_get(g, n, f"share_{mt}", "mean") for n in names], [_get(g, n, f"share_{mt}", "std") for n in names])
              for mt in metrics_}
    series["mass share"] = ([_get(g, n, "mass_share", "mean") for n in names], None)
    sec.figures.append(figures.grouped_bars(fig_dir / "ablation.png", names, series, "share",
                                            "Ablation: stable vs unstable vs random groups (error bars: std over seeds)"))
    return sec


def pooling_section(po: dict | None, fig_dir: Path) -> Section:
    title = "Pooling seeds"
    claim = "Merging the unique latents of several seeds gives a more stable SAE at the same explained variance."
    if not po:
        return _not_measured(title, claim, "the pooling study")
    single = po["single"]
    s_pair = _get(single, "stability_between_halves", "mean")
    s_ev = _get(single, "ev", "mean")
    primary = f"coverage_w{po['base_width']}"
    rows, pts = [], {"single seeds": ([s_ev], [s_pair])}
    for name, v in po["variants"].items():
        ev, stab = _get(v, "ev_halves", "mean"), _get(v, "stability_pool_vs_pool", "mean")
        rows.append([name, str(_get(v, "pools", "A", "width", default="-")), pm(ev, _get(v, "ev_halves", "std")),
                     pm(_get(v, "l0_halves", "mean"), _get(v, "l0_halves", "std"), 2), pm(stab, _get(v, "stability_pool_vs_pool", "std")),
                     pm(_get(v, "stability_vs_heldout", "mean"), _get(v, "stability_vs_heldout", "std")),
                     fmt(_get(v, "pools", "all", "ev")), fmt(v.get("random_baseline"))])
        if ev is not None and stab is not None:
            pts[name] = ([ev], [stab])
    v = po["variants"].get(primary)
    rule = (f"held if the primary pool ({primary}: clusters ranked by seed coverage, base width) built from disjoint seed halves "
            "is more stable pool-vs-pool than single seeds are between halves (by >= 0.05) while its EV is within 0.01 of "
            "single seeds'; partly held if only one of the two, or if only another variant meets both")
    if v is None or s_pair is None:
        return Section(title, claim, "not measured", f"variant {primary} or the single-seed half-vs-half stability is missing")
    p_stab, p_ev = _get(v, "stability_pool_vs_pool", "mean"), _get(v, "ev_halves", "mean")
    ok_stab = p_stab is not None and p_stab >= s_pair + 0.05
    ok_ev = p_ev is not None and s_ev is not None and p_ev >= s_ev - 0.01
    others = [n for n, w in po["variants"].items() if n != primary
              and (_get(w, "stability_pool_vs_pool", "mean") or 0) >= s_pair + 0.05
              and (_get(w, "ev_halves", "mean") or -1) >= (s_ev or 0) - 0.01]
    verdict = "held" if ok_stab and ok_ev else ("partly held" if ok_stab or ok_ev or others else "did not hold")
    why = (f"{primary}: stability pool-vs-pool {fmt(p_stab)} vs single seeds between halves {fmt(s_pair)}; EV {fmt(p_ev)} vs "
           f"single {fmt(s_ev)}" + (f"; also meeting both: {', '.join(others)}" if others else ""))
    sec = Section(title, claim, verdict, why, paragraphs=[
        f"Rule: {rule}. Live latents: {po['live_rule']}. Pools refit for {po['refit_steps']} steps with the decoder frozen. "
        f"Single seeds: EV {pm(s_ev, _get(single, 'ev', 'std'))}, L0 {pm(_get(single, 'l0', 'mean'), _get(single, 'l0', 'std'), 2)}, "
        f"stability vs held-out seeds {pm(_get(single, 'stability_vs_heldout', 'mean'), _get(single, 'stability_vs_heldout', 'std'))}, "
        f"random-dictionary chance {fmt(single.get('random_baseline'))}."])
    sec.tables.append(Table(["variant", "width", "EV (halves)", "L0", "stability pool vs pool", "vs held-out seeds",
                             "EV (all seeds)", "chance"], rows, "Every pooling variant tried (mean ± std over the two halves)"))
    sec.figures.append(figures.scatter(fig_dir / "pooling.png", pts, "explained variance", "stability between halves",
                                       "Pooling: stability against explained variance"))
    return sec


# ----------------------------------------------------------------------------------------------- assembly


def build_sections(metrics: dict, lat: dict, fig_dir: Path) -> list[Section]:
    an = metrics.get("analysis") or {}
    return [
        stability_section(an, lat, fig_dir),
        frequency_section(an, lat, fig_dir),
        recovery_section(an, fig_dir),
        clusters_section(an, lat, fig_dir),
        ablation_section(metrics.get("ablation"), fig_dir),
        pooling_section(metrics.get("pooling"), fig_dir),
    ]


def _summary(run_dir: Path, metrics: dict) -> list[str]:
    s = _get(metrics, "analysis", "settings", default={})
    lines = [f"Run: {run_dir}."]
    if s:
        lines.append(f"{s.get('seeds')} seeds of a {s.get('variant', '?')} SAE, d_in = {s.get('d_in')}, d_sae = {s.get('d_sae')}; "
                     f"matching {s.get('match')} at tau = {s.get('tau')}; stable >= {s.get('stable_cutoff')}, "
                     f"unstable <= {s.get('unstable_cutoff')}.")
    tr = metrics.get("training")
    if isinstance(tr, dict) and tr.get("final_fvu") is not None:
        lines.append(f"Training: final FVU per seed {', '.join(fmt(v) for v in tr['final_fvu'])}.")
    return lines


def build_report(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write figures/*.png, report.md and report.html of a run from its saved files."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no metrics.json; run `synthsae analyze {run_dir}` (or `synthsae run`) first")
    metrics = json.loads(mpath.read_text())
    lat = load_latents(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    sections = build_sections(metrics, lat, fig_dir)
    return write_report(run_dir, title or f"synthsae report: {run_dir.name}", _summary(run_dir, metrics), sections)


def verdicts(run_dir: str | Path) -> list[tuple[str, str, str]]:
    """(claim title, verdict, numbers) for each section of a run's report (for terminal summaries and compare)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [(s.title, s.verdict, s.why) for s in build_sections(metrics, load_latents(run_dir), Path(tmp))]


# ----------------------------------------------------------------------------------------------- comparison

_KEY_NUMBERS = [  # (label, path into metrics.json, digits)
    ("mean stability (live)", ("analysis", "stability", "mean_alive", "value"), 3),
    ("random-dictionary chance", ("analysis", "stability", "mean_alive", "baseline"), 3),
    ("stable fraction (live)", ("analysis", "stability", "frac_stable_alive"), 3),
    ("unstable fraction (live)", ("analysis", "stability", "frac_unstable_alive"), 3),
    ("Spearman(log freq, stability)", ("analysis", "frequency", "spearman_log_freq_stability", "value"), 3),
    ("dead fraction", ("analysis", "frequency", "frac_dead"), 3),
    ("atom MCC", ("analysis", "truth", "atoms", "mcc", "value"), 3),
    ("atom-latent stability", ("analysis", "truth", "atoms", "atom_latent_stability"), 3),
    ("rank>=4 block-latent stability", ("analysis", "truth", "block_latent_stability_rank_ge_4"), 3),
    ("unstable in multi-seed clusters", ("analysis", "unstable_clusters", "frac_unstable_in_multi_seed_clusters"), 3),
    ("single-seed EV", ("pooling", "single", "ev", "mean"), 4),
    ("single-seed stability between halves", ("pooling", "single", "stability_between_halves", "mean"), 3),
    ("ablation: stable share of FVU cost", ("ablation", "groups", "stable", "share_fvu", "mean"), 3),
    ("ablation: unstable share of FVU cost", ("ablation", "groups", "unstable", "share_fvu", "mean"), 3),
]


def build_comparison(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """compare.md / compare.html: the runs' verdicts per claim and their key numbers side by side."""
    runs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{r.name}" for r in runs]
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    lats = [load_latents(r) for r in runs]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        per_run = [build_sections(m, lat, Path(tmp)) for m, lat in zip(metrics, lats)]
    variants = [_get(m, "analysis", "settings", "variant", default="?") for m in metrics]
    header = ["", *[f"{n} ({v})" for n, v in zip(names, variants)]]
    numbers = Table(header, [[label, *[fmt(_get(m, *path), digits) for m in metrics]] for label, path, digits in _KEY_NUMBERS],
                    "Key numbers")
    sections = []
    for i, first in enumerate(per_run[0]):
        vs = [secs[i].verdict for secs in per_run]
        measured = [v for v in vs if v != "not measured"]
        if not measured:
            overall = "not measured"
        elif all(v == "held" for v in measured):
            overall = "held"
        elif all(v == "did not hold" for v in measured):
            overall = "did not hold"
        else:
            overall = "partly held"
        why = "; ".join(f"{n}: {v}" for n, v in zip(names, vs))
        sec = Section(first.title, first.claim, overall, why,
                      tables=[Table(["run", "verdict", "numbers"], [[n, s[i].verdict, s[i].why] for n, s in zip(names, per_run)])])
        sections.append(sec)
    sweep_series = {}
    for n, m in zip(names, metrics):
        sw = _get(m, "analysis", "stability", "sweep", default=[])
        if sw:
            sweep_series[n] = ([r["tau"] for r in sw], [r["mean_stability"] for r in sw])
    if sweep_series:
        sections[0].figures.append(figures.scatter(fig_dir / "compare_sweep.png", sweep_series, "tau", "mean stability",
                                                   "Mean stability against the matching threshold"))
    hist = {n: lat["stability"][lat["frequency"] > 0] if "frequency" in lat else lat["stability"]
            for n, lat in zip(names, lats) if "stability" in lat}
    if hist:
        sections[0].figures.append(figures.histogram(fig_dir / "compare_stability.png", hist, "stability",
                                                     "Per-latent stability of each run", bins=np.linspace(0, 1, 11)))
    sections[0].tables.insert(0, numbers)
    from synthsae.fileio import atomic_write_text
    from synthsae.report_render import render_html, render_markdown

    title = "synthsae comparison: " + ", ".join(names)
    summary = [f"Runs: {', '.join(str(r) for r in runs)}."]
    md, page = out_dir / "compare.md", out_dir / "compare.html"
    atomic_write_text(md, render_markdown(title, summary, sections))
    atomic_write_text(page, render_html(title, summary, sections, fig_dir))
    return md, page

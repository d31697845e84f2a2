"""report.md / report.html of a real run: the shared sections where they apply, plus fidelity, triggers and convergence.

Stability, frequency, unstable clusters, ablation and pooling are the synthetic report's own sections and verdicts
(no truth, so no recovery section; the ablation's prediction cost is the spliced next-token KL); fidelity (CE loss
recovered), triggers and convergence exist only here.
Each section states its rule, and every rule is tested on a planted case where it must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthsae import figures
from synthsae.report_render import Section, Table, fmt, pm, write_report


CONV_STAB_REL, CONV_STAB_ABS, CONV_FVU_REL = 0.05, 0.001, 0.02  # convergence bounds (last two checkpoints)


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _verdict(checks: list[bool]) -> str:
    return "held" if all(checks) else ("partly held" if any(checks) else "did not hold")


def fidelity_section(sp: dict | None, ab=None) -> Section:
    """CE loss recovered with the reconstruction spliced in; with the ablation, each group's share of the CE cost."""
    title = "Reconstruction spliced into the model"
    claim = "The SAEs reconstruct the layer well enough to stand in for it: CE loss recovered >= 0.8 against zero-ablation."
    if not sp:
        return Section(title, claim, "not measured", "the splice numbers are missing from metrics.json")
    rec = _get(sp, "ce_recovered", "mean")
    ok = rec is not None and rec >= 0.8
    why = (f"CE recovered {pm(rec, _get(sp, 'ce_recovered', 'std'))} (mean ± std over seeds); clean CE {fmt(sp['ce_clean'])}, "
           f"spliced {pm(_get(sp, 'ce_spliced', 'mean'), _get(sp, 'ce_spliced', 'std'))}, zero-ablation "
           f"{fmt(sp['ce_zero_ablation'])} nats; KL to clean {fmt(_get(sp, 'kl_spliced', 'mean'))}; FVU "
           f"{fmt(_get(sp, 'fvu_spliced', 'mean'))}")
    sec = Section(title, claim, "held" if ok else "did not hold", why, paragraphs=[
        f"Rule: held if CE loss recovered >= 0.8. Spliced after block {sp['layer']} on {sp['splice_windows']} held-out "
        f"windows ({sp['splice_tokens']} predicted tokens). {sp.get('definition', '')}."])
    if ab is not None:
        rows = []
        for name, g in ab.groups.items():
            c = g.costs.get("ce")
            if c is not None:
                rows.append([name, pm(g.size.mean, g.size.std, 1), pm(c.share.mean, c.share.std), fmt(c.per_latent.mean, 5),
                             pm(c.share_per_mass_share.mean, c.share_per_mass_share.std, 2)])
        sec.tables.append(Table(["group", "latents", "share of the CE cost", "dCE / latent (nats)", "CE share / mass share"],
                                rows, "Next-token cross-entropy when a group is zeroed (share of zeroing every latent)"))
    return sec


def triggers_section(tr: dict | None, trig: dict | None, lat: dict, fig_dir: Path, examples: list[str]) -> Section:
    title = "Unstable latents fire on surface-form triggers"
    claim = ("Unstable latents fire rarely and on single tokens: a higher surface-form score (share of their activation "
             "mass on one token) and lower token entropy than stable latents.")
    if not tr or not tr.get("stable") or not tr.get("unstable"):
        return Section(title, claim, "not measured", "trigger statistics are missing from metrics.json")
    s, u = tr["stable"], tr["unstable"]
    if not s["n"] or not u["n"]:
        return Section(title, claim, "not measured", f"{s['n']} stable and {u['n']} unstable live latents: need both")
    ok = [(u["surface_score_median"] or 0) >= (s["surface_score_median"] or 0) + 0.1,
          (u["token_entropy_median"] or 0) < (s["token_entropy_median"] or 0),
          (u["frequency_median"] or 1) < (s["frequency_median"] or 0)]
    why = (f"median surface-form score unstable {fmt(u['surface_score_median'])} vs stable {fmt(s['surface_score_median'])}; "
           f"token entropy {fmt(u['token_entropy_median'], 2)} vs {fmt(s['token_entropy_median'], 2)} bits; frequency "
           f"{fmt(u['frequency_median'], 5)} vs {fmt(s['frequency_median'], 5)}")
    sec = Section(title, claim, _verdict(ok), why, paragraphs=[
        "Rule: held if unstable latents' median surface-form score exceeds stable ones' by >= 0.1, their median token "
        f"entropy is lower and their median firing frequency is lower. {tr['definition']}; on {tr['eval_tokens']} held-out tokens."])
    rows = [[name, str(r["n"]), fmt(r["surface_score_median"]), fmt(r["frac_surface_ge_0.5"]), fmt(r["token_entropy_median"], 2),
             fmt(r["frequency_median"], 5)] for name, r in (("stable", s), ("unstable", u))]
    sec.tables.append(Table(["group", "live latents", "median surface score", "share with score >= 0.5",
                             "median token entropy (bits)", "median frequency"], rows))
    if trig is not None and "stability" in lat:
        stab = lat["stability"]
        score = trig["surface_score"]
        live = trig["frequency"] > 1e-5
        ss = live & (stab >= 0.8) & np.isfinite(score)
        uu = live & (stab <= 0.2) & np.isfinite(score)
        sec.figures.append(figures.histogram(fig_dir / "surface_score.png", {"stable": score[ss], "unstable": score[uu]},
                                             "surface-form score", "Share of a latent's activation mass on its top token",
                                             bins=np.linspace(0, 1, 21)))
    sec.paragraphs += examples
    return sec


def convergence_section(train: dict | None, fig_dir: Path) -> Section:
    title = "Convergence"
    claim = (f"The SAEs converged: between the last two checkpoints the mean stability of live latents changed by less "
             f"than {CONV_STAB_REL:.0%} of itself (or {CONV_STAB_ABS} absolute) and the eval FVU by less than "
             f"{CONV_FVU_REL:.0%} of itself.")
    conv = (train or {}).get("convergence") or []
    if len(conv) < 2:
        return Section(title, claim, "not measured", "fewer than two convergence checkpoints in train.json")
    a, b = conv[-2], conv[-1]
    fa, fb = float(np.mean(a["fvu"])), float(np.mean(b["fvu"]))
    sa, sb = a["mean_stability_live"] or 0.0, b["mean_stability_live"] or 0.0
    ok = [abs(sb - sa) <= max(CONV_STAB_REL * max(sa, sb), CONV_STAB_ABS), abs(fb - fa) <= CONV_FVU_REL * max(fa, fb)]
    verdict = _verdict(ok)
    why = (f"mean stability {sa:.4f} -> {sb:.4f}, stable share {a['frac_stable_live']:.4f} -> {b['frac_stable_live']:.4f}, "
           f"FVU {fa:.4f} -> {fb:.4f} between {a['tokens_per_seed']} and {b['tokens_per_seed']} training tokens per seed")
    paras = ["Rule: held if both changes are below their bounds." +
             ("" if verdict == "held" else " This run did NOT converge: more tokens or passes would change its stability "
                                           "numbers, so read the other sections as a snapshot, not a result.")]
    sec = Section(title, claim, verdict, why, paragraphs=paras)
    sec.tables.append(Table(["step", "tokens / seed", "FVU", "L0", "mean stability (live)", "stable", "unstable", "live"],
                            [[str(c["step"]), str(c["tokens_per_seed"]), fmt(float(np.mean(c["fvu"]))), fmt(float(np.mean(c["l0"])), 1),
                              fmt(c["mean_stability_live"]), fmt(c["frac_stable_live"]), fmt(c["frac_unstable_live"]),
                              fmt(c["frac_live"])] for c in conv], "Stability against training tokens"))
    x = np.array([c["tokens_per_seed"] for c in conv], dtype=float)
    sec.figures.append(figures.scatter(fig_dir / "convergence.png", {
        "stable share (live)": (x, np.array([c["frac_stable_live"] for c in conv])),
        "unstable share (live)": (x, np.array([c["frac_unstable_live"] for c in conv])),
        "FVU": (x, np.array([float(np.mean(c["fvu"])) for c in conv]))},
        "training tokens per seed", "share / FVU", "Convergence: stability and FVU against training tokens"))
    return sec


def _examples(run_dir: Path, trig: dict, lat: dict, tokenizer, n_latents: int = 4) -> list[str]:
    """A few stable and unstable latents of seed 0 with their top token and strongest contexts ([[token]] marked)."""
    if tokenizer is None or trig is None or "stability" not in lat:
        return []
    from real.activations import ActivationStore
    from real.triggers import context_snippet

    try:
        store = ActivationStore(run_dir / "acts")
    except Exception:  # noqa: BLE001 - examples are optional
        return []
    tokens = store.tokens()
    n = int(trig["top_rows"].max()) + 1 if trig["top_rows"].size else 0
    ctx = store.load("eval", "context_ids", limit=n).numpy()
    pos = store.load("eval", "positions", limit=n).numpy()
    out = []
    stab, freq = lat["stability"][0], trig["frequency"][0]
    for name, sel in (("stable", stab >= 0.8), ("unstable", stab <= 0.2)):
        idx = np.where(sel & (freq > 0))[0]
        idx = idx[np.argsort(-freq[idx])][:n_latents]
        for i in idx:
            rows = [r for r in trig["top_rows"][0, i] if r >= 0]
            snips = [context_snippet(tokenizer, tokens[ctx[r]], int(pos[r])) for r in rows]
            top = tokenizer.decode([int(trig["top_token"][0, i])]) if trig["top_token"][0, i] >= 0 else "?"
            out.append(f"{name} latent {i} (stability {stab[i]:.2f}, frequency {freq[i]:.4f}, surface score "
                       f"{trig['surface_score'][0, i]:.2f}, top token {top!r}): " + " | ".join(snips))
    return out


def atlas_section(at) -> Section:
    """The atlas stage (an AtlasResult): the synthetic report's atlas section (verdict on held-out seeds, kinds), plus
    the rank histogram and the EV and spliced CE the reproducible features carry against the remainder."""
    from synthsae.metrics.atlas_run import atlas_verdict
    from synthsae.report import atlas_sections

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
        ["latents kept", "EV share", "CE share", "CE (nats)", "CE recovered", "KL to clean (nats)"],
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


def build_real_report(run_dir: str | Path, tokenizer=None) -> tuple[Path, Path]:
    """figures/*.png, report.md and report.html of a real run from its saved files."""
    from synthsae.metrics_file import read_metrics
    from synthsae.report import (ablation_section, clusters_section, frequency_section, load_latents, pooling_section,
                                 stability_section)
    from synthsae.verdicts import all_verdicts

    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no metrics.json; run `synthsae real run` first")
    m = read_metrics(mpath)
    raw = json.loads(mpath.read_text())
    train = json.loads((run_dir / "train.json").read_text()) if (run_dir / "train.json").is_file() else None
    lat = load_latents(run_dir)
    trig = None
    if (run_dir / "triggers.safetensors").is_file():
        from safetensors.numpy import load_file

        trig = load_file(str(run_dir / "triggers.safetensors"))
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    v = all_verdicts(m.analysis, m.ablation, m.pooling)  # stability, frequency, recovery, clusters, ablation, pooling
    sections = [
        convergence_section(train, fig_dir),
        fidelity_section(raw.get("splice"), m.ablation),
        stability_section(v[0], m.analysis, lat, fig_dir),
        frequency_section(v[1], m.analysis, lat, fig_dir),
        clusters_section(v[3], m.analysis, lat, fig_dir),
        ablation_section(v[4], m.ablation, fig_dir),
        triggers_section(raw.get("triggers"), trig, lat, fig_dir, _examples(run_dir, trig, lat, tokenizer)),
        pooling_section(v[5], m.pooling, fig_dir),
        atlas_section(m.atlas),
    ]
    cfg = json.loads((run_dir / "real_config.json").read_text()) if (run_dir / "real_config.json").is_file() else {}
    c, s = cfg.get("collect", {}), cfg.get("sae", {})
    meta = json.loads((run_dir / "acts" / "meta.json").read_text()) if (run_dir / "acts" / "meta.json").is_file() else {}
    counts = meta.get("counts", {})
    summary = [f"Run: {run_dir}. Model {c.get('model')}, residual stream after block {c.get('layer')} "
               f"(d = {meta.get('d_model')}); windows of {c.get('ctx_len')} tokens from {meta.get('corpus')}.",
               f"Tokens kept {counts.get('kept')}; left out: position 0 {counts.get('position0')}, padding "
               f"{counts.get('padding')}, norm outliers {counts.get('outliers')} ({meta.get('outlier_rule')}).",
               f"{cfg.get('train', {}).get('seeds')} seeds of {s.get('variant')} d_sae = {s.get('d_sae')}, k = {s.get('k')}, "
               f"{cfg.get('passes')} passes ({(train or {}).get('tokens_per_seed')} training tokens per seed); activations "
               f"scaled by {fmt((train or {}).get('norm_scaling_factor'), 4)} (SAELens expected_average_only_in)."]
    return write_report(run_dir, f"synthsae real report: {run_dir.name}", summary, sections)

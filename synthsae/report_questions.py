"""Report sections for the questions the analysis answers beside the claims: does stability mark true features
(planted truth only), how many seeds are enough, and stability or stabilization (seed modes). Built from the typed
results and the per-latent arrays; their verdicts and registration are with the other claims (synthsae.report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthsae import figures
from synthsae.report_render import Section, Table, fmt, verdict_section
from synthsae.results import AnalysisResult, SeedModesResult, Verdict


def truth_filter_section(v: Verdict, an: AnalysisResult | None, lat: dict, fig_dir: Path) -> Section:
    sec = verdict_section(v)
    tf = an.truth_filter if an is not None else None
    if tf is None:
        return sec
    sec.paragraphs.append(
        f"{tf.n_live} live latents: {tf.n_true} true ({tf.n_true_atom} on an atom, {tf.n_true_block} in a block; a "
        f"latent may be both), base rate {fmt(tf.base_rate)}. Mean stability of true latents "
        f"{fmt(tf.mean_stability_true)}, of the others {fmt(tf.mean_stability_not_true)}. Null: the rotated-seeds "
        "null's stability scored against the same labels.")
    sec.tables.append(Table(
        ["score", "AUROC", "rotated-seeds null"],
        [["stability", fmt(tf.auroc.value), fmt(tf.auroc.baseline)],
         ["soft stability", fmt(tf.auroc_soft.value), fmt(tf.auroc_soft.baseline)],
         ["stability, atom latents vs not true", fmt(tf.auroc_atoms), "-"],
         ["stability, block latents vs not true", fmt(tf.auroc_blocks), "-"]],
        "How well stability ranks true latents above the rest (0.5 = no better than chance)"))
    sec.tables.append(Table(
        ["detector", "keeps", "precision (null)", "recall (null)", "base rate"],
        [[f"stability >= {tf.stable_cutoff}", fmt(tf.frac_stable), f"{fmt(tf.precision.value)} ({fmt(tf.precision.baseline)})",
          f"{fmt(tf.recall.value)} ({fmt(tf.recall.baseline)})", fmt(tf.base_rate)]],
        "'Stable' as a filter for true latents"))
    if {"stability", "true_feature"} <= set(lat):
        live = lat["frequency"] > 0 if "frequency" in lat else np.ones_like(lat["stability"], dtype=bool)
        true = lat["true_feature"].astype(bool)
        s = an.settings.seeds
        sec.figures.append(figures.histogram(
            fig_dir / "stability_true_vs_not.png",
            {"true latents": lat["stability"][live & true], "not true": lat["stability"][live & ~true]},
            "stability", "Stability of true and not-true live latents",
            bins=np.linspace(0, 1, s + 1) if s <= 20 else 20, vlines={"stable cut-off": tf.stable_cutoff}))
    return sec


def seed_budget_section(v: Verdict, an: AnalysisResult | None, fig_dir: Path) -> Section:
    from synthsae.metrics.seed_budget import budget_sentence

    sec = verdict_section(v)
    sb = an.seed_budget if an is not None else None
    if sb is None or not sb.rows:
        return sec
    n0 = sb.smallest_n_within_target
    sec.paragraphs.append(
        "; ".join(budget_sentence(sb, r.n) for r in sb.rows[:1] + sb.rows[-1:]) + ". Smallest n from which every n < S "
        f"is within +-{sb.target}: {n0 if n0 is not None else f'none of n < {sb.seeds}'}. The stable cut-off needs "
        f"ceil({sb.stable_cutoff} (n-1)) matches among the other n-1 seeds, so the stable share moves in steps with n; "
        "mean stability does not (it is unbiased at every n).")
    sec.tables.append(Table(
        ["n", "subsets", "stable share", f"within (±, {sb.quantile:.0%})", "mean stability", "within (±)",
         "per-latent within (±)", "per-latent mean abs. deviation"],
        [[str(r.n), f"{r.n_subsets}{'' if r.all_subsets else ' (sampled)'}", fmt(r.stable_share_mean),
          fmt(r.stable_share_within), fmt(r.mean_stability_mean), fmt(r.mean_stability_within), fmt(r.latent_within),
          fmt(r.latent_mean_abs_dev)] for r in sb.rows]
        + [[f"{sb.seeds} (all)", "1", fmt(sb.stable_share_all), "0", fmt(sb.mean_stability_all), "0", "0", "0"]],
        "Stability recomputed from subsets of n seeds, against all S seeds (live latents)"))
    ns = [r.n for r in sb.rows]
    sec.figures.append(figures.scatter(
        fig_dir / "seed_budget.png",
        {"stable share": (ns, [r.stable_share_within for r in sb.rows]),
         "mean stability": (ns, [r.mean_stability_within for r in sb.rows]),
         "per-latent stability": (ns, [r.latent_within for r in sb.rows])},
        "seeds n", f"{sb.quantile:.0%} spread against all {sb.seeds} seeds", "How many seeds are enough"))
    return sec


def seed_modes_section(v: Verdict, sm: SeedModesResult) -> Section:
    sec = verdict_section(v)
    ind = next((r for r in sm.rows if r.mode == "independent"), None)
    sec.paragraphs.append("Each mode is the run's config with only train.seed_mode changed, trained into seed_modes/<mode>/ "
                          "and analysed with the run's settings. independent: own init, own data stream; shared_init: one "
                          "init, own data streams; shared_data: own init, one data stream.")
    sec.tables.append(Table(
        ["seed mode", "mean stability (null)", "minus independent", "stable share (null)", "AUROC for true latents", "EV"],
        [[r.mode + (" (this run)" if r.own else ""), f"{fmt(r.stability.value)} ({fmt(r.stability.baseline)})",
          fmt(r.stability.value - ind.stability.value) if ind is not None and r.stability.value is not None
          and ind.stability.value is not None else "-",
          f"{fmt(r.frac_stable.value)} ({fmt(r.frac_stable.baseline)})", fmt(r.truth_auroc), fmt(r.ev, 4)] for r in sm.rows],
        "The same config under each seed mode"))
    return sec

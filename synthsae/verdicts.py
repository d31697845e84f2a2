"""Verdict rules: each claim's checks, computed from the typed results alone (no figures, no files).

A check compares a measured number with a control that went through the same procedure (the rotated-seeds
null, frequency-matched random groups, the pool's own rotated null, single seeds, bagging). Core checks decide
"did not hold"; supporting ones can only lower "held" to "partly held". Thresholds are module constants and
docs/metrics.md states every rule.
"""

from __future__ import annotations

import math

import numpy as np

from synthsae.results import AblationResult, AnalysisResult, Chance, Check, PoolingResult, SeedModesResult, Verdict

MARGIN = 0.1  # a number must beat its null by this much (stability, cluster and span fractions)
STABLE_FRAC_MIN = 0.2  # a stable core: at least this share of live latents ...
UNSTABLE_FRAC_MIN = 0.05  # ... and an unstable fringe of at least this share
SPEARMAN_MARGIN = 0.2  # Spearman(log frequency, stability) above the null's by this much
RARITY_MARGIN = 0.1  # unstable latents' median log10 frequency below stable ones' by this many decades (x0.79) ...
# ... and below the 5% quantile of the same difference for random disjoint splits of the live latents
MCC_MIN, MCC_MARGIN = 0.9, 0.3  # atoms identifiable: MCC at least this, and this far above a random dictionary's
ATOM_STABLE_MIN = 0.8  # atom latents' mean stability
RECOVERY_MIN = 0.9  # subspaces recovered (mean over the blocks, a block without latents counts 0)
NULL_BAND = 0.15  # orthogonal blocks: |stability - rotation null| within this band
BLOCK_GAP = 0.3  # rank >= 4 block latents at least this much less stable than atom latents
RISE_MARGIN = 0.1  # span reproducibility: share of the gap to 1 closed from k = 1 to k_max, above the null's by this much
ALIGNED_MIN, RANK_RIGHT_MIN = 0.8, 0.75  # clusters inside planted blocks; blocks with the right cluster rank
POOL_GAIN = 0.05  # pooled SAE more stable than single seeds between halves by this much
EV_TOL = 0.01  # pooled EV at most this far below single seeds'
L0_TOL = 1.1  # pooled L0 at most this factor above single seeds'


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def above(c: Chance, margin: float) -> bool:
    """value >= baseline + margin, False when either is undefined (an unmeasurable control never passes)."""
    return _ok(c.value) and _ok(c.baseline) and c.value >= c.baseline + margin


def decide(checks: list[Check]) -> str:
    """held: every check passed; did not hold: a core check failed; partly held: only supporting ones failed."""
    if not checks:
        return "not measured"
    if any(c.core and not c.passed for c in checks):
        return "did not hold"
    return "held" if all(c.passed for c in checks) else "partly held"


def _verdict(title: str, claim: str, rule: str, checks: list[Check], why: str) -> Verdict:
    return Verdict(title, claim, rule, decide(checks), why, checks)


def not_measured(title: str, claim: str, what: str) -> Verdict:
    return Verdict(title, claim, "-", "not measured", f"{what} is missing from this run's metrics.json", [])


# ----------------------------------------------------------------------------------------------- analysis claims

STABILITY = ("Stability distribution",
             "Latents split into a stable core (they come back in most other seeds) and an unstable fringe, and "
             "latents come back more often than when the seeds share nothing (the rotated-seeds null).")


def stability_verdict(an: AnalysisResult | None) -> Verdict:
    if an is None:
        return not_measured(*STABILITY, "the analysis")
    st = an.stability
    checks = [
        Check("mean stability above the rotated-seeds null", above(st.mean, MARGIN),
              True, f"{_f(st.mean.value)} vs null {_f(st.mean.baseline)} (+{MARGIN})"),
        Check("a stable core", _ok(st.frac_stable.value) and st.frac_stable.value >= STABLE_FRAC_MIN
              and above(st.frac_stable, MARGIN), True,
              f"{_f(st.frac_stable.value)} stable vs null {_f(st.frac_stable.baseline)} (>= {STABLE_FRAC_MIN} and null + {MARGIN})"),
        Check("an unstable fringe", _ok(st.frac_unstable.value) and st.frac_unstable.value >= UNSTABLE_FRAC_MIN, True,
              f"{_f(st.frac_unstable.value)} unstable (>= {UNSTABLE_FRAC_MIN})"),
    ]
    rule = (f"held if, over {st.over} latents, the mean stability is >= the rotated-seeds null + {MARGIN}, >= "
            f"{STABLE_FRAC_MIN:.0%} are stable (and the stable fraction beats the null's by {MARGIN}) and >= "
            f"{UNSTABLE_FRAC_MIN:.0%} are unstable; all checks are core")
    s = an.settings
    why = (f"{_f(st.frac_stable.value, 2)} of {st.over} latents stable, {_f(st.frac_unstable.value, 2)} unstable at tau = "
           f"{s.tau} ({s.match}); mean stability {_f(st.mean.value)} vs rotated-seeds null {_f(st.mean.baseline)}")
    return _verdict(*STABILITY, rule, checks, why)


FREQUENCY = ("Stability against firing frequency", "Unstable latents fire rarely: stability rises with firing frequency.")


def rarity_check(fq) -> Check:
    """'Unstable latents fire less often than stable ones': the one definition, sample and answer the Frequency and
    Triggers sections share (a FrequencyResult's rarity: median log10 frequency difference against random splits)."""
    r = fq.rarity if fq is not None else None
    val, q05 = (r.value, r.baseline) if r is not None else (None, None)
    ok = _ok(val) and _ok(q05) and val <= -RARITY_MARGIN and val < q05
    fs, fu = (fq.median_freq_stable, fq.median_freq_unstable) if fq is not None else (None, None)
    return Check("unstable latents fire less often than stable ones", ok, True,
                 f"median frequency unstable {_f(fu, 5)} vs stable {_f(fs, 5)}: log10 difference {_f(val)} (<= "
                 f"-{RARITY_MARGIN} and < random splits' 5% quantile {_f(q05)})")


RARITY_RULE = (f"unstable live latents' median log10 frequency lies >= {RARITY_MARGIN} below stable ones' and below the "
               f"5% quantile of the same difference between random disjoint groups of the same sizes drawn from all live "
               f"latents (every seed pooled; a missing null fails)")


def always_on_text(fq) -> str:
    """How many latents fire on (nearly) every token, per seed, and how many of them are stable."""
    if fq is None or not fq.always_on_per_seed:
        return "always-on latents: not measured"
    return (f"always-on latents (frequency >= {fq.always_on_cutoff}): {list(fq.always_on_per_seed)} per seed, "
            f"{fq.always_on_stable} of them stable")


def frequency_verdict(an: AnalysisResult | None) -> Verdict:
    fq = an.frequency if an is not None else None
    if fq is None:
        return not_measured(*FREQUENCY, "firing frequency")
    rho = fq.spearman
    checks = [
        Check("Spearman(log frequency, stability) above the null's", above(rho, SPEARMAN_MARGIN), True,
              f"{_f(rho.value)} vs null {_f(rho.baseline)} (+{SPEARMAN_MARGIN})"),
        rarity_check(fq),
    ]
    rule = (f"held if Spearman(log10 frequency, stability) over live latents is >= the same correlation with the "
            f"rotated-seeds null's stability + {SPEARMAN_MARGIN}, and {RARITY_RULE}; both core")
    r = fq.rarity
    why = (f"Spearman {_f(rho.value)} vs null {_f(rho.baseline)}; median frequency unstable {_f(fq.median_freq_unstable, 5)} "
           f"vs stable {_f(fq.median_freq_stable, 5)} (log10 difference {_f(r.value if r else None)}, random splits' 5% "
           f"quantile {_f(r.baseline if r else None)}); {fq.n_dead} dead latents ({fq.frac_dead:.1%}, {fq.dead_rule}); "
           f"{always_on_text(fq)}")
    return _verdict(*FREQUENCY, rule, checks, why)


RECOVERY = ("Truth recovery by component rank",
            "Rank-1 atoms give identifiable, stable latents; inside isotropic subspaces the subspace is recovered but "
            "its latents are not identifiable (their stability sits at the rotation null, far below the atoms').")


def recovery_verdict(an: AnalysisResult | None) -> Verdict:
    tr = an.truth if an is not None else None
    if tr is None:
        return not_measured(*RECOVERY, "a planted truth (real-data runs have none)")
    checks: list[Check] = []
    at = tr.atoms
    if at is not None:
        checks.append(Check("atoms identifiable (MCC)", _ok(at.mcc.value) and at.mcc.value >= MCC_MIN and above(at.mcc, MCC_MARGIN),
                            True, f"MCC {_f(at.mcc.value)} vs random dictionary {_f(at.mcc.baseline)}"))
        checks.append(Check("atom latents stable", _ok(at.atom_latent_stability) and at.atom_latent_stability >= ATOM_STABLE_MIN,
                            True, f"atom-latent stability {_f(at.atom_latent_stability)} (>= {ATOM_STABLE_MIN})"))
    orth = [b for b in tr.blocks if b.orthogonal]
    sup = [b for b in tr.blocks if not b.orthogonal]
    if orth:
        rec = float(np.mean([b.recovery.value for b in orth]))
        checks.append(Check("orthogonal blocks recovered as subspaces", rec >= RECOVERY_MIN, True,
                            f"mean recovery {_f(rec)} over {len(orth)} orthogonal blocks (>= {RECOVERY_MIN})"))
        off = [b for b in orth if b.stability_minus_rotation_null is None or abs(b.stability_minus_rotation_null) > NULL_BAND]
        checks.append(Check("orthogonal blocks' latents at their rotation null", not off, True,
                            "stability - null: " + ", ".join(f"b{b.block} {_f(b.stability_minus_rotation_null, 2)}" for b in orth)
                            + f" (band ±{NULL_BAND}; a block without latents fails)"))
    if tr.block_latent_stability_rank_ge_4 is not None or any(b.rank >= 4 for b in tr.blocks):
        bs, as_ = tr.block_latent_stability_rank_ge_4, at.atom_latent_stability if at else None
        checks.append(Check("rank >= 4 block latents far less stable than atom latents",
                            _ok(bs) and _ok(as_) and bs <= as_ - BLOCK_GAP, True,
                            f"{_f(bs)} vs atoms {_f(as_)} (gap >= {BLOCK_GAP})"))
    if sup:
        rec_s = float(np.mean([b.recovery.value for b in sup]))
        checks.append(Check("superposed blocks recovered as subspaces", rec_s >= RECOVERY_MIN, False,
                            f"mean recovery {_f(rec_s)} over {len(sup)} superposed blocks (>= {RECOVERY_MIN})"))
    rule = (f"core: atom MCC >= {MCC_MIN} and >= a random dictionary's + {MCC_MARGIN}; atom latents' stability >= "
            f"{ATOM_STABLE_MIN}; orthogonal blocks' mean recovery >= {RECOVERY_MIN} and each orthogonal block's latent "
            f"stability within ±{NULL_BAND} of its rotation null; rank >= 4 block latents' stability <= atom latents' - "
            f"{BLOCK_GAP}. Supporting: superposed blocks' mean recovery >= {RECOVERY_MIN}. Superposed blocks' stability "
            "is reported against the null with its sign (superposition may break the symmetry)")
    diffs = [b.stability_minus_rotation_null for b in sup if b.stability_minus_rotation_null is not None]
    why = (f"atoms: MCC {_f(at.mcc.value) if at else '-'} (chance {_f(at.mcc.baseline) if at else '-'}), latent stability "
           f"{_f(at.atom_latent_stability) if at else '-'}; rank >= 4 block latents {_f(tr.block_latent_stability_rank_ge_4)}"
           + (f"; superposed blocks: stability - null {'+' if np.mean(diffs) >= 0 else ''}{np.mean(diffs):.3f} on average "
              f"({sum(d > 0 for d in diffs)} of {len(diffs)} above)" if diffs else ""))
    return _verdict(*RECOVERY, rule, checks, why)


def _gap_closed(first: float | None, last: float | None) -> float | None:
    """(s_kmax - s_1) / (1 - s_1): how much of what the best single neighbour leaves the extra neighbours recover
    (a raw rise is capped by 1 - s_1, so latents that are already well matched at k = 1 cannot rise much)."""
    if not _ok(first) or not _ok(last) or first >= 1.0 - 1e-9:
        return None
    return (last - first) / (1.0 - first)


CLUSTERS = ("Unstable latents tile reproducible subspaces",
            "Unstable latents are not noise: clustered across seeds by span reproducibility they form low-rank "
            "subspaces that reproduce across seeds and, on synthetic data, line up with the planted blocks and ranks.")


def clusters_verdict(an: AnalysisResult | None) -> Verdict:
    if an is None:
        return not_measured(*CLUSTERS, "the unstable-cluster analysis")
    uc, sp = an.unstable_clusters, an.span_reproducibility
    last, first = (sp.unstable[-1], sp.unstable[0]) if sp.unstable else (Chance(None, None), Chance(None, None))
    rise = Chance(_gap_closed(first.value, last.value), _gap_closed(first.baseline, last.baseline))
    checks = [
        Check("unstable latents fall in multi-seed clusters more than under the null",
              uc.n_unstable > 0 and above(uc.frac_in_multi_seed, MARGIN), True,
              f"{uc.n_unstable} unstable latents, {_f(uc.frac_in_multi_seed.value)} clustered vs null "
              f"{_f(uc.frac_in_multi_seed.baseline)} (+{MARGIN})"),
        Check(f"unstable latents' span reproducibility at k = {sp.k[-1] if sp.k else '-'} above the null's",
              uc.n_unstable > 0 and above(last, MARGIN), True, f"{_f(last.value)} vs null {_f(last.baseline)} (+{MARGIN})"),
        Check("span reproducibility rises with k more than under the null", uc.n_unstable > 0 and above(rise, RISE_MARGIN), False,
              f"share of the gap to 1 closed from k = 1 to k_max: {_f(rise.value)} vs null {_f(rise.baseline)} (+{RISE_MARGIN}); "
              f"random dictionary {_f(_gap_closed(sp.random_dictionary[0], sp.random_dictionary[-1]) if sp.random_dictionary else None)}"),
    ]
    al = an.truth.cluster_alignment if an.truth is not None else None
    if al is not None:
        checks.append(Check("clustered latents lie in planted blocks", al.frac_clustered_latents_aligned >= ALIGNED_MIN, False,
                            f"{_f(al.frac_clustered_latents_aligned)} of clustered latents in clusters overlapping a block >= 0.8 "
                            f"(>= {ALIGNED_MIN})"))
        checks.append(Check("clusters have the planted ranks", al.frac_blocks_rank_right >= RANK_RIGHT_MIN, False,
                            f"{sum(p.rank_right for p in al.per_block)} of {len(al.per_block)} planted blocks have a largest "
                            f"cluster within 1 of their rank (>= {RANK_RIGHT_MIN:.0%})"))
    rule = (f"core: the fraction of unstable live latents in multi-seed clusters and their span reproducibility at k_max "
            f"each beat the same numbers for the rotated-seeds null (same clustering) by {MARGIN}. Supporting: the span "
            f"rise from k = 1 to k_max, as the share of the gap to 1 closed, beats the null's by {RISE_MARGIN}"
            + (f"; >= {ALIGNED_MIN:.0%} of clustered latents in clusters overlapping a planted block >= 0.8; >= "
               f"{RANK_RIGHT_MIN:.0%} of ALL planted blocks with a largest cluster within 1 of the planted rank" if al else ""))
    why = (f"{uc.n_unstable} unstable live latents, {_f(uc.frac_in_multi_seed.value, 2)} in {uc.n_clusters_multi_seed} "
           f"multi-seed clusters (null {_f(uc.frac_in_multi_seed.baseline, 2)}); span k = {sp.k[-1] if sp.k else '-'}: "
           f"{_f(last.value)} vs null {_f(last.baseline)}"
           + (f"; aligned {_f(al.frac_clustered_latents_aligned, 2)}, ranks right {_f(al.frac_blocks_rank_right, 2)}" if al else ""))
    return _verdict(*CLUSTERS, rule, checks, why)


TRUTH_FILTER = ("Does stability mark true features?",
                "On planted truth, a latent's stability tells true latents (a planted atom or inside a planted block) "
                "from the rest: ranking by stability separates them far better than the rotated-seeds null's "
                "stability does, and keeping the stable latents raises the share of true ones.")
FILTER_AUROC_MIN = 0.75  # stability's AUROC for the true label at least this ...
FILTER_MARGIN = 0.1  # ... and this far above the null's AUROC; stable latents' precision this far above the base rate
FILTER_RECALL_MIN = 0.5  # supporting: the stable filter keeps at least this share of the true latents


def truth_filter_verdict(an: AnalysisResult | None) -> Verdict:
    tf = an.truth_filter if an is not None else None
    if tf is None:
        return not_measured(*TRUTH_FILTER, "a planted truth (real-data runs have none)")
    a, soft = tf.auroc, tf.auroc_soft
    n_other = tf.n_live - tf.n_true
    checks = [
        Check("true and other live latents both present", tf.n_true > 0 and n_other > 0, True,
              f"{tf.n_true} true, {n_other} other live latents"),
        Check("stability's AUROC for the true label high and above the null's",
              _ok(a.value) and a.value >= FILTER_AUROC_MIN and above(a, FILTER_MARGIN), True,
              f"AUROC {_f(a.value)} vs rotated-seeds null {_f(a.baseline)} (>= {FILTER_AUROC_MIN} and null + {FILTER_MARGIN})"),
        Check("stable latents are more often true than live latents in general",
              _ok(tf.precision.value) and _ok(tf.base_rate) and tf.precision.value >= tf.base_rate + FILTER_MARGIN, True,
              f"precision of 'stable' {_f(tf.precision.value)} vs base rate {_f(tf.base_rate)} (+{FILTER_MARGIN})"),
        Check("the stable filter keeps most true latents", _ok(tf.recall.value) and tf.recall.value >= FILTER_RECALL_MIN,
              False, f"recall {_f(tf.recall.value)} (>= {FILTER_RECALL_MIN})"),
        Check("soft stability's AUROC above the null's", above(soft, FILTER_MARGIN), False,
              f"{_f(soft.value)} vs null {_f(soft.baseline)} (+{FILTER_MARGIN})"),
    ]
    rule = (f"labels: {tf.label_rule}. Core: both classes present; the AUROC of stability for the label >= "
            f"{FILTER_AUROC_MIN} and >= the AUROC of the rotated-seeds null's stability (same labels) + {FILTER_MARGIN}; "
            f"the precision of 'stable' (stability >= {tf.stable_cutoff}) >= the share of true live latents + "
            f"{FILTER_MARGIN}. Supporting: recall of 'stable' >= {FILTER_RECALL_MIN}; soft stability's AUROC >= its "
            f"null's + {FILTER_MARGIN}")
    why = (f"AUROC {_f(a.value)} (null {_f(a.baseline)}), soft {_f(soft.value)} (null {_f(soft.baseline)}); 'stable' "
           f"keeps {_f(tf.frac_stable, 2)} of live latents, precision {_f(tf.precision.value)} vs base rate "
           f"{_f(tf.base_rate)}, recall {_f(tf.recall.value)}; atoms-only AUROC {_f(tf.auroc_atoms)}, blocks-only "
           f"{_f(tf.auroc_blocks)}")
    return _verdict(*TRUTH_FILTER, rule, checks, why)


SEED_BUDGET = ("How many seeds are enough?",
               "The run has enough seeds: recomputed from fewer seeds (every subset of n < S seeds, same matches), the "
               "share of stable latents stays within a small band of the all-S value from some n < S on.")


def seed_budget_verdict(an: AnalysisResult | None) -> Verdict:
    sb = an.seed_budget if an is not None else None
    if sb is None:
        return not_measured(*SEED_BUDGET, "a seed budget (it needs at least 3 seeds)")
    n0 = sb.smallest_n_within_target
    last = sb.rows[-1] if sb.rows else None
    checks = [
        Check(f"the stable share is pinned to +-{sb.target} from some n < S on", n0 is not None, True,
              f"smallest n: {n0 if n0 is not None else 'none'} of S = {sb.seeds}; at n = {last.n if last else '-'}: "
              f"+-{_f(last.stable_share_within if last else None)} ({sb.quantile:.0%})"),
        Check("half the seeds would have been enough", n0 is not None and n0 <= sb.seeds // 2, False,
              f"smallest n {n0 if n0 is not None else 'none'} vs S / 2 = {sb.seeds // 2}"),
    ]
    rule = (f"over every subset of n seeds (or {sb.max_subsets} drawn at random), the {sb.quantile:.0%} quantile of "
            f"|stable share of the subset - all-S stable share|. Core: some n < S from which every larger n < S is "
            f"within +-{sb.target}. Supporting: that n <= S / 2 (the spread against all S understates the error of n "
            "fresh seeds as n nears S, so a small n is the more trustworthy answer)")
    rows = {r.n: r for r in sb.rows}
    why = "; ".join(f"{n} seeds: +-{_f(rows[n].stable_share_within)}" for n in sorted(rows)) + \
        f" (all {sb.seeds}: {_f(sb.stable_share_all)} stable)"
    return _verdict(*SEED_BUDGET, rule, checks, why)


SEED_MODES = ("Stability or stabilization?",
              "The run's stability is not bought by what its seeds share: the same config trained with seeds that share "
              "neither initialisation nor data order (independent) is about as stable.")
SEED_MODE_TOL = 0.05  # sharing init or data may add at most this much mean stability over independent seeds


def seed_modes_verdict(sm: SeedModesResult | None) -> Verdict:
    ind = next((r for r in sm.rows if r.mode == "independent"), None) if sm is not None else None
    if ind is None:
        return not_measured(*SEED_MODES, "an independent-seeds companion (`synthsae seed-modes RUN`)")
    own = next(r for r in sm.rows if r.own)
    gain = own.stability.value - ind.stability.value if _ok(own.stability.value) and _ok(ind.stability.value) else None
    checks = [Check(f"the run's mode ({own.mode}) adds at most {SEED_MODE_TOL} mean stability over independent seeds",
                    gain is not None and gain <= SEED_MODE_TOL, True,
                    f"{_f(own.stability.value)} vs independent {_f(ind.stability.value)} (+{SEED_MODE_TOL})"
                    + (" (the run is independent itself)" if own is ind else ""))]
    rule = (f"the same config trained and analysed under each seed mode; core: the run's own mode's mean stability (live "
            f"latents) <= independent seeds' + {SEED_MODE_TOL}. Other modes are shown, never counted")
    why = "; ".join(f"{r.mode}{' (this run)' if r.own else ''} {_f(r.stability.value)} (null {_f(r.stability.baseline)}, "
                    f"stable {_f(r.frac_stable.value, 2)})" for r in sm.rows)
    return _verdict(*SEED_MODES, rule, checks, why)


# ----------------------------------------------------------------------------------------------- ablation


ABLATION = ("Functional asymmetry (ablation)",
            "Stable latents carry more of the reconstruction and prediction signal than their activation mass and "
            "firing frequency explain; unstable latents carry less (against random groups of matched frequency).")


def _diffs(ab: AblationResult, group: str, metric: str) -> list[float]:
    """Per (draw, seed): the group's cost share per mass share minus its frequency-matched control's."""
    g, c = ab.groups.get(group), ab.groups.get(f"random_freq_{group}")
    if g is None or c is None or metric not in g.costs or metric not in c.costs:
        return []
    own = g.costs[metric].share_per_mass_share.per_seed
    out = []
    for draw in c.costs[metric].share_per_mass_share_draws:
        out += [o - v for o, v in zip(own, draw) if o is not None and v is not None]
    return out


def ablation_verdict(ab: AblationResult | None) -> Verdict:
    if ab is None:
        return not_measured(*ABLATION, "the ablation study")
    metrics = ["fvu"] + (["pred"] if ab.prediction_cost else [])
    checks = []
    for metric in metrics:
        for group, sign in (("stable", 1), ("unstable", -1)):
            d = _diffs(ab, group, metric)
            mean, std = (float(np.mean(d)), float(np.std(d))) if d else (None, None)
            ok = bool(d) and sign * mean > std
            word = "above" if sign > 0 else "below"
            checks.append(Check(f"{group} latents' {metric} cost per mass {word} their frequency-matched control", ok, True,
                                f"difference {_f(mean)} ± {_f(std)} over {len(d)} (seed, draw) pairs"
                                + ("" if d else f" (no {group} live latents)")))
    st, rs = ab.groups.get("stable"), ab.groups.get("random_size_stable")
    if st is not None and rs is not None:
        a, b = st.costs["fvu"].share.mean, rs.costs["fvu"].share.mean
        checks.append(Check("stable latents carry more reconstruction than a random group of their size",
                            _ok(a) and _ok(b) and a > b, False, f"share of FVU cost {_f(a)} vs {_f(b)}"))
    rule = ("core, for each cost (FVU" + (", prediction" if len(metrics) > 1 else "") + "): stable latents' share of the cost "
            "per share of activation mass exceeds that of a random group with their firing-frequency profile, and unstable "
            "latents' falls below theirs, each by more than the standard deviation of the difference over seeds and random "
            "draws. Supporting: stable latents' share of the FVU cost exceeds a size-matched random group's")
    parts = []
    for metric in metrics:
        row = []
        for g in ("stable", "random_freq_stable", "unstable", "random_freq_unstable"):
            v = ab.groups[g].costs[metric].share_per_mass_share.mean if g in ab.groups and metric in ab.groups[g].costs else None
            row.append(f"{g} {_f(v, 2)}")
        parts.append(f"{metric} share / mass share: " + ", ".join(row))
    return _verdict(*ABLATION, rule, checks, "; ".join(parts))


# ----------------------------------------------------------------------------------------------- pooling


POOLING = ("Pooling seeds", "Merging the unique latents of several seeds gives a more stable SAE at the same explained variance.")


def pooling_verdict(po: PoolingResult | None) -> Verdict:
    if po is None:
        return not_measured(*POOLING, "the pooling study")
    v, s = po.variants.get(po.primary), po.single
    if v is None or v.stability_pool_vs_pool is None or s.stability_between_halves is None:
        return not_measured(*POOLING, f"the primary pool {po.primary} judged on two seed halves")
    ps, ss = v.stability_pool_vs_pool.mean, s.stability_between_halves.mean
    pn = v.stability_null.mean if v.stability_null else None
    pev, sev = v.ev_halves.mean, s.ev.mean
    pl0, sl0 = v.l0_halves.mean, s.l0.mean
    checks = [
        Check("more stable than single seeds between the same halves", _ok(ps) and _ok(ss) and ps >= ss + POOL_GAIN, True,
              f"{_f(ps)} vs {_f(ss)} (+{POOL_GAIN})"),
        Check("more stable than its own rotated null", above(Chance(ps, pn), MARGIN), True, f"{_f(ps)} vs {_f(pn)} (+{MARGIN})"),
        Check("same explained variance", _ok(pev) and _ok(sev) and pev >= sev - EV_TOL, True, f"EV {_f(pev, 4)} vs {_f(sev, 4)} (-{EV_TOL})"),
        Check("same L0", _ok(pl0) and _ok(sl0) and pl0 <= L0_TOL * sl0, True, f"L0 {_f(pl0, 2)} vs {_f(sl0, 2)} (x{L0_TOL})"),
    ]
    if po.bagging is not None:
        bs = po.bagging.stability_between_halves.mean
        checks.append(Check("more stable than bagging (the halves' dictionaries concatenated)", _ok(ps) and _ok(bs) and ps >= bs,
                            False, f"{_f(ps)} vs {_f(bs)} (bag width {po.bagging.width}, EV {_f(po.bagging.ev_halves.mean, 4)}, "
                            f"L0 {_f(po.bagging.l0_halves.mean, 1)})"))
    rule = (f"the primary pool ({po.primary}, named in the config before the run) built from each of two disjoint seed "
            f"halves: core: its stability between halves >= single seeds' + {POOL_GAIN} and >= its own rotated null + "
            f"{MARGIN}, its EV >= single seeds' - {EV_TOL}, its L0 <= {L0_TOL} x single seeds'. Supporting: at least as "
            "stable as bagging. The single SAE at the pooled width is the run's own seeds (same width). Other pools are "
            "shown, never counted")
    why = (f"{po.primary}: stability between halves {_f(ps)} vs single seeds {_f(ss)} (null {_f(pn)}); EV {_f(pev, 4)} vs "
           f"{_f(sev, 4)}; L0 {_f(pl0, 2)} vs {_f(sl0, 2)}"
           + (f"; bagging {_f(po.bagging.stability_between_halves.mean)}" if po.bagging else ""))
    return _verdict(*POOLING, rule, checks, why)

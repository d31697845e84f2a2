"""Verdict rules of the real-only claims (convergence, fidelity of the spliced reconstruction, triggers), typed as
the synthetic ones are: checks with their numbers, core checks decide "did not hold", supporting ones can only
lower "held" to "partly held", "not measured" when the input is missing. Thresholds are module constants;
docs/metrics.md states every rule. Inputs are the typed results (synthsae.results): ConvergenceResult from
train.json, SpliceResult and TriggersResult from metrics.json ("splice", "triggers"); a plain dict in their JSON
form is read into its type first.
"""

from __future__ import annotations

import math

import numpy as np

from synthsae.results import Chance, Check, ConvergencePoint, ConvergenceResult, SpliceResult, TriggersResult, Verdict
from synthsae.serialize import from_json
from synthsae.verdicts import decide, not_measured, rarity_check

# convergence: the slope over the last CONV_WINDOW checkpoints taken before the learning rate starts to decay (once
# it decays towards 0 every curve flattens, converged or not), judged against how much the seeds differ
CONV_WINDOW = 4  # checkpoints in the slope fit (three intervals; fewer when fewer were taken at a constant lr)
CONV_STAB_ABS = 0.001  # mean stability (live): |slope per checkpoint interval| <= max(std over seeds, this)
CONV_FVU_ABS = 0.001  # eval FVU: |slope per checkpoint interval| <= max(std over seeds, this)
CONV_STABLE_MIN = 0.05  # stable latents exist: at least this share of live latents stable at the last checkpoint
# fidelity of the spliced reconstruction
CE_RECOVERED_MIN = 0.8  # CE loss recovered (mean over seeds) at least this
CE_ZERO_GAP = 0.1  # zero-ablation must raise CE by this many nats, else CE recovered is a ratio of noise
FVU_MAX = 0.5  # spliced FVU (mean over seeds) at most this
# triggers: unstable minus stable medians
SURFACE_MARGIN = 0.1  # surface-form score higher by at least this ...
ENTROPY_MARGIN = 0.5  # ... token entropy lower by at least this many bits ...
# ... and each beyond the 95% (5%) quantile of the same difference for random splits of the live latents


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _f(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _ok(x) else "-"


def _mean(v) -> float | None:
    v = [float(a) for a in (v if isinstance(v, list) else [v]) if _ok(a)]
    return sum(v) / len(v) if v else None


def _verdict(title: str, claim: str, rule: str, checks: list[Check], why: str) -> Verdict:
    return Verdict(title, claim, rule, decide(checks), why, checks)


def typed(cls, x):
    """x as a `cls` result: a dict in its JSON form (train.json, metrics.json, tests) is read into it; None stays None."""
    return from_json(cls, x, cls.__name__) if isinstance(x, dict) else x


# ----------------------------------------------------------------------------------------------- convergence

CONVERGENCE = ("Convergence",
               "The SAEs converged: over the last checkpoints at a constant learning rate the mean stability of live "
               "latents and the eval FVU moved by less per interval than the seeds differ, and the run has stable "
               "latents to study.")


def curve_slope(points: list[ConvergencePoint], key: str) -> tuple[float | None, float | None]:
    """(least-squares slope of the mean over seeds per mean checkpoint interval, mean over the points of the std over
    seeds) of `key` (a per-seed list) across `points`; None where undefined (fewer than two points, missing values)."""
    ys = [getattr(p, key) for p in points]
    if len(ys) < 2 or any(not isinstance(y, list) or len(y) < 1 or not all(_ok(v) for v in y) for y in ys):
        return None, None
    t = np.array([float(p.tokens_per_seed) for p in points])
    mu = np.array([float(np.mean(y)) for y in ys])
    gap = (t[-1] - t[0]) / (len(t) - 1)
    slope = float(np.polyfit(t, mu, 1)[0] * gap) if gap > 0 else None
    sd = float(np.mean([np.std(y, ddof=1) if len(y) > 1 else np.nan for y in ys]))
    return slope, (sd if _ok(sd) else None)


def _flat(slope: float | None, sd: float | None, floor: float) -> bool:
    return _ok(slope) and _ok(sd) and abs(slope) <= max(sd, floor)


def constant_lr_points(train: ConvergenceResult) -> list[ConvergencePoint]:
    """The convergence checkpoints taken before the learning rate began to decay (train.json's steps x decay_start);
    all of them when train.json does not say where the decay starts."""
    conv = train.convergence or []
    if train.decay_start is None or train.steps is None:
        return list(conv)
    cut = float(train.decay_start) * int(train.steps)
    return [c for c in conv if c.step <= cut]


def convergence_verdict(train: ConvergenceResult | dict | None) -> Verdict:
    """From train.json: its "convergence" list (stability and FVU per seed at checkpoints of training)."""
    train = typed(ConvergenceResult, train)
    conv = (train.convergence if train is not None else None) or []
    if len(conv) < 2:
        return not_measured(*CONVERGENCE, "train.json with at least two convergence checkpoints")
    pre = constant_lr_points(train)
    win = (pre if len(pre) >= 2 else conv)[-CONV_WINDOW:]
    a, b = win[0], win[-1]
    b_last = conv[-1]
    ss, sd_s = curve_slope(win, "mean_stability_live_per_seed")
    fs, sd_f = curve_slope(win, "fvu")
    sa, sb = a.mean_stability_live, b.mean_stability_live
    fa, fb = _mean(a.fvu), _mean(b.fvu)
    stable = b_last.frac_stable_live
    no_seed = "" if sd_s is not None else " (no per-seed stability in train.json: rerun training to measure it)"
    checks = [
        Check("mean stability of live latents stopped moving", _flat(ss, sd_s, CONV_STAB_ABS), True,
              f"slope {_f(ss, 4)} per checkpoint interval vs std over seeds {_f(sd_s, 4)} (|slope| <= max(std, "
              f"{CONV_STAB_ABS})){no_seed}"),
        Check("eval FVU stopped moving", _flat(fs, sd_f, CONV_FVU_ABS), True,
              f"slope {_f(fs, 4)} per checkpoint interval vs std over seeds {_f(sd_f, 4)} (|slope| <= max(std, "
              f"{CONV_FVU_ABS}))"),
        Check("stable latents exist", _ok(stable) and stable >= CONV_STABLE_MIN, False,
              f"{_f(stable, 4)} of live latents stable at the last checkpoint (>= {CONV_STABLE_MIN})"),
    ]
    rule = (f"core: over the last {CONV_WINDOW} checkpoints taken at a constant learning rate (before the decay at "
            f"train.decay_start; the last {CONV_WINDOW} when fewer than two are), the least-squares slope of the mean over "
            f"seeds, per checkpoint interval, is no larger than how much the seeds differ (the std over seeds, averaged "
            f"over those checkpoints; at least {CONV_STAB_ABS} for stability, {CONV_FVU_ABS} for FVU), for each seed's "
            "mean stability of live latents and for the eval FVU: one more interval would move the curve by less than "
            f"a different seed does (an undefined number fails). Supporting: >= {CONV_STABLE_MIN:.0%} of live latents "
            "stable at the last checkpoint")
    why = (f"mean stability {_f(sa, 4)} -> {_f(sb, 4)} (slope {_f(ss, 4)} per interval, seed std {_f(sd_s, 4)}), stable "
           f"share {_f(a.frac_stable_live, 4)} -> {_f(b.frac_stable_live, 4)}, FVU {_f(fa, 4)} -> "
           f"{_f(fb, 4)} (slope {_f(fs, 4)}, seed std {_f(sd_f, 4)}) between {a.tokens_per_seed} and "
           f"{b.tokens_per_seed} training tokens per seed ({len(win)} checkpoints); {_f(stable, 4)} of live "
           "latents stable at the end")
    return _verdict(*CONVERGENCE, rule, checks, why)


# ----------------------------------------------------------------------------------------------- fidelity

FIDELITY = ("Reconstruction spliced into the model",
            f"The SAEs reconstruct the layer well enough to stand in for it: CE loss recovered >= {CE_RECOVERED_MIN} "
            "against zero-ablation.")


def _mean_of(s) -> float | None:
    return s.mean if s is not None else None


def fidelity_verdict(splice: SpliceResult | dict | None) -> Verdict:
    """From metrics.json's "splice": CE loss recovered, clean and zero-ablation CE, spliced FVU."""
    splice = typed(SpliceResult, splice)
    if splice is None or _mean_of(splice.ce_recovered) is None:
        return not_measured(*FIDELITY, "the splice numbers (CE recovered)")
    rec, fvu = _mean_of(splice.ce_recovered), _mean_of(splice.fvu_spliced)
    clean, zero = splice.ce_clean, splice.ce_zero_ablation
    checks = [
        Check("zero-ablation hurts the model (CE recovered is defined)", _ok(clean) and _ok(zero) and zero >= clean + CE_ZERO_GAP,
              True, f"CE zero-ablation {_f(zero)} vs clean {_f(clean)} nats (+{CE_ZERO_GAP})"),
        Check("CE loss recovered", _ok(rec) and rec >= CE_RECOVERED_MIN, True,
              f"{_f(rec)} (mean over seeds; >= {CE_RECOVERED_MIN})"),
        Check("spliced FVU", _ok(fvu) and fvu <= FVU_MAX, False, f"{_f(fvu)} (mean over seeds; <= {FVU_MAX})"),
    ]
    rule = (f"core: CE with zeros spliced in exceeds the clean CE by >= {CE_ZERO_GAP} nats, and CE loss recovered (mean "
            f"over seeds) >= {CE_RECOVERED_MIN}. Supporting: FVU on the spliced tokens (mean over seeds) <= {FVU_MAX}. "
            f"Spliced after block {splice.layer} on {splice.splice_windows} held-out windows "
            f"({splice.splice_tokens} predicted tokens). {'' if splice.definition is None else splice.definition}")
    why = (f"CE recovered {_f(rec)} ± {_f(splice.ce_recovered.std)} (mean ± std over seeds); clean CE {_f(clean)}, spliced "
           f"{_f(_mean_of(splice.ce_spliced))}, zero-ablation {_f(zero)} nats; KL to clean "
           f"{_f(_mean_of(splice.kl_spliced))}; FVU {_f(fvu)}")
    return _verdict(*FIDELITY, rule, checks, why)


# ----------------------------------------------------------------------------------------------- triggers

TRIGGERS = ("Unstable latents fire on surface-form triggers",
            "Unstable latents fire on single tokens: a higher surface-form score (share of their activation mass on one "
            "token) and lower token entropy than stable latents, beyond what a random split of the live latents gives; "
            "and they fire more rarely (the Frequency section's check).")


def _null_q(tr: TriggersResult, key: str, q: str) -> float | None:
    d = getattr(tr.null, f"{key}_median_diff") if tr.null is not None else None
    return getattr(d, q) if d is not None else None


def triggers_verdict(tr: TriggersResult | dict | None, fq=None) -> Verdict:
    """From metrics.json's "triggers": stable and unstable live latents' medians and the random-split null. Rarity is
    not measured again here: with the analysis's FrequencyResult `fq`, the Frequency section's own check (one
    definition, one sample, one answer) is repeated as a supporting check."""
    tr = typed(TriggersResult, tr)
    if tr is None or tr.stable is None or tr.unstable is None:
        return not_measured(*TRIGGERS, "trigger statistics")
    s, u = tr.stable, tr.unstable
    if not s.n or not u.n:
        return Verdict(*TRIGGERS, "-", "not measured",
                       f"{s.n} stable and {u.n} unstable live latents: the comparison needs both", [])

    def diff(key: str) -> float | None:
        a, b = getattr(u, f"{key}_median"), getattr(s, f"{key}_median")
        return a - b if _ok(a) and _ok(b) else None

    surf = Chance(diff("surface_score"), _null_q(tr, "surface_score", "q95"))
    ent = Chance(diff("token_entropy"), _null_q(tr, "token_entropy", "q05"))
    checks = [
        Check("unstable latents' surface-form score higher", _ok(surf.value) and _ok(surf.baseline)
              and surf.value >= SURFACE_MARGIN and surf.value > surf.baseline, True,
              f"median unstable - stable {_f(surf.value)} (>= {SURFACE_MARGIN} and > random splits' 95% quantile "
              f"{_f(surf.baseline)})"),
        Check("unstable latents' token entropy lower", _ok(ent.value) and _ok(ent.baseline)
              and ent.value <= -ENTROPY_MARGIN and ent.value < ent.baseline, True,
              f"median unstable - stable {_f(ent.value, 2)} bits (<= -{ENTROPY_MARGIN} and < random splits' 5% quantile "
              f"{_f(ent.baseline, 2)})"),
    ]
    if fq is not None:
        rc = rarity_check(fq)
        checks.append(Check(rc.name + " (the Frequency section's check, same numbers)", rc.passed, False, rc.detail))
    rule = (f"core: unstable live latents' median surface-form score exceeds stable ones' by >= {SURFACE_MARGIN}, and "
            f"their median token entropy is lower by >= {ENTROPY_MARGIN} bits; each difference must also lie beyond the "
            f"95% (entropy: 5%) quantile of the same difference between random disjoint groups of the same sizes drawn "
            f"from all live latents ({tr.null.draws if tr.null is not None else '-'} draws; a missing null fails). Supporting: the Frequency "
            f"section's rarity check, repeated with its numbers (firing frequency is measured once, by the analysis). "
            f"{'' if tr.definition is None else tr.definition}; on {tr.eval_tokens} held-out tokens")
    why = (f"median surface-form score unstable {_f(u.surface_score_median)} vs stable "
           f"{_f(s.surface_score_median)} (difference {_f(surf.value)}, random splits' 95% quantile "
           f"{_f(surf.baseline)}); token entropy {_f(u.token_entropy_median, 2)} vs "
           f"{_f(s.token_entropy_median, 2)} bits (difference {_f(ent.value, 2)}, random splits' 5% quantile "
           f"{_f(ent.baseline, 2)})")
    return _verdict(*TRIGGERS, rule, checks, why)

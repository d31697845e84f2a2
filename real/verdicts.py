"""Verdict rules of the real-only claims (convergence, fidelity of the spliced reconstruction, triggers), typed as
the synthetic ones are: checks with their numbers, core checks decide "did not hold", supporting ones can only
lower "held" to "partly held", "not measured" when the input is missing. Thresholds are module constants;
docs/metrics.md states every rule. Inputs are train.json's "convergence" list and metrics.json's "splice" and
"triggers" entries (plain dicts: the real side writes them itself).
"""

from __future__ import annotations

import math

from synthsae.results import Chance, Check, Verdict
from synthsae.verdicts import decide, not_measured, rarity_check

# convergence: between the last two checkpoints taken before the learning rate starts to decay (once it decays
# towards 0 every curve flattens, converged or not)
CONV_STAB_REL, CONV_STAB_ABS = 0.05, 0.001  # mean stability (live) moved by <= max(5% of itself, 0.001)
CONV_FVU_REL = 0.02  # eval FVU moved by <= 2% of itself
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


# ----------------------------------------------------------------------------------------------- convergence

CONVERGENCE = ("Convergence",
               "The SAEs converged: between the last two checkpoints at a constant learning rate the mean stability "
               "of live latents and the eval FVU stopped moving, and the run has stable latents to study.")


def _moved(a: float | None, b: float | None, rel: float, floor: float = 0.0) -> bool:
    """|b - a| <= max(rel * max(|a|, |b|), floor); False when either is undefined."""
    return _ok(a) and _ok(b) and abs(b - a) <= max(rel * max(abs(a), abs(b)), floor)


def constant_lr_points(train: dict) -> list[dict]:
    """The convergence checkpoints taken before the learning rate began to decay (train.json's steps x decay_start);
    all of them when train.json does not say where the decay starts."""
    conv = train.get("convergence") or []
    if train.get("decay_start") is None or train.get("steps") is None:
        return list(conv)
    cut = float(train["decay_start"]) * int(train["steps"])
    return [c for c in conv if c["step"] <= cut]


def convergence_verdict(train: dict | None) -> Verdict:
    """From train.json: its "convergence" list (stability and FVU at checkpoints of training)."""
    conv = (train or {}).get("convergence") or []
    if len(conv) < 2:
        return not_measured(*CONVERGENCE, "train.json with at least two convergence checkpoints")
    pre = constant_lr_points(train)
    a, b = (pre if len(pre) >= 2 else conv)[-2:]
    b_last = conv[-1]
    sa, sb = a.get("mean_stability_live"), b.get("mean_stability_live")
    fa, fb = _mean(a.get("fvu")), _mean(b.get("fvu"))
    stable = b_last.get("frac_stable_live")
    checks = [
        Check("mean stability of live latents stopped moving", _moved(sa, sb, CONV_STAB_REL, CONV_STAB_ABS), True,
              f"{_f(sa, 4)} -> {_f(sb, 4)} (change <= max({CONV_STAB_REL:.0%} of itself, {CONV_STAB_ABS}))"),
        Check("eval FVU stopped moving", _moved(fa, fb, CONV_FVU_REL), True,
              f"{_f(fa, 4)} -> {_f(fb, 4)} (change <= {CONV_FVU_REL:.0%} of itself)"),
        Check("stable latents exist", _ok(stable) and stable >= CONV_STABLE_MIN, False,
              f"{_f(stable, 4)} of live latents stable at the last checkpoint (>= {CONV_STABLE_MIN})"),
    ]
    rule = (f"core: between the last two checkpoints taken at a constant learning rate (before the decay at "
            f"train.decay_start; the last two checkpoints when fewer than two are) the mean stability of live latents "
            f"changed by at most {CONV_STAB_REL:.0%} of itself (or {CONV_STAB_ABS} absolute) and the mean eval FVU over seeds by at most "
            f"{CONV_FVU_REL:.0%} of itself (an undefined number fails). Supporting: >= {CONV_STABLE_MIN:.0%} of live "
            "latents stable at the last checkpoint")
    why = (f"mean stability {_f(sa, 4)} -> {_f(sb, 4)}, stable share {_f(a.get('frac_stable_live'), 4)} -> "
           f"{_f(b.get('frac_stable_live'), 4)}, FVU {_f(fa, 4)} -> {_f(fb, 4)} between {a.get('tokens_per_seed')} and "
           f"{b.get('tokens_per_seed')} training tokens per seed; {_f(stable, 4)} of live latents stable at the end")
    return _verdict(*CONVERGENCE, rule, checks, why)


# ----------------------------------------------------------------------------------------------- fidelity

FIDELITY = ("Reconstruction spliced into the model",
            f"The SAEs reconstruct the layer well enough to stand in for it: CE loss recovered >= {CE_RECOVERED_MIN} "
            "against zero-ablation.")


def _spread_mean(sp: dict, key: str) -> float | None:
    v = sp.get(key)
    return v.get("mean") if isinstance(v, dict) else v


def fidelity_verdict(splice: dict | None) -> Verdict:
    """From metrics.json's "splice": CE loss recovered, clean and zero-ablation CE, spliced FVU."""
    if not splice or _spread_mean(splice, "ce_recovered") is None:
        return not_measured(*FIDELITY, "the splice numbers (CE recovered)")
    rec, fvu = _spread_mean(splice, "ce_recovered"), _spread_mean(splice, "fvu_spliced")
    clean, zero = splice.get("ce_clean"), splice.get("ce_zero_ablation")
    checks = [
        Check("zero-ablation hurts the model (CE recovered is defined)", _ok(clean) and _ok(zero) and zero >= clean + CE_ZERO_GAP,
              True, f"CE zero-ablation {_f(zero)} vs clean {_f(clean)} nats (+{CE_ZERO_GAP})"),
        Check("CE loss recovered", _ok(rec) and rec >= CE_RECOVERED_MIN, True,
              f"{_f(rec)} (mean over seeds; >= {CE_RECOVERED_MIN})"),
        Check("spliced FVU", _ok(fvu) and fvu <= FVU_MAX, False, f"{_f(fvu)} (mean over seeds; <= {FVU_MAX})"),
    ]
    rule = (f"core: CE with zeros spliced in exceeds the clean CE by >= {CE_ZERO_GAP} nats, and CE loss recovered (mean "
            f"over seeds) >= {CE_RECOVERED_MIN}. Supporting: FVU on the spliced tokens (mean over seeds) <= {FVU_MAX}. "
            f"Spliced after block {splice.get('layer')} on {splice.get('splice_windows')} held-out windows "
            f"({splice.get('splice_tokens')} predicted tokens). {splice.get('definition', '')}")
    sd = lambda key: (splice.get(key) or {}).get("std") if isinstance(splice.get(key), dict) else None  # noqa: E731
    why = (f"CE recovered {_f(rec)} ± {_f(sd('ce_recovered'))} (mean ± std over seeds); clean CE {_f(clean)}, spliced "
           f"{_f(_spread_mean(splice, 'ce_spliced'))}, zero-ablation {_f(zero)} nats; KL to clean "
           f"{_f(_spread_mean(splice, 'kl_spliced'))}; FVU {_f(fvu)}")
    return _verdict(*FIDELITY, rule, checks, why)


# ----------------------------------------------------------------------------------------------- triggers

TRIGGERS = ("Unstable latents fire on surface-form triggers",
            "Unstable latents fire on single tokens: a higher surface-form score (share of their activation mass on one "
            "token) and lower token entropy than stable latents, beyond what a random split of the live latents gives; "
            "and they fire more rarely (the Frequency section's check).")


def _null_q(tr: dict, key: str, q: str) -> float | None:
    return ((tr.get("null") or {}).get(f"{key}_median_diff") or {}).get(q)


def triggers_verdict(tr: dict | None, fq=None) -> Verdict:
    """From metrics.json's "triggers": stable and unstable live latents' medians and the random-split null. Rarity is
    not measured again here: with the analysis's FrequencyResult `fq`, the Frequency section's own check (one
    definition, one sample, one answer) is repeated as a supporting check."""
    if not tr or not tr.get("stable") or not tr.get("unstable"):
        return not_measured(*TRIGGERS, "trigger statistics")
    s, u = tr["stable"], tr["unstable"]
    if not s.get("n") or not u.get("n"):
        return Verdict(*TRIGGERS, "-", "not measured",
                       f"{s.get('n')} stable and {u.get('n')} unstable live latents: the comparison needs both", [])

    def diff(key: str) -> float | None:
        a, b = u.get(f"{key}_median"), s.get(f"{key}_median")
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
    null = tr.get("null") or {}
    rule = (f"core: unstable live latents' median surface-form score exceeds stable ones' by >= {SURFACE_MARGIN}, and "
            f"their median token entropy is lower by >= {ENTROPY_MARGIN} bits; each difference must also lie beyond the "
            f"95% (entropy: 5%) quantile of the same difference between random disjoint groups of the same sizes drawn "
            f"from all live latents ({null.get('draws', '-')} draws; a missing null fails). Supporting: the Frequency "
            f"section's rarity check, repeated with its numbers (firing frequency is measured once, by the analysis). "
            f"{tr.get('definition', '')}; on {tr.get('eval_tokens')} held-out tokens")
    why = (f"median surface-form score unstable {_f(u.get('surface_score_median'))} vs stable "
           f"{_f(s.get('surface_score_median'))} (difference {_f(surf.value)}, random splits' 95% quantile "
           f"{_f(surf.baseline)}); token entropy {_f(u.get('token_entropy_median'), 2)} vs "
           f"{_f(s.get('token_entropy_median'), 2)} bits (difference {_f(ent.value, 2)}, random splits' 5% quantile "
           f"{_f(ent.baseline, 2)})")
    return _verdict(*TRIGGERS, rule, checks, why)

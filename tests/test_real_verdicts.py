"""The real-only verdict rules (real/verdicts.py): each says "held" on a planted case where its claim is true and
"did not hold" (or "partly held" for a supporting check) on planted cases where it is false."""

from __future__ import annotations

import numpy as np
import pytest

from real.triggers import trigger_summary
from real.verdicts import (CE_RECOVERED_MIN, CONV_STABLE_MIN, ENTROPY_MARGIN, FVU_MAX, SURFACE_MARGIN,
                           convergence_verdict, fidelity_verdict, triggers_verdict)


def _failed(v) -> set[str]:
    return {c.name for c in v.checks if not c.passed}


# ----------------------------------------------------------------------------------------------- convergence


def _train(*points, spread=0.0):
    """train.json with one convergence checkpoint per (fvu, mean stability, stable share); two seeds at the value
    -/+ spread."""
    per = lambda v: None if v is None else [v - spread, v + spread]  # noqa: E731
    return {"convergence": [{"step": i + 1, "tokens_per_seed": (i + 1) * 1000, "fvu": per(f), "l0": [4.0, 4.0],
                             "mean_stability_live": s, "mean_stability_live_per_seed": per(s), "frac_stable_live": st,
                             "frac_unstable_live": 0.1, "frac_live": 1.0}
                            for i, (f, s, st) in enumerate(points)]}


def test_convergence_held_on_a_flat_curve_with_a_stable_core():
    v = convergence_verdict(_train((0.4, 0.1, 0.05), (0.2, 0.30, 0.3), (0.2, 0.3, 0.3), (0.1995, 0.3005, 0.3),
                                   (0.2, 0.3, 0.3)))
    assert v.verdict == "held" and not _failed(v)


@pytest.mark.parametrize("points", [
    ((0.3, 0.05, 0.1), (0.2, 0.15, 0.2)),  # FVU still falling, stability still rising
    ((0.2, 0.30, 0.3), (0.199, 0.40, 0.4)),  # FVU flat, stability still rising
    ((0.3, 0.30, 0.3), (0.2, 0.30, 0.3)),  # stability flat, FVU still falling
    ((0.1454, 0.0256, 0.1), (0.1416, 0.0282, 0.1)),  # small absolute numbers still rising by 10%
    ((0.2, None, 0.3), (0.2, None, 0.3)),  # no live latents: stability undefined
])
def test_convergence_did_not_hold_while_still_moving(points):
    assert convergence_verdict(_train(*points)).verdict == "did not hold"


def test_convergence_still_rising_by_more_than_the_seeds_differ_did_not_hold():
    """SmolLM2's default run: +0.028, +0.022, +0.018 per 0.4M tokens at a constant lr, within the old 5% tolerance of
    the last step, while the seeds differ by less than that: not converged."""
    stab = [0.500, 0.528, 0.550, 0.568]
    tr = _train(*[(0.2, s, 0.3) for s in stab], spread=0.006)
    v = convergence_verdict(tr)
    assert abs(0.568 - 0.550) <= 0.05 * 0.568  # what the 5% rule passed
    assert v.verdict == "did not hold" and _failed(v) == {"mean stability of live latents stopped moving"}, v.why


def test_convergence_flat_with_seed_noise_held():
    """A flat curve whose mean over seeds wobbles with the seed noise (std 0.02 over 4 seeds) holds, for every
    one of 20 draws of the noise."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        conv = [{"step": i + 1, "tokens_per_seed": (i + 1) * 400_000, "fvu": list(0.2 + 0.004 * rng.standard_normal(4)),
                 "mean_stability_live_per_seed": list(0.55 + 0.02 * rng.standard_normal(4)), "mean_stability_live": 0.55,
                 "frac_stable_live": 0.3, "l0": [4.0] * 4} for i in range(6)]
        v = convergence_verdict({"convergence": conv})
        assert v.verdict == "held", v.checks


def test_convergence_without_per_seed_stability_cannot_pass():
    tr = _train(*[(0.2, 0.3, 0.3)] * 4)
    for c in tr["convergence"]:
        del c["mean_stability_live_per_seed"]
    v = convergence_verdict(tr)
    assert v.verdict == "did not hold" and "no per-seed stability" in v.checks[0].detail


def test_convergence_is_judged_before_the_learning_rate_decays():
    """A curve that still rises at constant lr and only flattens while the lr decays to 0 did not converge; the same
    points without a decay (or with the decay after them) are judged on the last ones."""
    points = ((0.3, 0.10, 0.1), (0.25, 0.20, 0.2), (0.22, 0.30, 0.3), (0.219, 0.301, 0.3), (0.2195, 0.3005, 0.3),
              (0.2195, 0.3, 0.3), (0.2195, 0.3, 0.3))
    decayed = {**_train(*points), "steps": 7, "decay_start": 0.45}  # checkpoints 4 to 7 fall in the decay
    v = convergence_verdict(decayed)
    assert v.verdict == "did not hold" and "mean stability of live latents stopped moving" in _failed(v)
    assert "0.1000 -> 0.3000" in v.why
    assert convergence_verdict({**_train(*points), "steps": 7, "decay_start": 1.0}).verdict == "held"
    assert convergence_verdict(_train(*points)).verdict == "held"


def test_convergence_without_stable_latents_is_only_partly_held():
    v = convergence_verdict(_train((0.2, 0.05, 0.01), (0.2, 0.05, CONV_STABLE_MIN / 2)))
    assert v.verdict == "partly held" and _failed(v) == {"stable latents exist"}


def test_convergence_not_measured_without_two_checkpoints():
    assert convergence_verdict(None).verdict == "not measured"
    assert convergence_verdict(_train((0.2, 0.3, 0.3))).verdict == "not measured"


# ----------------------------------------------------------------------------------------------- fidelity


def _splice(rec, fvu=0.2, clean=3.0, zero=6.0):
    spr = lambda v: {"mean": v, "std": 0.0, "per_seed": [v, v]}  # noqa: E731
    return {"ce_recovered": spr(rec), "ce_clean": clean, "ce_zero_ablation": zero, "layer": 1, "splice_windows": 2,
            "splice_tokens": 40, "ce_spliced": spr(zero - (zero - clean) * rec), "kl_spliced": spr(0.4),
            "fvu_spliced": spr(fvu), "definition": "d"}


def test_fidelity_held_when_the_reconstruction_stands_in():
    v = fidelity_verdict(_splice(0.9))
    assert v.verdict == "held" and not _failed(v)


@pytest.mark.parametrize("splice", [
    _splice(0.02),  # CE recovered ~0: as bad as zeros
    _splice(CE_RECOVERED_MIN - 0.05),
    _splice(-0.5, fvu=1.4),
    _splice(0.9, clean=3.0, zero=3.02),  # zeros barely hurt: CE recovered is a ratio of noise
])
def test_fidelity_did_not_hold_without_a_useful_reconstruction(splice):
    assert fidelity_verdict(splice).verdict == "did not hold"


def test_fidelity_with_a_poor_fvu_is_only_partly_held():
    v = fidelity_verdict(_splice(0.9, fvu=FVU_MAX + 0.2))
    assert v.verdict == "partly held" and _failed(v) == {"spliced FVU"}


def test_fidelity_not_measured_without_splice_numbers():
    assert fidelity_verdict(None).verdict == "not measured"
    assert fidelity_verdict({"layer": 1}).verdict == "not measured"


# ----------------------------------------------------------------------------------------------- triggers


def _latents(S=2, m=400, seed=0):
    """Per-latent stability (40% stable, 40% unstable, 20% in between) and every latent live."""
    rng = np.random.default_rng(seed)
    stab = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0], size=(S, m), p=[0.2, 0.2, 0.2, 0.2, 0.2])
    return rng, stab


def _stats(rng, surface, entropy, freq):
    return {"surface_score": surface.astype(np.float32), "token_entropy": entropy.astype(np.float32),
            "frequency": freq.astype(np.float32)}


def test_triggers_held_when_unstable_latents_are_single_token():
    rng, stab = _latents()
    uns = stab <= 0.2
    surface = np.where(uns, rng.uniform(0.6, 1.0, stab.shape), rng.uniform(0.05, 0.4, stab.shape))
    entropy = np.where(uns, rng.uniform(0.0, 1.5, stab.shape), rng.uniform(3.0, 7.0, stab.shape))
    freq = np.where(uns, rng.uniform(1e-4, 1e-3, stab.shape), rng.uniform(1e-2, 1e-1, stab.shape))
    tr = trigger_summary(_stats(rng, surface, entropy, freq), stab, 0.8, 0.2, eval_tokens=1000)
    assert tr["stable"]["n"] == int((stab >= 0.8).sum()) and tr["unstable"]["n"] == int(uns.sum())
    v = triggers_verdict(tr)
    assert v.verdict == "held" and not _failed(v), v.why


def test_triggers_did_not_hold_when_unstable_latents_look_like_stable_ones():
    rng, stab = _latents()
    surface, entropy = rng.uniform(0.05, 1.0, stab.shape), rng.uniform(0.0, 7.0, stab.shape)
    tr = trigger_summary(_stats(rng, surface, entropy, rng.uniform(1e-4, 1e-1, stab.shape)), stab, 0.8, 0.2, 1000)
    v = triggers_verdict(tr)
    assert v.verdict == "did not hold"
    assert {"unstable latents' surface-form score higher", "unstable latents' token entropy lower"} <= _failed(v)


def test_triggers_null_refuses_a_margin_a_random_split_of_the_same_sizes_reaches():
    """One unstable latent whose statistics beat the stable median by more than the margins: the margins alone
    would pass it, but random single latents differ from the median by that much too."""
    rng, stab = _latents()
    stab[stab <= 0.2] = 0.5
    stab[0, 0] = 0.0  # the only unstable latent
    surface, entropy = rng.uniform(0.0, 1.0, stab.shape), rng.uniform(0.0, 8.0, stab.shape)
    st = _stats(rng, surface, entropy, rng.uniform(1e-4, 1e-1, stab.shape))
    stable = stab >= 0.8
    st["surface_score"][0, 0] = np.median(st["surface_score"][stable]) + 2 * SURFACE_MARGIN
    st["token_entropy"][0, 0] = np.median(st["token_entropy"][stable]) - 2 * ENTROPY_MARGIN
    tr = trigger_summary(st, stab, 0.8, 0.2, 1000)
    assert tr["unstable"]["n"] == 1
    v = triggers_verdict(tr)
    surf = next(c for c in v.checks if "surface" in c.name)
    assert v.verdict == "did not hold" and not surf.passed
    assert tr["null"]["surface_score_median_diff"]["q95"] > 2 * SURFACE_MARGIN
    assert tr["null"]["token_entropy_median_diff"]["q05"] < -2 * ENTROPY_MARGIN


def test_triggers_without_the_null_did_not_hold_and_without_groups_not_measured():
    rng, stab = _latents()
    uns = stab <= 0.2
    tr = trigger_summary(_stats(rng, np.where(uns, 0.9, 0.2), np.where(uns, 0.5, 5.0), np.where(uns, 1e-3, 1e-2)),
                         stab, 0.8, 0.2, 1000)
    assert triggers_verdict(tr).verdict == "held"
    del tr["null"]
    assert triggers_verdict(tr).verdict == "did not hold"  # an unmeasured control never passes
    assert triggers_verdict(None).verdict == "not measured"
    tr["unstable"]["n"] = 0
    assert triggers_verdict(tr).verdict == "not measured"


def _fq(diff, q05, fs=0.01, fu=0.005):
    """A FrequencyResult's rarity numbers (what rarity_check reads)."""
    from types import SimpleNamespace

    from synthsae.results import Chance

    return SimpleNamespace(rarity=Chance(diff, q05), median_freq_stable=fs, median_freq_unstable=fu)


def test_triggers_repeat_the_frequency_sections_rarity_check():
    """Rarity is answered once (the analysis's frequencies and null): the Triggers section repeats the Frequency
    section's answer as a supporting check, whatever frequencies the trigger sample saw."""
    from synthsae.verdicts import rarity_check

    rng, stab = _latents()
    uns = stab <= 0.2
    surface = np.where(uns, rng.uniform(0.6, 1.0, stab.shape), rng.uniform(0.05, 0.4, stab.shape))
    entropy = np.where(uns, rng.uniform(0.0, 1.5, stab.shape), rng.uniform(3.0, 7.0, stab.shape))
    freq = np.where(uns, 1e-4, 1e-2)  # the trigger sample says unstable latents are rarer ...
    tr = trigger_summary(_stats(rng, surface, entropy, freq), stab, 0.8, 0.2, 1000)
    assert triggers_verdict(tr).verdict == "held" and len(triggers_verdict(tr).checks) == 2
    for fq, verdict in ((_fq(-0.003, -0.05, 0.01757, 0.01744), "partly held"), (_fq(-0.6, -0.1), "held")):
        v = triggers_verdict(tr, fq)  # ... but the Frequency section's answer is the one shown
        rc = next(c for c in v.checks if "fire less often" in c.name)
        assert v.verdict == verdict and rc.passed == rarity_check(fq).passed and rc.detail == rarity_check(fq).detail


def test_dead_latents_are_left_out_of_groups_and_null():
    rng, stab = _latents()
    freq = rng.uniform(1e-3, 1e-1, stab.shape)
    freq[:, :50] = 0.0
    surface, entropy = rng.uniform(0, 1, stab.shape), rng.uniform(0, 5, stab.shape)
    surface[:, :50], entropy[:, :50] = np.nan, np.nan
    tr = trigger_summary(_stats(rng, surface, entropy, freq), stab, 0.8, 0.2, 1000)
    live = freq > 0
    assert tr["stable"]["n"] == int(((stab >= 0.8) & live).sum())
    assert tr["null"]["n_pool"] == int(live.sum())


def test_report_sections_lay_out_the_typed_verdicts(tmp_path):
    from real.report import convergence_section

    moving = _train((0.3, 0.05, 0.1), (0.2, 0.15, 0.2))
    sec = convergence_section(convergence_verdict(moving), moving, tmp_path)
    assert sec.verdict == "did not hold" and any("did NOT converge" in p for p in sec.paragraphs)
    assert sec.tables[0].rows[1] == ["eval FVU stopped moving", "core", "NO", sec.tables[0].rows[1][3]]
    flat = _train((0.2, 0.05, 0.01), (0.2, 0.05, 0.01))  # converged, no stable core: partly held, not "did NOT converge"
    sec = convergence_section(convergence_verdict(flat), flat, tmp_path)
    assert sec.verdict == "partly held" and not any("did NOT converge" in p for p in sec.paragraphs)

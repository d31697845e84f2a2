"""Typed results of the real side (splice, triggers, convergence): the JSON they write is key for key, in order,
what the plain dicts wrote, and older files (no trigger null, no per-seed stability) still read and write back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from real.triggers import trigger_summary
from synthsae.metrics_file import read_metrics, write_stage
from synthsae.results import ConvergencePoint, ConvergenceResult, SpliceResult, TriggersResult
from synthsae.metrics_file import metrics_schema
from synthsae.serialize import from_json, to_json


def _same(cls, d: dict) -> None:
    back = to_json(from_json(cls, d, cls.__name__))
    assert json.dumps(back) == json.dumps(d)  # same keys, same order, same values


def _triggers(n_unstable_cut=0.2) -> dict:
    rng = np.random.default_rng(0)
    stab = rng.choice([0.0, 0.5, 1.0], size=(2, 300))
    st = {"surface_score": rng.uniform(0, 1, stab.shape).astype(np.float32),
          "token_entropy": rng.uniform(0, 6, stab.shape).astype(np.float32),
          "frequency": rng.uniform(1e-4, 1e-1, stab.shape).astype(np.float32)}
    return trigger_summary(st, stab, 0.8, n_unstable_cut, eval_tokens=1000, draws=20)


def test_triggers_json_is_unchanged_by_the_type():
    tr = _triggers()
    assert "frac_surface_ge_0.5" in tr["stable"] and "surface_score_median_diff" in tr["null"]
    _same(TriggersResult, tr)
    empty = _triggers(n_unstable_cut=-1.0)  # no unstable latents: the null has no differences, none written
    assert empty["unstable"]["n"] == 0 and "surface_score_median_diff" not in empty["null"]
    _same(TriggersResult, empty)
    del tr["null"]  # a run made before the null was stored
    _same(TriggersResult, tr)
    assert from_json(TriggersResult, tr).null is None


def test_splice_and_convergence_json_is_unchanged_by_the_type():
    spr = {"mean": 0.9, "std": 0.01, "per_seed": [0.89, 0.91]}
    splice = {"layer": 1, "splice_windows": 2, "splice_tokens": 40, "ce_clean": 3.0, "ce_zero_ablation": 6.0,
              "kl_zero_ablation": 2.5, "ce_spliced": spr, "kl_spliced": spr, "fvu_spliced": spr, "ce_recovered": spr,
              "forward": "suffix", "definition": "d"}
    _same(SpliceResult, splice)
    point = {"step": 10, "tokens_per_seed": 1000, "fvu": [0.2, 0.21], "l0": [4.0, 4.0], "mean_stability_live": 0.5,
             "mean_stability_live_per_seed": [0.49, None], "frac_stable_live": 0.3, "frac_unstable_live": 0.2,
             "frac_live": 0.9}
    _same(ConvergencePoint, point)
    old = {k: v for k, v in point.items() if k != "mean_stability_live_per_seed"}  # before per-seed stability
    _same(ConvergencePoint, old)
    train = from_json(ConvergenceResult, {"steps": 20, "decay_start": 0.8, "passes": 2, "convergence": [point, old]})
    assert train.steps == 20 and [p.step for p in train.convergence] == [10, 10]


def test_metrics_json_with_splice_and_triggers_reads_typed_and_matches_the_schema(tmp_path):
    path = tmp_path / "metrics.json"
    tr = _triggers()
    write_stage(path, "triggers", from_json(TriggersResult, tr))
    assert json.loads(path.read_text())["triggers"] == json.loads(json.dumps(tr))
    m = read_metrics(path)
    assert m.triggers.stable.n == tr["stable"]["n"] and m.splice is None
    assert m.triggers.stable.frac_surface_ge_05 == tr["stable"]["frac_surface_ge_0.5"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(path.read_text()), metrics_schema())

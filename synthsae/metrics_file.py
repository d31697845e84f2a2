"""A run's metrics.json: one key per stage, each the JSON of that stage's typed result.

`write_stage` merges one stage in (other stages' numbers kept, atomic write); `read_metrics` gives the typed
results back, with a one-line error naming the file and the field when it is corrupt or of another format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synthsae.fileio import merge_json_key
from synthsae.results import (AblationResult, AnalysisResult, AtlasResult, PoolingResult, SeedModesResult, SourcesResult,
                              SpliceResult, TriggersResult)
from synthsae.serialize import from_json, json_schema, to_json

STAGES = {"analysis": AnalysisResult, "ablation": AblationResult, "pooling": PoolingResult, "sources": SourcesResult,
          "atlas": AtlasResult, "seed_modes": SeedModesResult, "splice": SpliceResult, "triggers": TriggersResult}
RERUN = {"analysis": "analyze", "sources": "analyze", "ablation": "ablate", "pooling": "pool", "atlas": "atlas", "seed_modes": "seed-modes",
         "splice": "real run", "triggers": "real run"}


class MetricsError(ValueError):
    """metrics.json unreadable or not in the format of this version."""


@dataclass
class Metrics:
    """The typed results stored in one metrics.json (None: stage not run yet)."""

    analysis: AnalysisResult | None = None
    ablation: AblationResult | None = None
    pooling: PoolingResult | None = None
    sources: SourcesResult | None = None  # SAE folders loaded from other libraries (synthsae.loaders)
    atlas: AtlasResult | None = None  # cross-seed feature atlas (synthsae atlas, real run's atlas stage)
    seed_modes: SeedModesResult | None = None  # the run beside other seed modes (synthsae seed-modes)
    splice: SpliceResult | None = None  # real runs: the reconstruction spliced into the model
    triggers: TriggersResult | None = None  # real runs: what stable and unstable latents fire on


def write_stage(path: str | Path, key: str, result) -> None:
    """Merge one stage's result into metrics.json under `key` (atomic; the other keys are kept)."""
    if key not in STAGES or not isinstance(result, STAGES[key]):
        raise TypeError(f"metrics.json key {key!r} takes a {STAGES.get(key, object).__name__}, got {type(result).__name__}")
    merge_json_key(path, key, to_json(result))


def read_metrics(path: str | Path) -> Metrics:
    """The typed results of a metrics.json; MetricsError (one line) when it is corrupt or from another version."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MetricsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); move it away and rerun the stages (`synthsae run --resume --out RUN`) to rebuild it") from None
    if not isinstance(raw, dict):
        raise MetricsError(f"{path}: expected a JSON object with keys {', '.join(STAGES)}")
    out = Metrics()
    for key, cls in STAGES.items():
        if raw.get(key) is None:
            continue
        try:
            setattr(out, key, from_json(cls, raw[key], key))
        except (ValueError, TypeError) as e:
            raise MetricsError(f"{path}: {e} (written by another synthsae version? rerun that stage, e.g. "
                               f"`synthsae {RERUN[key]}`)") from None
    return out


def stage_done(path: str | Path, key: str) -> bool:
    """Whether metrics.json holds a result for `key` (MetricsError when the file is corrupt: never overwritten silently)."""
    if not Path(path).is_file():
        return False
    return getattr(read_metrics(path), key) is not None


def stage_taus(m: Metrics) -> dict[str, float]:
    """The match threshold tau each stage of a run used ({"analysis": 0.7, "ablation": 0.7, ...}, stages run)."""
    out = {}
    if m.analysis is not None:
        out["analysis"] = float(m.analysis.settings.tau)
    if m.ablation is not None:
        out["ablation"] = float(m.ablation.tau)
    if m.pooling is not None:
        out["pooling"] = float(m.pooling.tau)
    return out


def tau_warning(m: Metrics) -> str | None:
    """One line when the stages of a run used different taus (their numbers do not describe the same matching)."""
    taus = stage_taus(m)
    if len(set(taus.values())) <= 1:
        return None
    return ("warning: the stages used different tau: " + ", ".join(f"{k} {v:g}" for k, v in taus.items())
            + "; re-run the others with the same --tau to compare them")


def metrics_schema() -> dict:
    """Schema of a run's metrics.json: every stage's typed result under its key (each optional)."""
    defs: dict = {}
    props = {key: json_schema(cls, defs) for key, cls in STAGES.items()}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "synthsae metrics.json",
            "type": "object", "properties": props, "$defs": defs}

"""The stage registry: every command that measures something loops over these stages with `run_stages`.

A stage is (key, title, run(source, earlier results, settings) -> result, write). Its key is where metrics.json
stores the result, so "is it done?" is one lookup and a killed run resumes at the first missing stage. Stages that
differ by source kind (the real side's spliced ablation, its atlas with the CE splice) register under the same key
for their kind (`register(stage, kinds=("real",))`), so `synthsae atlas RUN` finds the right one. Stage numbers
("[3/5]") come from the position in the pipeline, never written by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from synthsae.config import ConfigError
from synthsae.source import KINDS, Source


@dataclass(frozen=True)
class Stage:
    """One step of a study: `run` computes the result, `write` stores it under `key` (default: metrics.json)."""

    key: str
    title: Callable[[Source, Any], str]  # the log line, from the source and the stage's settings
    run: Callable[[Source, dict, Any], Any]  # (source, results of earlier stages by key, settings) -> result
    write: Callable[[Source, Any], None] | None = None  # None: metrics.json[key] = result
    done: Callable[[Source], bool] | None = None  # None: metrics.json holds key


_REGISTRY: dict[tuple[str, str], Stage] = {}


def register(stage: Stage, kinds: tuple[str, ...] = KINDS) -> Stage:
    """Make `stage` the implementation of its key for these source kinds (a later registration replaces)."""
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"stage {stage.key!r}: kind {k!r} must be one of {', '.join(KINDS)}")
        _REGISTRY[(stage.key, k)] = stage
    return stage


def stage_for(key: str, kind: str) -> Stage:
    """The registered stage `key` for a source of `kind` (one-line error naming the known keys); the shared stages
    register when synthsae.study_stages is imported, the real side's with real.stages."""
    try:
        return _REGISTRY[(key, kind)]
    except KeyError:
        known = sorted({k for k, kd in _REGISTRY if kd == kind})
        raise ConfigError(f"stage = {key!r}: not a stage of a {kind} source; known: {', '.join(known)}") from None


def stage_keys(kind: str) -> list[str]:
    """Every stage key registered for a source kind."""
    return sorted({k for k, kd in _REGISTRY if kd == kind})


def is_done(src: Source, stage: Stage) -> bool:
    if stage.done is not None:
        return stage.done(src)
    from synthsae.metrics_file import STAGES, stage_done

    if stage.key in STAGES:
        return stage_done(src.metrics, stage.key)  # a corrupt metrics.json is named, never overwritten
    import json

    return src.metrics.is_file() and stage.key in json.loads(src.metrics.read_text())


def done_keys(src: Source, keys: list[str] | tuple[str, ...]) -> set[str]:
    """The stages among `keys` whose output already exists (read before any of them runs)."""
    return {k for k in keys if is_done(src, stage_for(k, src.kind))}


@dataclass
class StageRun:
    """What run_stages did: the results of the stages it ran (by key) and their seconds."""

    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_stages(src: Source, keys: list[str] | tuple[str, ...], *, resume: bool = True, settings: dict | None = None,
               log: Callable[[str], None] = print, pipeline: tuple[str, ...] | None = None) -> StageRun:
    """Run the stages `keys` in order on `src`; with resume a stage whose output exists is skipped.

    Each stage's result is written before the next starts. `settings[key]` is that stage's own settings object
    (None: the stage's defaults from the source's config). Log lines are numbered by the position in `pipeline`
    (default: `keys`); a one-stage call is not numbered."""
    stages = [stage_for(k, src.kind) for k in keys]
    settings = settings or {}
    done = done_keys(src, keys) if resume else set()  # read before any stage writes
    pipeline = tuple(pipeline or keys)
    out = StageRun()
    for st in stages:
        if st.key in done:
            continue
        title = st.title(src, settings.get(st.key))
        if title:
            n = len(pipeline)
            log(f"[{pipeline.index(st.key) + 1}/{n}] {title}" if n > 1 else title)
        t = time.perf_counter()
        res = st.run(src, out.results, settings.get(st.key))
        if st.write is not None:
            st.write(src, res)
        elif res is not None:
            from synthsae.metrics_file import write_stage

            write_stage(src.metrics, st.key, res)
        out.results[st.key] = res
        out.seconds[st.key] = time.perf_counter() - t
    return out

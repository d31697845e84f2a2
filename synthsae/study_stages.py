"""The shared stages (registered in synthsae.stages): train, analysis, ablation, pooling, atlas, report.

Each takes the Source and its own small settings object. The real side registers its collect, train, spliced
ablation, atlas and triggers stages beside these (real/stages.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synthsae.config import AnalysisConfig, RunConfig
from synthsae.metrics.ablation import AblationConfig
from synthsae.pooling import PoolConfig
from synthsae.source import Source
from synthsae.stages import Stage, register


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """The synthetic training stage: the run's config and how to treat an existing folder."""

    cfg: RunConfig
    resume: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class AblationSettings:
    """The ablation stage: the study's own config and whether to reuse the analysis stage's per-latent stability
    (the pipeline) or recompute it at the config's (tau, match) (`synthsae ablate`)."""

    config: AblationConfig = field(default_factory=AblationConfig)
    from_analysis: bool = True


# ----------------------------------------------------------------------------------------------- train


def _train(src: Source, earlier: dict, s: TrainSettings) -> None:
    from synthsae.train import train_run

    train_run(s.cfg, src.out, resume=s.resume, force=s.force, progress=s.progress)


def _train_title(src: Source, s: TrainSettings) -> str:
    c = s.cfg
    return (f"training {c.train.seeds} seeds of {c.sae.variant} (d_sae {c.sae.d_sae}, k {c.sae.k}, {c.train.steps} "
            f"steps) -> {src.out}")


register(Stage("train", _train_title, _train, write=lambda src, res: None,
               done=lambda src: (src.out / "train.json").is_file()), kinds=("run",))


# ----------------------------------------------------------------------------------------------- analysis


def _analysis(src: Source, earlier: dict, cfg: AnalysisConfig | None):
    from synthsae.metrics.run_analysis import analysis_of

    return analysis_of(src, cfg)


def _write_analysis(src: Source, res) -> None:
    from synthsae import distributed
    from synthsae.metrics.run_analysis import write_analysis

    if distributed.current().is_main:
        write_analysis(src.metrics, *res)


def _folder_analysis(src: Source, earlier: dict, cfg: AnalysisConfig | None):
    from synthsae.loaders.analysis import GivenActs, analyze_stack

    acts = None if src.acts is None else GivenActs(src.acts, str(src.acts_path))
    return analyze_stack(src.stack, cfg or AnalysisConfig(), src.dev, acts, progress=False)


def _write_folder_analysis(src: Source, res) -> None:
    from synthsae.loaders.analysis import write_folder_results
    from synthsae.outdir import claim

    claim(src.out)  # the marker that lets later analyses update what we write there
    write_folder_results(src.metrics, res)


ANALYSIS_TITLE = "analysing stability, truth recovery and subspaces"
ANALYSIS = register(Stage("analysis", lambda src, s: ANALYSIS_TITLE, _analysis, write=_write_analysis),
                    kinds=("run", "real"))
register(Stage("analysis", lambda src, s: ANALYSIS_TITLE, _folder_analysis, write=_write_folder_analysis), kinds=("folders",))


# ----------------------------------------------------------------------------------------------- ablation


def _ablation(src: Source, earlier: dict, s: AblationSettings | None):
    from synthsae.config import ConfigError
    from synthsae.metrics.ablation import ablation_study
    from synthsae.metrics.run_analysis import saved_stability

    s = s or AblationSettings()
    if src.truth is None:
        raise ConfigError(f"{src.run_dir}: no truth.safetensors (ablate scores synthetic runs; real runs splice via real/)")
    stab = None
    if s.from_analysis:
        stab = earlier["analysis"][1]["stability"] if "analysis" in earlier else saved_stability(src.metrics)
    res = ablation_study(src.sae, src.truth, src.config, s.config, stability=stab)
    res.run_dir, res.variant = str(src.run_dir), src.variant
    return res


register(Stage("ablation", lambda src, s: "ablating stable / unstable / random groups", _ablation), kinds=("run",))


# ----------------------------------------------------------------------------------------------- pooling


def pool_run(src: Source, earlier: dict, s: PoolConfig | None):
    """The pooling study of a run's seeds (real runs: refit on their training stream, judged on held-out activations)."""
    from contextlib import nullcontext

    from synthsae.pooling import pooling_study
    from synthsae.rundir import clear_run
    from synthsae.threads import threads_for

    cfg = src.config
    x, batches, threads = None, None, nullcontext()
    if src.kind == "real":
        bs = cfg.train.batch_size
        x, batches = src.eval_x(cfg.analysis.eval_tokens), src.refit_batches(bs)
        threads = threads_for(bs, src.sae.d_in, cfg.sae.d_sae, src.dev)  # the refits are SAE training: its thread policy
    clear_run(src.out, ("pooled",))
    with threads:
        return pooling_study((cfg, src.sae, src.truth), s, x=x, batches=batches, out_dir=src.out / "pooled")


def _folder_pooling(src: Source, earlier: dict, s: PoolConfig | None):
    import dataclasses

    from synthsae.loaders.analysis import GivenActs, pool_stack

    s = s or PoolConfig()
    if s.refit_steps is None:  # loaded SAEs have no run config: 300 refit steps, as `synthsae pool --steps`
        s = dataclasses.replace(s, refit_steps=300)
    if src.acts is None:
        from synthsae.config import ConfigError

        raise ConfigError(f"{str(src.paths[0])!r}: not a run directory (config.toml + seeds/); pooling SAE folders needs "
                          "--acts (activations to refit and judge the pools on)")
    from synthsae.outdir import claim

    claim(src.out)  # before the pools are saved into it
    return pool_stack(src.stack, GivenActs(src.acts, str(src.acts_path)), AnalysisConfig(), src.out / "pooled", s,
                      device=src.dev)


def _write_folder_pooling(src: Source, res) -> None:
    from synthsae.loaders.analysis import write_pooling

    write_pooling(src.metrics, src.stack, res)


POOL_TITLE = "pooling seeds (disjoint halves, widths 1x and 2x)"
register(Stage("pooling", lambda src, s: POOL_TITLE, pool_run), kinds=("run", "real"))
register(Stage("pooling", lambda src, s: POOL_TITLE, _folder_pooling, write=_write_folder_pooling), kinds=("folders",))


# ----------------------------------------------------------------------------------------------- atlas


def atlas_of(src: Source, cfg=None):
    """Atlas of a synthetic run (data: fresh truth samples) or of SAE folders (their stored frequencies, no EV)."""
    from synthsae.metrics.atlas import AtlasConfig
    from synthsae.metrics.atlas_run import atlas_result, validate_atlas

    cfg = cfg or AtlasConfig()
    validate_atlas(cfg)  # bad settings are named before anything loads
    x, freq = None, None
    if src.kind == "run" and src.truth is not None:
        x = src.eval_x(src.config.analysis.eval_tokens)
    else:
        freq = src.frequency(src.config.analysis.eval_tokens)[0] if src.kind == "run" else src.stack.frequency
    run_dir = src.run_dir if src.kind == "run" else None
    res, atlas = atlas_result(src.sae, cfg, x=x, freq=freq, tau=src.config.analysis.tau if run_dir else 0.7,
                              variant=src.variant, sae_cfg=src.config.sae, truth=src.truth, run_dir=run_dir)
    res.source.folders = [str(p) for p in src.paths] if src.kind == "folders" else None
    res.source.data = ("fresh truth samples" if x is not None else
                       "stored firing frequency (frequency only; no EV)" if freq is not None else "none")
    return res, atlas


def _write_atlas(src: Source, res) -> None:
    from synthsae.metrics.atlas_run import write_atlas

    if src.kind == "folders":
        from synthsae.outdir import claim

        claim(src.out)
    write_atlas(src.out, *res)


register(Stage("atlas", lambda src, s: "feature atlas: stable directions, reproducible subspaces, remainder",
               lambda src, earlier, cfg: atlas_of(src, cfg),
               write=_write_atlas), kinds=("run", "folders"))


# ----------------------------------------------------------------------------------------------- report


def _report(src: Source, earlier: dict, s) -> None:
    from synthsae.report import build_report

    build_report(src.out)


register(Stage("report", lambda src, s: "writing report.md, report.html and figures/", _report,
               write=lambda src, res: None, done=lambda src: False), kinds=("run", "folders"))

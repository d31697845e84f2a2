"""Run a grid's missing cells: one adapter per cell (`run_cell`), shared activations, resume, jobs, torchrun split.

Layout of a sweep folder:

    OUT/grid.json                    the grid last run here (a resume may add axis values, not change settings)
    OUT/acts/<model>_L<layer>_<h>/   real cells: activations collected once per (model, layer, corpus, tokens)
    OUT/cells/<cell id>/             an ordinary run folder (analyze / report / atlas work on it); real cells hold
                                     `acts` as a relative symlink to the shared store
    OUT/sweep.json, sweep.md, sweep.html

A cell is finished when its report.html and metrics.json exist; finished cells are never retrained, so a killed
sweep resumes from the missing cells and a grid with a new axis value trains only the new cells.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from synthsae.config import ConfigError
from synthsae.fileio import atomic_write_json
from synthsae.sweep.configs import CellConfig, cell_config
from synthsae.sweep.grid import Grid, cell_finished, cell_folder, cells, to_dict

GRID_FILE = "grid.json"
_LM_CACHE: dict = {}  # model name -> loaded model, so consecutive real cells in one process load it once


def acts_folder(out: Path, cfg) -> Path:
    """The shared store of a real cell's collection settings (model, layer, window, tokens, corpus, dtype)."""
    key = json.dumps(asdict(cfg.collect), sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()[:10]
    name = Path(cfg.collect.model).name or "model"
    return Path(out) / "acts" / f"{name}_L{cfg.collect.layer}_{h}"


def run_cell(cc: CellConfig, folder: Path, *, progress: bool = True, log=print) -> None:
    """Run one cell into its folder through today's library entry point (the one place that knows it).

    Synthetic: calibrate a penalty variant to its L0 target (synthsae.bench.calibrate) then synthsae.study.run_study;
    real: real.study.run_real (the shared activations are already linked in as folder/acts).
    """
    from synthsae.config import RunConfig

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(cc.cfg, RunConfig):
        from synthsae.study import run_study

        if cc.l0_target is not None:
            from synthsae.bench import Suite, calibrate, sparsity_knob
            from synthsae.train import train_run

            suite = Suite("sweep", (), max_probes=cc.max_probes, l0_tolerance=cc.l0_tolerance)
            calibrate(cc.cfg, cc.l0_target, sparsity_knob(cc.cfg.sae.variant), folder, suite, progress=progress,
                      train=train_run)
        run_study(cc.cfg, folder, resume=True, progress=progress, log=log)
    else:
        from real.study import run_real

        run_real(cc.cfg, folder, lm=_lm(cc.cfg.collect.model, cc.cfg.train.device), progress=progress, log=log)


def _lm(model: str, device: str):
    from real.model import load_model
    from synthsae.device import pick_device

    if model not in _LM_CACHE:
        _LM_CACHE[model] = load_model(model, device=pick_device(device))
    return _LM_CACHE[model]


def share_activations(out: Path, cc: CellConfig, folder: Path, *, progress: bool = True, log=print) -> None:
    """Collect a real cell's activations into OUT/acts/<key> (once) and link folder/acts to it (relative link)."""
    from real.activations import collect

    store = acts_folder(out, cc.cfg)
    meta = store / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("complete")):
        log(f"collecting activations for {store.name} (model {cc.cfg.collect.model}, block {cc.cfg.collect.layer}, "
            f"{cc.cfg.collect.train_tokens} + {cc.cfg.collect.eval_tokens} tokens)")
        collect(cc.cfg.collect, store, lm=_lm(cc.cfg.collect.model, cc.cfg.train.device), progress=progress)
    from synthsae.rundir import mark

    mark(folder)  # the cell is a synthsae run folder from its first file on, so `real run` takes it as its own
    link = folder / "acts"
    target = os.path.relpath(store, folder)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() or link.is_symlink():
        raise ConfigError(f"{link}: exists and is not the sweep's shared store {store}; move it away")
    link.symlink_to(target, target_is_directory=True)


def check_target(grid: Grid, out: Path, resume: bool) -> None:
    """Refuse a folder holding another sweep's settings, or a started sweep without --resume (nothing written)."""
    gpath = out / GRID_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out = {str(out)!r}: is a file, not a sweep folder")
    if gpath.is_file():
        old = json.loads(gpath.read_text())
        for key in ("kind", "base", "settings"):
            if old.get(key) != to_dict(grid)[key]:
                raise ConfigError(f"--out = {str(out)!r}: holds a sweep with another {key} ({old.get(key)!r}); its cells "
                                  "would not compare; pass another --out (a resume may only add axis values)")
        if not resume:
            raise ConfigError(f"--out = {str(out)!r}: holds a sweep; pass --resume to finish it or add axis values")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out = {str(out)!r}: is not empty and holds no sweep ({GRID_FILE}); pass another --out")


def _rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def auto_jobs(configs: list[CellConfig]) -> int:
    """--jobs' default: on the CPU one worker per core (each cell trains on one thread, so two cells use two cores
    where one cell used one); on a GPU one (cells would share the device)."""
    from synthsae.device import pick_device
    from synthsae.threads import cpu_cores

    if not configs or any(str(pick_device(cc.cfg.train.device)) != "cpu" for cc in configs):
        return 1
    return min(cpu_cores(), len(configs))


def cell_cost(cc: CellConfig) -> float:
    """A cell's training work in multiply-adds (seeds x steps x batch x d_sae), to start the longest cells first."""
    t = cc.cfg.train
    return float(t.seeds * t.steps * t.batch_size * cc.cfg.sae.d_sae)


def run_sweep(grid: Grid, out: str | Path, *, resume: bool = False, jobs: int | None = 1, progress: bool = True, log=print,
              adapter: Callable | None = None, render: bool = True) -> dict:
    """Train every missing cell of `grid` into `out`, then write sweep.json / .md / .html; returns counts.

    Under torchrun each rank takes cells i with i % world == rank (each cell runs on the rank's own device as a
    single-process run); rank 0 writes the summary from the cells finished so far (rerun with --resume once every
    rank is done to include all). jobs > 1 runs that many cells at once in spawned worker processes, the costliest
    first (so the longest cell does not start last); jobs None picks `auto_jobs`.
    """
    from synthsae.sweep.estimate import check_sweep_fits

    out = Path(out)
    adapter = adapter or run_cell
    if jobs is not None and jobs > 1 and adapter is not run_cell:
        raise ConfigError("--jobs > 1 runs the library's run_cell in worker processes; a custom adapter needs jobs = 1")
    check_target(grid, out, resume)
    all_cells = cells(grid)
    configs = {c.id: cell_config(grid, c) for c in all_cells}
    todo = [c for c in all_cells if not cell_finished(cell_folder(out, c))]
    check_sweep_fits(grid, out, [configs[c.id] for c in todo])  # disk and memory, before anything is written
    rank, world = _rank()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_json(out / GRID_FILE, to_dict(grid))
    mine = [c for i, c in enumerate(todo) if i % world == rank]
    if jobs is None:
        jobs = auto_jobs([configs[c.id] for c in mine]) if adapter is run_cell and world == 1 else 1
    log(f"sweep {grid.name}: {len(all_cells)} cells, {len(all_cells) - len(todo)} finished, {len(mine)} to run here"
        + (f" ({jobs} at once)" if jobs > 1 and len(mine) > 1 else ""))
    if grid.kind == "real":
        for c in mine:  # sequential: two cells sharing a store must not collect it twice at once
            share_activations(out, configs[c.id], cell_folder(out, c), progress=progress, log=log)
    env = _single_process_env() if world > 1 else None
    if jobs > 1 and len(mine) > 1:
        _run_parallel(mine, configs, out, jobs, adapter, progress, log)
    else:
        for i, c in enumerate(mine, 1):
            log(f"cell {i}/{len(mine)}: {c.id}")
            with env or _nullctx():
                adapter(configs[c.id], cell_folder(out, c), progress=progress, log=log)
    if render and rank == 0:
        from synthsae.sweep.render import write_sweep

        write_sweep(grid, out)
    return {"cells": len(all_cells), "trained": len(mine), "finished_before": len(all_cells) - len(todo)}


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _single_process_env:
    """Hide torchrun's variables while one cell runs, so the cell is an ordinary one-process run on this rank's GPU."""

    KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")

    def __enter__(self):
        self.saved = {k: os.environ.pop(k) for k in self.KEYS if k in os.environ}
        lr = self.saved.get("LOCAL_RANK")
        if lr is not None:
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.set_device(int(lr))
            except (ImportError, RuntimeError):
                pass
        return self

    def __exit__(self, *a):
        os.environ.update(self.saved)
        return False


def _worker(args) -> str:
    cc, folder, verbose = args
    import torch

    torch.set_num_threads(1)
    name = Path(folder).name  # no progress bars from workers (they would interleave): a line per stage, cell named
    run_cell(cc, Path(folder), progress=False, log=(lambda m: print(f"[{name}] {m}", flush=True)) if verbose else (lambda m: None))
    return str(folder)


def _run_parallel(mine, configs, out: Path, jobs: int, adapter, progress: bool, log) -> None:
    """Cells on `jobs` spawned worker processes (the library's run_cell; a failed cell stops the sweep)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(mine, key=lambda c: -cell_cost(configs[c.id]))  # longest first: the last cell to start is short
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_worker, (configs[c.id], str(cell_folder(out, c)), progress)) for c in order]
        for i, f in enumerate(as_completed(futs), 1):
            log(f"cell {i}/{len(mine)} done: {Path(f.result()).name}")

"""Run-folder checkpoints around the training loop: save and resume atomically, seed folders and train.json at the end.

checkpoint/step_<N>/seed_<k>.pt holds seed k's whole state at step N; checkpoint/latest.json names the newest
step that *every* seed reached (written by rank 0 once all ranks saved), so a run killed mid-save resumes from
the previous complete step, and any number of processes can resume any seed. Every file is written to a temp
file and renamed. train.json (the finished-marker and summary) is written last and the checkpoint then removed.
Ctrl-C (SIGINT) during `train_checkpointed` finishes the current step, writes a checkpoint and then raises
KeyboardInterrupt, so an interrupted run loses nothing.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from synthsae import distributed
from synthsae.config import TrainConfig
from synthsae.fileio import atomic_path, atomic_write_json
from synthsae.loop import TrainingDiverged, TrainState, TrainStats, train_steps
from synthsae.sae.base import SAE

CHECKPOINT_DIR = "checkpoint"
LATEST = "checkpoint/latest.json"
FINISHED = "train.json"
# what every seed file holds; anything else in it is the caller's `extra` (lr_changes, a real run's convergence)
STATE_KEYS = ("step", "seed_index", "init_seed", "model", "optimizer", "tokens_since_fired", "data_rng", "history",
              "seconds")


class SeededStream(Protocol):
    """A batch stream whose generator states go into the checkpoint (synthsae.train.DataStream)."""

    vary: bool

    def seed_state(self, i: int) -> Tensor: ...

    def set_state(self, states: list[Tensor]) -> None: ...


def checkpoint_step(out: Path) -> int | None:
    """The committed checkpoint step of run folder `out`, or None when there is none."""
    path = Path(out) / LATEST
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["step"])
    except Exception as exc:  # noqa: BLE001
        from synthsae.io import RunFileError

        raise RunFileError(f"{path}: unreadable ({type(exc).__name__}); pass --force to start over") from None


def seed_checkpoint(out: Path, step: int, k: int) -> Path:
    return Path(out) / CHECKPOINT_DIR / f"step_{step}" / f"seed_{k}.pt"


def _slice_history(history: list[dict], i: int) -> list[dict]:
    return [{key: ([v[i]] if isinstance(v, list) else v) for key, v in rec.items()} for rec in history]


def save_checkpoint(out: Path, sae: SAE, state: TrainState, data: SeededStream | None = None, extra: dict | None = None,
                    seed_index: list[int] | None = None, keep: int | None = None) -> None:
    """Write one file per local seed for state.step (with `extra`, e.g. lr_changes), then commit the step (every
    rank, collectively: rank 0 writes latest.json once all have saved, and drops older steps but `keep`, the step a
    resume started from). `data` None: the batches depend on the step alone (no generator state to keep)."""
    seed_index = list(range(sae.n_seeds)) if seed_index is None else seed_index
    model = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    opt = state.optimizer.state_dict()
    for i, k in enumerate(seed_index):
        blob = {
            "step": state.step,
            "seed_index": k,
            "init_seed": sae.init_seeds[i],
            "model": {name: v[i].clone() for name, v in model.items()},
            "optimizer": {
                "param_groups": opt["param_groups"],
                "state": {pid: {key: (v[i].detach().cpu().clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                                for key, v in st.items()} for pid, st in opt["state"].items()},
            },
            "tokens_since_fired": state.tokens_since_fired[i].cpu().clone(),
            **({"data_rng": data.seed_state(i).cpu()} if data is not None else {}),
            "history": _slice_history(state.history, i),
            "seconds": state.seconds,
            **(extra or {}),
        }
        with atomic_path(seed_checkpoint(out, state.step, k)) as tmp:
            torch.save(blob, tmp)
    distributed.barrier(f"checkpoint at step {state.step}")
    if distributed.current().is_main:
        atomic_write_json(Path(out) / LATEST, {"step": state.step})
        for old in (Path(out) / CHECKPOINT_DIR).glob("step_*"):
            if old.name not in (f"step_{state.step}", f"step_{keep}"):  # never the one a resume started from
                shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, sae: SAE, state: TrainState, data: SeededStream | None = None,
                    seed_index: list[int] | None = None) -> dict:
    """Load the committed step's files of the local seeds (stacked back along the seed axis); returns the extra
    entries saved with them (those of the first seed: lr_changes, ...)."""
    from synthsae.io import RunFileError

    seed_index = list(range(sae.n_seeds)) if seed_index is None else seed_index
    step = checkpoint_step(out)
    path = Path(out) / LATEST
    try:
        if step is None:
            raise FileNotFoundError("no committed checkpoint")
        blobs = []
        for k in seed_index:
            path = seed_checkpoint(out, step, k)
            blobs.append(torch.load(path, map_location="cpu", weights_only=True))
        own = sae.state_dict()
        sae.load_state_dict({k: torch.stack([b["model"][k] for b in blobs]).to(sae.device, own[k].dtype) for k in own})
        first = blobs[0]["optimizer"]
        opt_state = {}
        for pid, st in first["state"].items():
            opt_state[pid] = {key: (torch.stack([b["optimizer"]["state"][pid][key] for b in blobs])
                                    if torch.is_tensor(v) and v.dim() > 0 else v) for key, v in st.items()}
        state.optimizer.load_state_dict({"state": opt_state, "param_groups": first["param_groups"]})
        state.tokens_since_fired.copy_(torch.stack([b["tokens_since_fired"] for b in blobs]))
        if data is not None:
            rng = [b["data_rng"].to(torch.uint8) for b in blobs]
            data.set_state(rng if data.vary else rng[:1])
        state.step = int(blobs[0]["step"])
        if any(int(b["step"]) != state.step for b in blobs):
            raise ValueError("seed files disagree on the step")
        hist = []
        for j, rec in enumerate(blobs[0]["history"]):
            hist.append({key: ([b["history"][j][key][0] for b in blobs] if isinstance(v, list) else v)
                         for key, v in rec.items()})
        state.history = hist
        state.seconds = max(float(b.get("seconds", 0.0)) for b in blobs)
        return {k: v for k, v in blobs[0].items() if k not in STATE_KEYS}
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFileError(f"{path}: cannot resume from this checkpoint ({msg}); pass --force to start over") from None


@contextmanager
def deferred_interrupt() -> Iterator[dict]:
    """Within: the first SIGINT only sets flag["hit"] (the trainer checkpoints after the current step and stops);
    a second SIGINT interrupts at once. Outside the main thread signals cannot be caught: nothing changes."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    prev = signal.getsignal(signal.SIGINT)
    restore = prev if prev is not None else signal.default_int_handler

    def handler(signum, frame):  # noqa: ARG001
        flag["hit"] = True
        signal.signal(signal.SIGINT, restore)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, restore)


def train_checkpointed(sae: SAE, batches: Iterator[Tensor], state: TrainState, tcfg: TrainConfig, out: Path, *,
                       data: SeededStream | None = None, extra: dict | None = None,
                       seed_index: list[int] | None = None, resumed_from: int | None = None,
                       stop_after: int | None = None, progress: bool = True,
                       on_step: Callable[[TrainState], object] | None = None) -> tuple[TrainStats, bool]:
    """train_steps up to tcfg.steps with checkpoints in `out`: every checkpoint_every steps, at step stop_after (then
    stop, as if killed) and after the step in which Ctrl-C came (then KeyboardInterrupt). `on_step` runs first after
    every step (a real run's convergence points, which `extra` then carries). A divergence names the last checkpoint
    (TrainingDiverged.checkpoint_step, .lr). Returns the stats and whether Ctrl-C came during the last step (the
    caller finishes the run, then raises KeyboardInterrupt). Under torchrun every rank calls it for its seeds."""
    t = tcfg
    dd = distributed.current()
    log_every = max(1, min(50, t.steps // 50))
    last_ckpt = resumed_from

    with deferred_interrupt() as interrupted:
        def checkpoint_on_step(st: TrainState) -> bool:
            nonlocal last_ckpt
            if on_step is not None:
                on_step(st)
            stop = stop_after is not None and st.step >= stop_after
            ctrl_c = interrupted["hit"] and st.step < t.steps
            if dd.active and st.step % log_every == 0:  # heartbeat; a Ctrl-C on any rank stops all at one step
                ctrl_c = st.step < t.steps and distributed.heartbeat(f"step {st.step}", int(interrupted["hit"])) > 0
            elif dd.active:
                ctrl_c = False
            save = (st.step % t.checkpoint_every == 0 and st.step < t.steps) or stop or ctrl_c
            if save:
                st.raise_if_diverged(sae)  # never checkpoint a diverged state
                save_checkpoint(out, sae, st, data, extra, seed_index, keep=resumed_from)
                last_ckpt = st.step
            if ctrl_c:  # Ctrl-C: keep this step, then stop
                raise KeyboardInterrupt
            return not stop

        try:
            stats = train_steps(sae, batches, t.steps, t, progress=progress, state=state, on_step=checkpoint_on_step,
                                log_every=log_every)
        except TrainingDiverged as exc:
            where = (f"the checkpoint at step {last_ckpt} is the last good state" if last_ckpt is not None
                     else "no checkpoint was written before it")
            err = TrainingDiverged(f"{exc}; {where}")
            err.checkpoint_step, err.lr = last_ckpt, t.lr
            raise err from None
    return stats, interrupted["hit"]


def write_seed_folders(out: Path, sae: SAE, seeds: list[int], metadata: Callable[[int], dict], log10_freq: Tensor,
                       cfg_extra: dict | None = None) -> None:
    """out/seeds/seed_<s> for each local seed s (SAELens folders; `cfg_extra` adds or replaces top-level cfg.json keys)."""
    from synthsae.io import save_seed_folder

    for i, s in enumerate(seeds):
        save_seed_folder(Path(out) / "seeds" / f"seed_{s}", sae, i, metadata(s), log10_freq[i], cfg_extra=cfg_extra)


def finish(out: Path, summary: dict) -> None:
    """Write train.json (the run is finished once it exists), then drop the checkpoint it replaces."""
    atomic_write_json(Path(out) / FINISHED, summary)
    shutil.rmtree(Path(out) / CHECKPOINT_DIR, ignore_errors=True)


def load_train_summary(run_dir: Path) -> dict:
    """The run's train.json (training and evaluation numbers)."""
    return json.loads((Path(run_dir) / FINISHED).read_text())

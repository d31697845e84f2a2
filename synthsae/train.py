"""The multi-seed trainer: all S seeds in one batched step, checkpoints, bit-identical resume on CPU.

Per step: Adam with linear warm-up then linear decay (from `decay_start` of the run to 0), the decoder
gradient's component parallel to each row removed, gradient clipping to `grad_clip` *per seed* (so seeds stay
independent), decoder rows renormalised to unit norm. A latent is **dead** when it has not fired in the last
`dead_window_tokens` training tokens (tokens, not steps; counted per seed). A NaN/Inf loss or gradient stops
training with `TrainingDiverged`, which names the last checkpoint on disk (the last good state), if any.
Ctrl-C (SIGINT) during `train_run` finishes the current step, writes a checkpoint and then raises
KeyboardInterrupt, so an interrupted run loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae import distributed
from synthsae.config import RunConfig, TrainConfig, validate
from synthsae.config import save as save_config
from synthsae.device import pick_device  # train_run uses it; cli.py still imports it from here
from synthsae.fileio import atomic_path, atomic_write_json
from synthsae.sae import build_sae
from synthsae.sae.base import SAE, cheap_sync
from synthsae.threads import configure_threads

# train.dtype -> (parameter and optimizer dtype, dtype of the dense encoder forward that picks the active latents).
# Low precision only ever touches that selection matmul: parameters, Adam state, decoder norms, the selected
# values and every gradient stay float32 (TopK family: selected values are recomputed exactly; dense variants run
# their forward under autocast). "tf32" = float32 storage with TF32 tensor-core matmuls for the selection (CUDA).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PARAM_DTYPE = {"float64": torch.float64}  # everything else keeps float32 master weights


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/Inf; the message says at which step and for which seeds.

    train_run adds `checkpoint_step` (the step of the last good checkpoint on disk, None when there is none)
    and `lr`, so a caller can say how to go on (resume from it with a lower learning rate).
    """

    checkpoint_step: int | None = None
    lr: float | None = None


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Learning rate at `step`: linear warm-up, constant, then linear decay to 0 from decay_start * steps."""
    lr = tcfg.lr
    if tcfg.warmup_steps > 0 and step < tcfg.warmup_steps:
        lr *= (step + 1) / tcfg.warmup_steps
    start = int(tcfg.decay_start * tcfg.steps)
    if step >= start and tcfg.steps > start:
        lr *= max(0.0, (tcfg.steps - step) / (tcfg.steps - start))
    return lr


@dataclass
class TrainState:
    """Everything that changes during training besides the SAE's own tensors."""

    step: int
    optimizer: torch.optim.Optimizer
    tokens_since_fired: Tensor  # [S, m] int64: training tokens since each latent last fired
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    first_bad: Tensor | None = None  # [2, S] int64 on the device: first step with a non-finite loss / gradient, -1 = none

    def dead(self, window: int) -> Tensor:
        return self.tokens_since_fired >= window

    def note_bad(self, step: int, kind: int, bad: Tensor) -> None:
        """Remember (on the device, no host sync) the first step at which each seed's loss (0) / gradient (1) went bad."""
        if self.first_bad is None:
            self.first_bad = torch.full((2, bad.numel()), -1, dtype=torch.long, device=bad.device)
        row = self.first_bad[kind]
        row.copy_(torch.where((row < 0) & bad, step, row))

    def raise_if_diverged(self, sae: SAE) -> None:
        """One host read of the divergence flags; raises TrainingDiverged naming the first bad step and its seeds."""
        if self.first_bad is None:
            return
        fb = self.first_bad.tolist()
        hits = [(st, kind, s) for kind in (0, 1) for s, st in enumerate(fb[kind]) if st >= 0]
        if not hits:
            return
        step, kind = min((st, kind) for st, kind, _ in hits)
        bad = torch.tensor([any(st == step and k == kind and s == i for st, k, s in hits) for i in range(len(fb[0]))])
        raise TrainingDiverged(_diverged_msg(step, ("loss", "gradient")[kind], bad, sae))



@dataclass
class TrainStats:
    """What train_steps reports (per-seed lists have one entry per seed)."""

    steps: int
    tokens: int
    seconds: float
    fvu: list[float]
    l0: list[float]
    loss: list[float]
    dead_fraction: list[float]
    history: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def trainable_params(sae: SAE, freeze_decoder: bool) -> list[torch.nn.Parameter]:
    return [p for n, p in sae.named_parameters() if not (freeze_decoder and n == "W_dec")]


def new_state(sae: SAE, tcfg: TrainConfig, freeze_decoder: bool = False) -> TrainState:
    params = trainable_params(sae, freeze_decoder)
    try:  # fused: one kernel per tensor instead of a dozen passes over each (same element-wise maths)
        opt = torch.optim.Adam(params, lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - dtype/device without a fused kernel
        opt = torch.optim.Adam(params, lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8)
    tsf = torch.zeros(sae.n_seeds, sae.d_sae, dtype=torch.long, device=sae.device)
    return TrainState(step=0, optimizer=opt, tokens_since_fired=tsf)


def clip_per_seed(params: list[torch.nn.Parameter], max_norm: float, S: int) -> Float[Tensor, " S"]:
    """Scale each seed's gradient (over all parameters) to norm <= max_norm; returns the norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    per = [torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim()))) if g.dim() > 1 else g.abs() for g in grads]
    norms = torch.linalg.vector_norm(torch.stack(per), dim=0)
    if max_norm > 0:
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(S, *([1] * (g.dim() - 1))))
    return norms


def _fmt(vals: list[float], f: str = ".3f") -> str:
    return " ".join(format(v, f) for v in vals) if len(vals) <= 8 else f"{min(vals):{f}}..{max(vals):{f}}"


def train_steps(
    sae: SAE,
    batches: Iterator[Tensor],
    steps: int,
    tcfg: TrainConfig,
    *,
    freeze_decoder: bool = False,
    progress: bool = True,
    state: TrainState | None = None,
    on_step: Callable[[TrainState], bool] | None = None,
    log_every: int | None = None,
) -> TrainStats:
    """Train `sae` in place from state.step up to `steps` (the schedule's length) on batches [B, d] or [S, B, d].

    freeze_decoder=True trains everything but W_dec (pooling's refit of encoder and biases). `on_step` runs
    after every step and may return False to stop early (checkpointing and tests use it).
    """
    from synthsae.progress import progress_bar as tqdm

    state = state or new_state(sae, tcfg, freeze_decoder)
    S = sae.n_seeds
    params = trainable_params(sae, freeze_decoder)
    was_frozen = sae.W_dec.requires_grad
    if freeze_decoder:
        sae.W_dec.requires_grad_(False)
    log_every = log_every or max(1, min(50, steps // 50))
    # CPU: reading a value is free, so divergence is caught at the step it happens. CUDA: no host-device sync inside
    # the step; flags are read every log_every steps (and before every checkpoint, by the caller's on_step).
    check_each_step = cheap_sync(sae.device)
    bar = tqdm(total=steps, initial=state.step, disable=not progress, file=sys.stderr, dynamic_ncols=True,
               desc=f"train {sae.variant} x{S}", leave=False)
    out = None
    tokens = 0
    t0 = time.perf_counter()
    seconds0 = state.seconds  # seconds of earlier sessions (a resumed run): train.json counts them all
    sae.train()
    batches = device_batches(batches, sae.device)
    try:
        while state.step < steps:
            step = state.step
            x = next(batches)
            lr = lr_at(step, tcfg)
            for g in state.optimizer.param_groups:
                g["lr"] = lr
            with _dense_precision(sae):
                out = sae(x, step, dead=state.dead(tcfg.dead_window_tokens))
            state.note_bad(step, 0, ~torch.isfinite(out.losses.detach()))
            if check_each_step:
                state.raise_if_diverged(sae)
            state.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if not freeze_decoder:
                sae.remove_parallel_grad()
            norms = clip_per_seed(params, tcfg.grad_clip, S)
            state.note_bad(step, 1, ~torch.isfinite(norms))
            if check_each_step:
                state.raise_if_diverged(sae)
            state.optimizer.step()
            if not freeze_decoder:
                sae.normalize_decoder()
            sae.update_running_stats(out)
            B = x.shape[-2]
            tokens += B
            with torch.no_grad():
                state.tokens_since_fired.add_(B).masked_fill_(out.fired, 0)
            state.step += 1
            state.seconds = seconds0 + time.perf_counter() - t0
            if state.step % log_every == 0 or state.step == steps:
                state.raise_if_diverged(sae)
                rec = {
                    "step": state.step,
                    "lr": lr,
                    "loss": out.losses.detach().tolist(),
                    "fvu": out.fvu.tolist(),
                    "l0": out.l0.tolist(),
                    "dead_fraction": state.dead(tcfg.dead_window_tokens).float().mean(dim=1).tolist(),
                }
                state.history.append(rec)
                bar.set_postfix_str(f"fvu {_fmt(rec['fvu'])} | l0 {_fmt(rec['l0'], '.1f')} | dead {_fmt(rec['dead_fraction'], '.2f')}")
            bar.update(1)
            if on_step is not None and on_step(state) is False:
                break
    finally:
        bar.close()
        state.seconds = seconds0 + time.perf_counter() - t0
        if freeze_decoder:
            sae.W_dec.requires_grad_(was_frozen)
        sae.eval()
    state.raise_if_diverged(sae)
    dead = state.dead(tcfg.dead_window_tokens).float().mean(dim=1).tolist()
    if out is None:
        nan = [float("nan")] * S
        return TrainStats(state.step, tokens, state.seconds, nan, nan, nan, dead, state.history)
    return TrainStats(state.step, tokens, state.seconds, out.fvu.tolist(), out.l0.tolist(), out.losses.detach().tolist(),
                      dead, state.history)


@contextlib.contextmanager
def _dense_precision(sae: SAE) -> Iterator[None]:
    """Low precision for variants whose forward is dense (relu, jumprelu, gated): autocast for bfloat16 / float16
    (parameters, Adam state and the loss stay float32), TF32 matmuls for "tf32". The TopK family handles it itself
    (only the selection matmul is low precision)."""
    prec = sae.select_precision
    if prec is None or hasattr(sae, "exact_pre"):
        yield
    elif prec == "tf32":
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    else:
        with torch.autocast(sae.device.type, dtype=prec):
            yield


def device_batches(batches: Iterator[Tensor], device: torch.device) -> Iterator[Tensor]:
    """Batches on `device`: a host batch for a CUDA run is pinned and copied non-blocking (the host goes on queueing
    the step while the copy runs). No look-ahead: the data stream advances exactly one batch per step, so a
    checkpoint's generator state stays in step with the weights. On the CPU, or already on the device: unchanged."""
    for x in batches:
        if device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(device, non_blocking=True)
        elif x.device != device and device.type == "cuda":
            x = x.to(device)
        yield x


def _diverged_msg(step: int, what: str, bad: Tensor, sae: SAE) -> str:
    seeds = [sae.init_seeds[i] for i in torch.nonzero(bad).flatten().tolist()]
    return f"training diverged at step {step}: the {what} is NaN/Inf for init seed(s) {seeds}"


# ----------------------------------------------------------------------------------------------- data


class DataStream:
    """Seeded batches from the truth: one stream shared by all seeds, or (vary_data) stream data_seed + s per seed.

    `seed_index` names the seeds this process trains (a rank's shard; default all n_seeds): with a shared stream
    every rank draws the same batches, so a seed's data never depends on how the seeds are split over processes.
    The generators' states are part of a checkpoint, so a resumed run sees exactly the same batches.
    """

    def __init__(self, truth, batch_size: int, data_seed: int, n_seeds: int, vary_data: bool, dtype=torch.float32,
                 seed_index: list[int] | None = None):
        from synthsae.truth import make_generator

        self.truth, self.batch_size, self.dtype = truth, batch_size, dtype
        idx = list(range(n_seeds)) if seed_index is None else list(seed_index)
        seeds = [data_seed + s for s in idx] if vary_data else [data_seed]
        self.gens = [make_generator(s, truth.device) for s in seeds]
        self.vary = vary_data

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> Tensor:
        from synthsae.truth import sample

        xs = [sample(self.truth, self.batch_size, g, details=False).x for g in self.gens]
        x = torch.stack(xs) if self.vary else xs[0]
        return x.to(self.dtype)

    def get_state(self) -> list[Tensor]:
        return [g.get_state() for g in self.gens]

    def set_state(self, states: list[Tensor]) -> None:
        for g, s in zip(self.gens, states):
            g.set_state(s)

    def seed_state(self, i: int) -> Tensor:
        """Generator state of the stream the i-th local seed reads (its own, or the shared one)."""
        return self.gens[i if self.vary else 0].get_state()


# ----------------------------------------------------------------------------------------------- runs

# checkpoint/step_<N>/seed_<k>.pt holds seed k's whole state at step N; checkpoint/latest.json names the newest
# step that *every* seed reached (written by rank 0 once all ranks saved), so a run killed mid-save resumes from
# the previous complete step, and any number of processes can resume any seed.
CHECKPOINT_DIR = "checkpoint"
LATEST = "checkpoint/latest.json"
FINISHED = "train.json"


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


def _save_checkpoint(out: Path, sae: SAE, state: TrainState, data: DataStream, extra: dict | None = None,
                     seed_index: list[int] | None = None, keep: int | None = None) -> None:
    """Write one file per local seed for state.step (with `extra`, e.g. lr_changes), then commit the step (every
    rank, collectively: rank 0 writes latest.json once all have saved, and drops older steps but `keep`, the step a
    resume started from)."""
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
            "data_rng": data.seed_state(i).cpu(),
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


def _load_checkpoint(out: Path, sae: SAE, state: TrainState, data: DataStream, seed_index: list[int] | None = None) -> dict:
    """Load the committed step's files of the local seeds (stacked back along the seed axis); returns the extra
    entries (lr_changes)."""
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
        return {"lr_changes": list(blobs[0].get("lr_changes", []))}
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFileError(f"{path}: cannot resume from this checkpoint ({msg}); pass --force to start over") from None


def _check_resume_config(out: Path, cfg: RunConfig) -> float | None:
    """A resumed run keeps its saved config; only train.lr (the way out of a divergence) and train.device may change.

    Returns the saved lr when the new one differs, else None; any other difference is a one-line ConfigError.
    """
    from synthsae import config as C
    from synthsae.io import RunFileError

    try:
        saved = C.load(out / "config.toml")
    except C.ConfigError as exc:
        raise RunFileError(f"{out / 'config.toml'}: {exc}") from None
    diffs = [d for d in C.differences(saved, cfg) if d[0] not in ("train.lr", "train.device")]
    if diffs:
        raise C.ConfigError(f"{out}: cannot resume with a different config ({C.describe_differences(diffs)}); "
                            "resume without those options (the run keeps its config.toml) or pass --force to start over")
    return saved.train.lr if saved.train.lr != cfg.train.lr else None


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


def seed_metadata(cfg: RunConfig, s: int) -> dict:
    """What goes under cfg.json's metadata for seed index s: both seeds, the variant and the full config."""
    t = cfg.train
    init = t.resolved_init_seeds()[s]
    return {
        "variant": cfg.sae.variant,
        "seed_index": s,
        "init_seed": init,
        "data_seed": t.data_seed + s if t.data_varies() else t.data_seed,
        "vary_data": t.vary_data,
        "seed_mode": t.resolved_seed_mode(),
        "preset": cfg.preset,
        "truth": asdict(cfg.truth),
        "sae": asdict(cfg.sae),
        "train": asdict(cfg.train),
    }


@torch.no_grad()
def evaluate(sae: SAE, truth, n_tokens: int, batch_size: int, seed: int) -> dict:
    """Firing frequency per latent, pooled FVU and mean L0 per seed on a fresh stream (inference encode)."""
    from synthsae.truth import make_generator, sample

    gen = make_generator(seed, truth.device)
    S, m = sae.n_seeds, sae.d_sae
    fires = torch.zeros(S, m, dtype=torch.float64, device=sae.device)
    err = torch.zeros(S, dtype=torch.float64, device=sae.device)
    l0 = torch.zeros(S, dtype=torch.float64, device=sae.device)
    xs_sum = torch.zeros(truth.d, dtype=torch.float64, device=sae.device)
    xs_sq = torch.zeros((), dtype=torch.float64, device=sae.device)
    n = 0
    while n < n_tokens:
        b = min(batch_size, n_tokens - n)
        x = sample(truth, b, gen, details=False).x.to(sae.dtype)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        nz = acts != 0  # blocktopk codes are signed inside a group
        fires += nz.sum(dim=1)
        l0 += nz.sum(dim=(1, 2))
        err += (x.unsqueeze(0) - x_hat).double().pow(2).sum(dim=(1, 2))
        xs_sum += x.double().sum(dim=0)
        xs_sq += x.double().pow(2).sum()
        n += b
    var = xs_sq - xs_sum.pow(2).sum() / n
    freq = fires / n
    return {"fvu": (err / var).tolist(), "l0": (l0 / n).tolist(), "frequency": freq.float(),
            "dead_fraction_eval": (fires == 0).double().mean(dim=1).tolist(), "tokens": n}


def _check_target(cfg: RunConfig, out: Path, resume: bool, force: bool) -> tuple[bool, float | None]:
    """Refuse what would lose work; returns (resuming from a committed checkpoint, the saved lr when it changed)."""
    started = (out / "config.toml").exists() or (out / CHECKPOINT_DIR).exists()
    if (out / FINISHED).exists() and not force:
        raise FileExistsError(f"{out}: holds a finished training run; pass --force to overwrite it")
    if not force and not resume and started:
        raise FileExistsError(f"{out}: holds an unfinished training run; pass --resume to continue it or --force to start over")
    old_lr = _check_resume_config(out, cfg) if resume and not force and (out / "config.toml").exists() else None
    at = checkpoint_step(out) if resume and not force else None
    if at is not None and at > cfg.train.steps:
        from synthsae.config import ConfigError

        raise ConfigError(f"train.steps = {cfg.train.steps}: below the checkpoint's step {at} in {out / CHECKPOINT_DIR}; "
                          f"a resume continues from it, so give train.steps >= {at} (or --force to start over)")
    return at is not None, old_lr


def train_run(cfg: RunConfig, out: Path, *, resume: bool = False, force: bool = False, progress: bool = True,
              stop_after: int | None = None) -> SAE:
    """Train cfg.train.seeds SAEs into run folder `out` (layout in DESIGN.md); returns this process's seeds stacked.

    resume=True continues from out/checkpoint/ (bit-identical on CPU) with the config the run was started with
    (only train.lr may differ, and the change is recorded); a finished run is only replaced with force=True, and
    force only clears a folder that holds a synthsae run. stop_after=N stops (with a checkpoint) once step N is
    reached, as if the run had been killed. Ctrl-C checkpoints after the current step, then raises
    KeyboardInterrupt. Another process writing the same folder is refused (a lock on the run's marker file).
    Under torchrun each rank trains its shard of the seeds (distributed.shard) and writes their seed folders and
    checkpoint files; rank 0 holds the lock and writes config.toml, truth.safetensors and train.json.
    """
    from synthsae.memory import check_run_fits
    from synthsae.rundir import check_overwritable, clear_run, run_lock

    validate(cfg)
    out = Path(out)
    t = cfg.train
    device = pick_device(t.device)
    dd = distributed.setup(device)
    device = distributed.rank_device(device, dd)
    if dd.world > t.seeds:
        from synthsae.config import ConfigError

        raise ConfigError(f"train.seeds = {t.seeds}: fewer seeds than processes ({dd.world}); "
                          f"run at most {t.seeds} processes")
    check_run_fits(cfg, str(device), analysis=False, out=None if resume else out)  # before anything is written
    if force:
        check_overwritable(out)
    with run_lock(out) if dd.is_main else contextlib.nullcontext():
        return _train_locked(cfg, out, device, dd, resume=resume, force=force, progress=progress, stop_after=stop_after,
                             clear=lambda: clear_run(out, ("seeds", CHECKPOINT_DIR, FINISHED, "config.toml", "truth.safetensors")))


def _train_locked(cfg: RunConfig, out: Path, device: torch.device, dd: distributed.Dist, *, resume: bool, force: bool,
                  progress: bool, stop_after: int | None, clear: Callable[[], None]) -> SAE:
    from synthsae.io import save_seed_folder, save_truth
    from synthsae.truth import build_truth

    resuming, old_lr = _check_target(cfg, out, resume, force)
    distributed.barrier("start")  # every rank has checked the folder before rank 0 changes it
    t = cfg.train
    configure_threads(t.batch_size, cfg.truth.d, cfg.sae.d_sae, device)
    dtype = PARAM_DTYPE.get(t.dtype, torch.float32)
    truth = build_truth(cfg.truth, device)
    if dd.is_main:
        if force:
            clear()
        out.mkdir(parents=True, exist_ok=True)
        if not resuming or old_lr is not None:
            save_config(cfg, out / "config.toml")
        if not resuming:
            save_truth(out / "truth.safetensors", truth)
    distributed.barrier("run files written")
    mine = distributed.shard(t.seeds, dd.rank, dd.world)
    init = t.resolved_init_seeds()
    sae = build_sae(cfg.sae, cfg.truth.d, [init[s] for s in mine], device=device, dtype=dtype)
    set_precision(sae, t.dtype)
    data = DataStream(truth, t.batch_size, t.data_seed, t.seeds, t.data_varies(), dtype=dtype, seed_index=mine)
    state = new_state(sae, t)
    extra: dict = {"lr_changes": []}
    last_ckpt = None
    resumed_from = None
    if resuming:
        extra = _load_checkpoint(out, sae, state, data, mine)
        last_ckpt = resumed_from = state.step
    if resuming and old_lr is not None:
        extra["lr_changes"].append({"step": state.step, "from": old_lr, "to": t.lr})
    log_every = max(1, min(50, t.steps // 50))

    with deferred_interrupt() as interrupted:
        def on_step(st: TrainState) -> bool:
            nonlocal last_ckpt
            stop = stop_after is not None and st.step >= stop_after
            ctrl_c = interrupted["hit"] and st.step < t.steps
            if dd.active and st.step % log_every == 0:  # heartbeat; a Ctrl-C on any rank stops all at one step
                ctrl_c = st.step < t.steps and distributed.heartbeat(f"step {st.step}", int(interrupted["hit"])) > 0
            elif dd.active:
                ctrl_c = False
            save = (st.step % t.checkpoint_every == 0 and st.step < t.steps) or stop or ctrl_c
            if save:
                st.raise_if_diverged(sae)  # never checkpoint a diverged state
                _save_checkpoint(out, sae, st, data, extra, mine, keep=resumed_from)
                last_ckpt = st.step
            if ctrl_c:  # Ctrl-C: keep this step, then stop
                raise KeyboardInterrupt
            return not stop

        try:
            stats = train_steps(sae, data, t.steps, t, progress=progress and dd.is_main, state=state, on_step=on_step,
                                log_every=log_every)
        except TrainingDiverged as exc:
            where = (f"the checkpoint at step {last_ckpt} is the last good state" if last_ckpt is not None
                     else "no checkpoint was written before it")
            err = TrainingDiverged(f"{exc}; {where}")
            err.checkpoint_step, err.lr = last_ckpt, t.lr
            raise err from None
    if state.step < t.steps:
        return sae  # stopped early (stop_after): the checkpoint holds the state

    ev = evaluate(sae, truth, cfg.analysis.eval_tokens, t.batch_size, seed=t.data_seed + 2**31)
    log10_freq = torch.log10(ev["frequency"] + 1e-10)
    for i, s in enumerate(mine):
        save_seed_folder(out / "seeds" / f"seed_{s}", sae, i, seed_metadata(cfg, s), log10_freq[i])
    part = {"seeds": mine, "stats": stats.to_dict(), "eval": {k: v for k, v in ev.items() if k != "frequency"},
            "seconds": state.seconds}
    parts = distributed.gather_to_main(part, "gathering per-seed results")
    if parts is not None:
        summary = _run_summary(cfg, parts, dd.world)
        if extra.get("lr_changes"):
            summary["lr_changes"] = extra["lr_changes"]
        atomic_write_json(out / FINISHED, summary)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    distributed.barrier("train.json written")
    if interrupted["hit"]:  # Ctrl-C in the last step: training is finished and saved, now stop
        raise KeyboardInterrupt
    return sae


def _run_summary(cfg: RunConfig, parts: list[dict], world: int) -> dict:
    """train.json from every rank's part (per-seed lists put back in seed order)."""
    t = cfg.train
    order = sorted(((s, p, i) for p in parts for i, s in enumerate(p["seeds"])), key=lambda r: r[0])

    def per_seed(get) -> list:
        return [get(p)[i] for _, p, i in order]

    history = []
    for j, rec in enumerate(parts[0]["stats"]["history"]):
        history.append({key: (per_seed(lambda p: p["stats"]["history"][j][key]) if isinstance(v, list) else v)
                        for key, v in rec.items()})
    st = lambda key: per_seed(lambda p: p["stats"][key])  # noqa: E731
    ev = lambda key: per_seed(lambda p: p["eval"][key])  # noqa: E731
    return {
        "variant": cfg.sae.variant,
        "init_seeds": t.resolved_init_seeds(),
        "seed_mode": t.resolved_seed_mode(),
        "steps": parts[0]["stats"]["steps"],
        "tokens_per_seed": parts[0]["stats"]["steps"] * t.batch_size,
        "seconds": max(p["seconds"] for p in parts),
        "processes": world,
        "dead_definition": f"no firing in the last {t.dead_window_tokens} training tokens",
        "train_final": {"fvu": st("fvu"), "l0": st("l0"), "loss": st("loss"), "dead_fraction": st("dead_fraction")},
        "eval": {"tokens": parts[0]["eval"]["tokens"], "fvu": ev("fvu"), "l0": ev("l0"),
                 "never_fired_fraction": ev("dead_fraction_eval")},
        "history": history,
    }


def set_precision(sae: SAE, dtype_name: str) -> None:
    """Apply train.dtype's compute precision to `sae` (see DTYPES); parameters keep their own dtype."""
    sae.select_precision = {"bfloat16": torch.bfloat16, "float16": torch.float16, "tf32": "tf32"}.get(dtype_name)


def load_train_summary(run_dir: Path) -> dict:
    """The run's train.json (training and evaluation numbers)."""
    return json.loads((Path(run_dir) / FINISHED).read_text())

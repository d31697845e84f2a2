"""The batched S-seed training loop: batches in, Adam steps, aux losses, dead-latent bookkeeping, progress.

Per step: Adam with linear warm-up then linear decay (from `decay_start` of the run to 0), the decoder
gradient's component parallel to each row removed, gradient clipping to `grad_clip` *per seed* (so seeds stay
independent), decoder rows renormalised to unit norm. A latent is **dead** when it has not fired in the last
`dead_window_tokens` training tokens (tokens, not steps; counted per seed). A NaN/Inf loss or gradient stops
training with `TrainingDiverged`. No file I/O: checkpoints are the caller's `on_step` (synthsae.checkpoint).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from synthsae.config import TrainConfig
from synthsae.sae.base import SAE, cheap_sync

# train.dtype -> (parameter and optimizer dtype, dtype of the dense encoder forward that picks the active latents).
# Low precision only ever touches that selection matmul: parameters, Adam state, decoder norms, the selected
# values and every gradient stay float32 (TopK family: selected values are recomputed exactly; dense variants run
# their forward under autocast). "tf32" = float32 storage with TF32 tensor-core matmuls for the selection (CUDA).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PARAM_DTYPE = {"float64": torch.float64}  # everything else keeps float32 master weights


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/Inf; the message says at which step and for which seeds.

    checkpoint.train_checkpointed adds `checkpoint_step` (the step of the last good checkpoint on disk, None when
    there is none) and `lr`, so a caller can say how to go on (resume from it with a lower learning rate).
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


def set_precision(sae: SAE, dtype_name: str) -> None:
    """Apply train.dtype's compute precision to `sae` (see DTYPES); parameters keep their own dtype."""
    sae.select_precision = {"bfloat16": torch.bfloat16, "float16": torch.float16, "tf32": "tf32"}.get(dtype_name)

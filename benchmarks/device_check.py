"""The first-GPU check in one command: CUDA tests, training throughput against matmul ceilings, the synthetic study
at GPU scale beside SynthSAEBench's MCC table, the real side's CUDA path on a random SmolLM2-shaped Llama, torchrun.

    PYTHONPATH=. python3 benchmarks/device_check.py OUT [--budget 450] [--parts a,b,c,d,e]
    PYTHONPATH=. python3 benchmarks/device_check.py OUT --dry-run     # the same steps at toy sizes on the CPU

Needs only the repository on PYTHONPATH and what a GPU machine's python usually has (torch, transformers,
safetensors, scipy, matplotlib, typer, rich, tqdm, jaxtyping, pytest, hypothesis). Each part runs in its own
process with a time limit taken from what is left of --budget, so one part that breaks or runs long is recorded
and the others still run. OUT gets device_check.json (rewritten after every part: a killed check keeps what it
measured), device_check.md and device_check.log (every part's output); scratch runs go
in a new temporary folder (--work to choose it, --keep to keep it).

Parts:
  a  CUDA tests: `pytest -m cuda` (every test that needs CUDA carries the mark)
  b  training throughput of TopK / BatchTopK at (d 768, m 16384, k 32), (d 2304, m 65536, k 32 / 64), S = 1 and 8,
     batch 4096, train dtype bfloat16, against bf16 / tf32 / fp32 matmul ceilings measured in the same process;
     the sparse-decoder kernels against the reference when the kernel module is present
  c  `synthsae run --preset paper` with fewer steps (time per stage), then the `full` bench suite's synthbench16k
     cells at width 4096, L0 25 for matryoshka, batchtopk, jumprelu, relu (MCC beside SynthSAEBench's)
  d  `synthsae real run` on the CUDA path with a randomly initialised Llama of SmolLM2-135M's shape and a generated
     corpus: collect, train, splice, pool, atlas (time per stage)
  e  torchrun: the 2-rank gloo test on the CPUs, and a 1-rank NCCL training run on the GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("a", "b", "c", "d", "e")
ORDER = ("a", "b", "e", "d", "c")  # c is the longest and takes what is left
SHARE = {"a": 50, "b": 110, "e": 45, "d": 90, "c": 150}  # seconds each part may take at most (GPU sizes)
STAGE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")
# SynthSAEBench's published MCC at width 4096, L0 25, after 200M samples (the table).
PUBLISHED_MCC = {"matryoshka": 0.793, "batchtopk": 0.757, "jumprelu": 0.753, "relu": 0.604}


@dataclass
class PartResult:
    """One part's outcome: ok / failed / timeout / skipped, its seconds, its numbers and the tail of its output."""

    part: str
    title: str
    status: str = "skipped"
    seconds: float = 0.0
    numbers: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    output_tail: str = ""


TITLES = {
    "a": "CUDA tests (pytest -m cuda)",
    "b": "training throughput against matmul ceilings",
    "c": "synthetic study at GPU scale and SynthSAEBench's MCC",
    "d": "real side's CUDA path on a random SmolLM2-shaped Llama",
    "e": "torchrun: 2-rank gloo on the CPUs, 1-rank NCCL on the GPU",
}


# ----------------------------------------------------------------------------------------------- running


def child_env() -> dict:
    """This checkout first on the path; quiet, unbuffered children; progress as sparse lines."""
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1",
            "SYNTHSAE_PROGRESS_SECONDS": "15", "MPLBACKEND": "Agg"}


def run_logged(cmd: list[str], timeout: float, log) -> tuple[int | None, str, list[tuple[float, str]]]:
    """Run cmd (stderr into stdout) for at most `timeout` s; returns (rc or None on timeout, output, stage lines
    with the second each was printed). Every line also goes to `log`."""
    t0 = time.perf_counter()
    log(f"$ {' '.join(map(str, cmd))}  (limit {timeout:.0f} s)")
    p = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    stages: list[tuple[float, str]] = []
    import threading

    def reader() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            lines.append(line)
            log("  " + line)
            if STAGE.match(line):
                stages.append((time.perf_counter() - t0, line))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        rc: int | None = p.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.wait()
        rc = None
    th.join(timeout=5)
    return rc, "\n".join(lines), stages


def stage_times(stages: list[tuple[float, str]], end: float) -> list[dict]:
    """Seconds of each '[i/n] ...' stage: from its line to the next one (the last to `end`)."""
    out = []
    for i, (t, line) in enumerate(stages):
        nxt = stages[i + 1][0] if i + 1 < len(stages) else end
        out.append({"stage": line[:120], "seconds": round(nxt - t, 2)})
    return out


def tail(text: str, n: int = 2500) -> str:
    return text[-n:]


# ----------------------------------------------------------------------------------------------- part a


def part_a(ctx: "Ctx", res: PartResult, limit: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-o", "addopts=", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    t0 = time.perf_counter()
    rc, out, _ = run_logged(cmd, limit, ctx.log)
    res.seconds = time.perf_counter() - t0
    summary = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped|deselected)", ln)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    res.numbers = {"counts": counts, "returncode": rc}
    res.status = "timeout" if rc is None else ("ok" if rc in (0, 5) and not counts.get("failed") else "failed")
    if ctx.cuda and counts.get("skipped"):
        res.notes.append("tests skipped on a CUDA machine (see the log for the reasons)")
    res.output_tail = tail(out)


# ----------------------------------------------------------------------------------------------- part b


def profile_top(fn, device, n: int = 12) -> list[dict]:
    """The n ops with the most self time (CUDA time on a GPU) over one call of fn, as rows."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ev = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    return [{"op": e.key[:60], "self_ms": getattr(e, key, 0) / 1e3, "cpu_self_ms": e.self_cpu_time_total / 1e3,
             "calls": e.count} for e in ev]


def child_profile(dry: bool, device: str, save) -> dict:
    """Where a GPU-scale training step goes: sampling the truth (paper, synthbench16k) and one paper-shaped SAE
    step, timed and profiled (the first device run's `paper` training took 54 ms per step)."""
    import torch

    from synthsae.config import SAEConfig, TrainConfig, preset
    from synthsae.sae import build_sae
    from synthsae.loop import new_state, set_precision, train_steps
    from synthsae.truth import build_truth, make_generator, sample

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    out: dict = {"sampling": [], "step": {}}
    B = 256 if dry else 4096
    for name in ("tiny",) if dry else ("paper", "synthbench16k"):
        t0 = time.perf_counter()
        truth = build_truth(preset(name).truth, device=dev)
        build_s = time.perf_counter() - t0
        gen = make_generator(0, dev)
        sample(truth, B, gen, details=False)
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            sample(truth, B, gen, details=False)
        sync()
        per = (time.perf_counter() - t0) / 5
        out["sampling"].append({"preset": name, "build_s": build_s, "batch": B, "batch_ms": per * 1e3,
                                "samples_per_s": B / per,
                                "top_ops": profile_top(lambda: sample(truth, B, gen, details=False), dev, 8)})
        print(f"  sampling {name}: {per * 1e3:.1f} ms per batch of {B} (build {build_s:.1f} s)", flush=True)
        save(out)
    d, m, k, S, dtype = (32, 256, 4, 2, "float32") if dry else (768, 8192, 32, 8, "bfloat16")
    cfg = SAEConfig(variant="topk", d_sae=m, k=k)
    tcfg = TrainConfig(seeds=S, steps=10**6, batch_size=B, lr=1e-4, warmup_steps=0, dtype=dtype)
    t0 = time.perf_counter()
    sae = build_sae(cfg, d, list(range(S)), device=dev, dtype=torch.float32)
    build_s = time.perf_counter() - t0
    set_precision(sae, dtype)
    x = torch.randn(B, d, device=dev)
    state = new_state(sae, tcfg)
    step = lambda: train_steps(sae, iter([x]), state.step + 1, tcfg, progress=False, state=state, log_every=10**9)  # noqa: E731
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    sync()
    per = (time.perf_counter() - t0) / 5
    out["step"] = {"d": d, "m": m, "k": k, "S": S, "batch": B, "dtype": dtype, "build_s": build_s, "step_ms": per * 1e3,
                   "top_ops": profile_top(step, dev, 12)}
    print(f"  paper-shaped step (S {S}, {dtype}): {per * 1e3:.1f} ms; SAE built in {build_s:.1f} s", flush=True)
    save(out)
    return out


def child_b(dry: bool, device: str, save=lambda numbers: None) -> dict:
    """Throughput rows and ceilings (run in its own process); `save` gets the numbers after every row."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_throughput import matmul_ceiling, time_training

    dev = torch.device(device)
    if dry:
        sizes, B, S_list, dtype, steps, warmup, reps = [(32, 256, 4)], 256, [1, 2], "float32", 2, 1, 2
    else:
        sizes, B, S_list, dtype, steps, warmup, reps = ([(768, 16384, 32), (2304, 65536, 32), (2304, 65536, 64)],
                                                        4096, [1, 8], "bfloat16", 6, 3, 10)
    out: dict = {"batch": B, "train_dtype": dtype, "ceilings": [], "rows": [], "kernels": []}
    out["profile"] = child_profile(dry, device, lambda p: save({**out, "profile": p}))
    try:
        from synthsae.sae.kernels import bench as kernel_bench  # the CUDA kernels (Triton); absent on older checkouts
    except ImportError as e:
        out["kernels_note"] = f"no kernel module: {e}"
    else:
        for d, m, k in sizes:
            for S in S_list[-1:]:
                row: dict = {"d": d, "m": m, "k": k, "S": S}
                for name, fn in (("decoder", lambda: kernel_bench.bench_decoder(S=S, B=B, m=m, d=d, k=k, device=dev,
                                                                           dtype=torch.float32)),
                                 ("topk", lambda: kernel_bench.bench_topk(S=S, B=B, m=m, k=k, device=dev, dtype=torch.float32))):
                    try:
                        row[name] = fn()
                    except Exception as e:  # recorded, not fatal: the point is to learn what breaks
                        row[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                out["kernels"].append(row)
                print(f"  kernels d {d} m {m} k {k} S {S}: {json.dumps(row)[:300]}", flush=True)
                save(out)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    ceil: dict = {}
    for d, m, _ in sizes:
        if (d, m) in ceil:
            continue
        ceil[(d, m)] = {p: matmul_ceiling(B, d, m, reps, dev, p) for p in ("bfloat16", "tf32", "float32")}
        out["ceilings"].append({"d": d, "m": m, **{f"{p}_tflops": v / 1e12 for p, v in ceil[(d, m)].items()}})
        print(f"  ceilings d {d} m {m}: " + ", ".join(f"{p} {v / 1e12:.0f}" for p, v in ceil[(d, m)].items())
              + " TFLOP/s", flush=True)
        save(out)
    for d, m, k in sizes:
        bound = ceil[(d, m)][dtype] / (2 * d * m)  # tokens/s per seed if a step cost only its encoder forward
        for variant in ("topk", "batchtopk"):
            one = None
            for S in S_list:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                t1 = time.perf_counter()
                t = time_training(variant, list(range(S)), B, d, m, k, steps, warmup, device=dev, dtype=dtype)
                one = t if S == 1 else one
                peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
                tps = B * S / t
                out["rows"].append({
                    "variant": variant, "d": d, "m": m, "k": k, "S": S, "step_ms": t * 1e3,
                    "tokens_x_seeds_per_s": tps, "fraction_of_encoder_bound": tps / bound,
                    # sequential = S one-seed steps (each seed's step costs the same), measured as S x the S=1 median
                    "batched_over_sequential": (S * one / t) if one else None, "peak_gib": peak,
                    "seconds_incl_build": time.perf_counter() - t1,
                })
                print(f"  {variant} d {d} m {m} k {k} S {S}: step {t * 1e3:.1f} ms ({time.perf_counter() - t1:.0f} s "
                      "with the build)", flush=True)
                save(out)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return out


def part_b(ctx: "Ctx", res: PartResult, limit: float) -> None:
    numbers, out, secs, rc = ctx.child("b", limit)
    res.seconds, res.output_tail = secs, tail(out)
    res.numbers = numbers or {}  # on a timeout: what the child had measured
    res.status = "timeout" if rc is None else ("ok" if rc == 0 and numbers else "failed")


# ----------------------------------------------------------------------------------------------- part c


def child_c_bench(dry: bool, work: str, save=lambda numbers: None) -> dict:
    """synthbench16k cells at width 4096 and L0 25 (dry: tiny at L0 3), MCC of each seed's dictionary."""
    import torch

    from synthsae.bench import PresetSpec, Suite, train_cell
    from synthsae.io import load_run
    from synthsae.metrics.recovery import matched_mcc
    from synthsae.checkpoint import load_train_summary

    if dry:
        spec, steps, seeds, l0 = PresetSpec("tiny", "tiny", (3.0,)), 100, 2, 3.0
    else:
        spec, steps, seeds, l0 = PresetSpec("synthbench16k", "synthbench16k", (25.0,), sae=(("d_sae", 4096),)), 500, 2, 25.0
    suite = Suite("device_check", (spec,), seeds=seeds, steps=steps, max_probes=2, l0_tolerance=0.2, wide_seeds=1)
    rows = []
    for variant in ("matryoshka", "batchtopk", "jumprelu", "relu"):
        t0 = time.perf_counter()
        try:
            cfg, folder, cal = train_cell(suite, spec, variant, l0, Path(work) / "bench", progress=False)
            summ = load_train_summary(folder)
            _, sae, truth = load_run(folder)
            t1 = time.perf_counter()
            dec = sae.W_dec.detach().float().cpu()
            mcc = [matched_mcc(dec[s], truth.atoms.float().cpu()) for s in range(dec.shape[0])]
            g = torch.Generator().manual_seed(0)
            chance = matched_mcc(torch.randn(dec[0].shape, generator=g), truth.atoms.float().cpu())
            probes = len(cal["probes"]) if cal else 0
            rows.append({
                "variant": variant, "seeds": seeds, "steps": steps, "batch": cfg.train.batch_size,
                "samples_per_seed": steps * cfg.train.batch_size, "calibration_probes": probes,
                "l0": sum(summ["eval"]["l0"]) / seeds, "ev": 1 - sum(summ["eval"]["fvu"]) / seeds,
                "mcc": sum(mcc) / len(mcc), "mcc_per_seed": mcc, "mcc_random_dictionary": chance,
                "published_mcc_200M": PUBLISHED_MCC[variant], "train_seconds": summ["seconds"],
                "mcc_seconds": time.perf_counter() - t1, "seconds": time.perf_counter() - t0,
            })
        except Exception as e:
            rows.append({"variant": variant, "error": f"{type(e).__name__}: {e}"[:400], "seconds": time.perf_counter() - t0})
        print(f"  cell {variant}: {rows[-1].get('mcc', rows[-1].get('error'))} ({rows[-1]['seconds']:.0f} s)", flush=True)
        save({"cells": rows})
    return {"cells": rows}


def part_c(ctx: "Ctx", res: PartResult, limit: float) -> None:
    t0 = time.perf_counter()
    run_dir = ctx.work / "paper"
    if ctx.dry:
        args = ["--preset", "tiny", "--steps", "150", "--seeds", "2", "--device", "cpu"]
    else:
        args = ["--preset", "paper", "--steps", "400", "--device", "cuda", "--dtype", "bfloat16"]
    rc, out, stages = run_logged([sys.executable, "-m", "synthsae", "run", *args, "--out", run_dir, "--force", "--quiet"],
                                 limit * 0.5, ctx.log)
    end = time.perf_counter() - t0
    run = {"args": " ".join(args), "returncode": rc, "seconds": round(end, 1), "stages": stage_times(stages, end)}
    summ = run_dir / "train.json"
    if summ.is_file():
        s = json.loads(summ.read_text())
        run.update(train_steps=s.get("steps"), train_seconds=s.get("seconds"),
                   ev=[round(1 - f, 4) for f in s.get("eval", {}).get("fvu", [])])
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        stab = m.get("analysis", {}).get("stability", {}).get("mean", {})
        run.update(stability=stab.get("value"), stability_null=stab.get("baseline"))
    res.numbers["paper_run"] = run
    res.output_tail = tail(out, 1500)
    numbers, out2, _, rc2 = ctx.child("c_bench", max(5.0, limit - (time.perf_counter() - t0)))
    res.numbers["bench_cells"] = (numbers or {}).get("cells")
    res.output_tail += "\n--- bench cells ---\n" + tail(out2, 1500)
    res.seconds = time.perf_counter() - t0
    cells_ok = bool(numbers) and all("error" not in r for r in numbers["cells"])
    res.status = "timeout" if (rc is None or rc2 is None) else ("ok" if rc == 0 and rc2 == 0 and cells_ok else "failed")


# ----------------------------------------------------------------------------------------------- part d


def build_llama(folder: Path, dry: bool, seed: int = 0) -> dict:
    """A randomly initialised Llama of SmolLM2-135M's shape (dry: tiny) with a word-level tokenizer (BOS and EOS)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape = (dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2) if dry else
             dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(shape["vocab_size"] - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, rope_theta=100000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters()), **shape}


def write_corpus(path: Path, n_words: int, vocab: int, seed: int = 0) -> None:
    """Paragraphs of Zipf-distributed words (frequent words exist, as in text), blank lines between paragraphs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab - 3 + 1)
    p = 1.0 / ranks
    words = rng.choice(len(ranks), size=n_words, p=p / p.sum())
    with open(path, "w") as f:
        for start in range(0, n_words, 60):
            f.write(" ".join(f"w{w}" for w in words[start:start + 60]) + "\n\n")


def part_d(ctx: "Ctx", res: PartResult, limit: float) -> None:
    t0 = time.perf_counter()
    model, corpus = ctx.work / "llama", ctx.work / "corpus.txt"
    try:
        res.numbers["model"] = build_llama(model, ctx.dry)
        write_corpus(corpus, 8000 if ctx.dry else 700_000, res.numbers["model"]["vocab_size"])
    except Exception as e:
        res.status, res.notes = "failed", [f"building the model: {type(e).__name__}: {e}"[:400]]
        return
    res.numbers["build_seconds"] = round(time.perf_counter() - t0, 1)
    if ctx.dry:
        args = ["--preset", "quick", "--layer", "1", "--tokens", "3000", "--seeds", "2", "--d-sae", "64", "--k", "4",
                "--passes", "2", "--device", "cpu"]
    else:
        args = ["--preset", "gpu", "--layer", "15", "--tokens", "400000", "--seeds", "4", "--d-sae", "4608", "--k", "32",
                "--passes", "4", "--device", "cuda"]
    t1 = time.perf_counter()
    rc, out, stages = run_logged([sys.executable, "-m", "synthsae", "real", "run", "--model", model, "--corpus", corpus,
                                  *args, "--out", ctx.work / "real"], limit - (t1 - t0), ctx.log)
    end = time.perf_counter() - t1
    res.numbers.update(args=" ".join(args), returncode=rc, run_seconds=round(end, 1), stages=stage_times(stages, end))
    metrics = ctx.work / "real" / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        res.numbers["metrics_keys"] = sorted(m)
        res.numbers["splice_forward"] = m.get("splice", {}).get("forward")
    res.seconds, res.output_tail = time.perf_counter() - t0, tail(out)
    res.status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")


# ----------------------------------------------------------------------------------------------- part e


def part_e(ctx: "Ctx", res: PartResult, limit: float) -> None:
    t0 = time.perf_counter()
    rc1, out1, _ = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/test_distributed.py::test_two_process_run_equals_one_process"], limit * 0.6, ctx.log)
    res.numbers["gloo_2_ranks_test"] = {"returncode": rc1, "seconds": round(time.perf_counter() - t0, 1)}
    t1 = time.perf_counter()
    device = "cpu" if ctx.dry else "cuda"
    rc2, out2, _ = run_logged([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                               "-m", "synthsae", "train", "--preset", "tiny", "--steps", "50" if ctx.dry else "300", "--device", device,
                               "--out", ctx.work / "torchrun1", "--force", "--quiet"],
                              limit - (t1 - t0), ctx.log)
    backend = "nccl" if device == "cuda" else "gloo"
    res.numbers[f"{backend}_1_rank_train"] = {"returncode": rc2, "seconds": round(time.perf_counter() - t1, 1),
                                             "seed_folders": len(list((ctx.work / "torchrun1" / "seeds").glob("seed_*")))
                                             if (ctx.work / "torchrun1" / "seeds").is_dir() else 0}
    res.seconds = time.perf_counter() - t0
    res.output_tail = tail(out1, 1200) + "\n---\n" + tail(out2, 1200)
    res.status = "timeout" if None in (rc1, rc2) else ("ok" if rc1 == 0 and rc2 == 0 else "failed")


# ----------------------------------------------------------------------------------------------- driver


@dataclass
class Ctx:
    out: Path
    work: Path
    dry: bool
    cuda: bool
    logfile: Path

    def log(self, line: str) -> None:
        with open(self.logfile, "a") as f:
            f.write(line + "\n")

    def child(self, name: str, limit: float) -> tuple[dict | None, str, float, int | None]:
        """Run child_<name> of this script in its own process; (its JSON, its output, seconds, rc or None)."""
        result = self.work / f"child_{name}.json"
        result.unlink(missing_ok=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, str(self.out), "--child", name, "--work", str(self.work)]
        rc, out, _ = run_logged(cmd + (["--dry-run"] if self.dry else []), limit, self.log)
        numbers = json.loads(result.read_text()) if result.is_file() else None
        return numbers, out, time.perf_counter() - t0, rc


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "host_cpus": os.cpu_count(),
           "cuda": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
    for mod in ("triton", "transformers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:
            env[mod] = f"absent ({type(e).__name__})"
    return env


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_md(env: dict, results: list[PartResult], dry: bool) -> str:
    """device_check.md: the environment, one line per part, then each part's numbers as tables."""
    L = [f"## Device check {'(dry run, CPU, toy sizes)' if dry else ''} — {env['date']}", "",
         "Machine: " + (f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB), CUDA {env.get('cuda_version')}, "
                        if env.get("cuda") else "no CUDA, ") +
         f"{env['host_cpus']} CPUs, python {env['python']}, torch {env['torch']}, triton {env['triton']}, "
         f"transformers {env['transformers']}. Command: `PYTHONPATH=. python3 benchmarks/device_check.py OUT"
         f"{' --dry-run' if dry else ''}`.", "", "| part | what | status | seconds |", "|---|---|---|---|"]
    for r in results:
        L.append(f"| {r.part} | {r.title} | {r.status} | {r.seconds:.0f} |")
    for r in results:
        n = r.numbers
        L += ["", f"### {r.part}. {r.title}: {r.status}", ""]
        L += [f"- {x}" for x in r.notes]
        if r.part == "a" and n:
            L.append(f"pytest counts: {n.get('counts')}")
        prof = n.get("profile") if r.part == "b" else None
        if prof:
            for smp in prof.get("sampling", []):
                L += [f"Sampling `{smp['preset']}`: {smp['batch_ms']:.1f} ms per batch of {smp['batch']} "
                      f"({smp['samples_per_s']:,.0f} samples/s; truth built in {smp['build_s']:.1f} s). Top ops: "
                      + ", ".join(f"{o['op']} {o['self_ms']:.1f} ms x{o['calls']}" for o in smp["top_ops"][:6]), ""]
            st = prof.get("step") or {}
            if st:
                L += [f"Paper-shaped step (d {st['d']}, m {st['m']}, k {st['k']}, S {st['S']}, batch {st['batch']}, "
                      f"{st['dtype']}): {st['step_ms']:.1f} ms (SAE built in {st['build_s']:.1f} s). Top ops: "
                      + ", ".join(f"{o['op']} {o['self_ms']:.1f} ms x{o['calls']}" for o in st["top_ops"][:8]), ""]
        if r.part == "b" and n.get("rows"):
            L += ["Ceilings (TFLOP/s of the encoder-shaped [B, d] x [d, m] matmul):", "",
                  "| d | m | bf16 | tf32 | fp32 |", "|---|---|---|---|---|"]
            L += [f"| {c['d']} | {c['m']} | {c['bfloat16_tflops']:.1f} | {c['tf32_tflops']:.1f} | {c['float32_tflops']:.1f} |"
                  for c in n["ceilings"]]
            L += ["", f"Training steps (train dtype {n['train_dtype']}, batch {n['batch']}; fraction of the encoder-forward "
                  "bound per seed at the ceiling of that dtype; batched over sequential = S one-seed steps / one S-seed step):",
                  "", "| variant | d | m | k | S | step ms | tokens x seeds / s | of bound | batched / sequential | peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
            for w in n["rows"]:
                bos = f"{w['batched_over_sequential']:.2f}" if w["batched_over_sequential"] else "-"
                peak = f"{w['peak_gib']:.1f}" if w["peak_gib"] is not None else "-"
                L.append(f"| {w['variant']} | {w['d']} | {w['m']} | {w['k']} | {w['S']} | {w['step_ms']:.1f} | "
                         f"{w['tokens_x_seeds_per_s']:,.0f} | {w['fraction_of_encoder_bound']:.0%} | {bos} | {peak} |")
            if n.get("kernels"):
                f = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
                L += ["", "Kernels (float32; reference = the ATen path, triton = synthsae.sae.kernels; forward + backward "
                      "for the decoder):", "", "| d | m | k | S | decoder ref ms | decoder triton ms | speed-up | max abs diff "
                      "| top-k ref ms | top-k triton ms | speed-up | top-k equal |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
                for kr in n["kernels"]:
                    dc, tk = kr.get("decoder", {}), kr.get("topk", {})
                    diff = max((v for key, v in dc.items() if key.startswith("max_abs_diff")), default=None)
                    L.append(f"| {kr['d']} | {kr['m']} | {kr['k']} | {kr['S']} | {f(dc.get('reference_ms'))} | "
                             f"{f(dc.get('triton_ms'))} | {f(dc.get('speedup'))} | {diff if diff is not None else '-'} | "
                             f"{f(tk.get('reference_ms'))} | {f(tk.get('triton_ms'))} | {f(tk.get('speedup'))} | "
                             f"{tk.get('values_equal', '-')} |")
                    for name, r_ in (("decoder", dc), ("top-k", tk)):
                        if r_.get("error") or r_.get("triton_skipped"):
                            L.append(f"  - {name}: {r_.get('error') or 'triton skipped: ' + str(r_.get('triton_skipped'))}")
            elif n.get("kernels_note"):
                L += ["", f"Kernels: {n['kernels_note']}"]
        if r.part == "c":
            pr = n.get("paper_run") or {}
            if pr:
                L += [f"`synthsae run {pr['args']}`: rc {pr['returncode']}, {pr['seconds']} s; train "
                      f"{pr.get('train_steps')} steps in {pr.get('train_seconds')} s; stability {pr.get('stability')} "
                      f"(null {pr.get('stability_null')})", ""]
                L += [f"- {s['stage']}: {s['seconds']} s" for s in pr.get("stages", [])]
            cells = n.get("bench_cells") or []
            if cells:
                L += ["", "| variant | samples / seed | probes | L0 | EV | MCC (ours) | random dict. | SynthSAEBench 200M |",
                      "|---|---|---|---|---|---|---|---|"]
                for c in cells:
                    if "error" in c:
                        L.append(f"| {c['variant']} | error: {c['error'][:150]} | | | | | | |")
                    else:
                        L.append(f"| {c['variant']} | {c['samples_per_seed']:,} | {c['calibration_probes']} | {c['l0']:.1f} | "
                                 f"{c['ev']:.3f} | {c['mcc']:.3f} | {c['mcc_random_dictionary']:.3f} | {c['published_mcc_200M']} |")
        if r.part == "d" and n.get("args"):
            L += [f"`synthsae real run {n['args']}` on a random Llama ({n['model'].get('params', 0) / 1e6:.0f}M params): "
                  f"rc {n['returncode']}, {n['run_seconds']} s, splice forward {n.get('splice_forward')}", ""]
            L += [f"- {s['stage']}: {s['seconds']} s" for s in n.get("stages", [])]
        if r.part == "e" and n:
            L += [f"- {k}: {v}" for k, v in n.items()]
        if r.status != "ok" and r.output_tail:
            L += ["", "```", r.output_tail[-1500:], "```"]
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for device_check.json / .md / .log")
    ap.add_argument("--dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole check (default 450; dry run 1500: only a hang should stop it)")
    ap.add_argument("--parts", default=",".join(PARTS), help="which parts (default a,b,c,d,e)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder, new or empty (default: a new temporary "
                    "folder, removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (run folders, the model)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 1500.0 if args.dry_run else 450.0
    if args.child:  # one part's measurement in its own process: write its JSON for the parent
        import torch

        device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
        path = args.work / f"child_{args.child}.json"
        save = lambda numbers: write_atomic(path, json.dumps(numbers, indent=1))  # noqa: E731  (kept if killed)
        if args.child == "b":
            numbers = child_b(args.dry_run, device, save)
        elif args.child == "c_bench":
            numbers = child_c_bench(args.dry_run, str(args.work), save)
        else:
            raise SystemExit(f"--child: {args.child!r} is not a part")
        save(numbers)
        return 0
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"error: --parts: {', '.join(bad)} not known; allowed: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: OUT = {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        print(f"error: --work = {args.work} is not empty; give a new or empty folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="device_check_"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    if not args.dry_run and not env["cuda"]:
        print("error: no CUDA device here; use --dry-run for the CPU version", file=sys.stderr)
        return 2
    ctx = Ctx(args.out, work, args.dry_run, env["cuda"] and not args.dry_run, args.out / "device_check.log")
    ctx.logfile.write_text(json.dumps(env) + "\n")
    scale = 1.0 if not args.dry_run else args.budget / sum(SHARE.values())
    t_start = time.perf_counter()
    results = {p: PartResult(p, TITLES[p]) for p in parts}
    fns = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}

    def save() -> None:
        done = [results[p] for p in PARTS if p in results]
        write_atomic(args.out / "device_check.json",
                     json.dumps({"environment": env, "dry_run": args.dry_run, "parts": [asdict(r) for r in done]}, indent=1))
        write_atomic(args.out / "device_check.md", render_md(env, done, args.dry_run))

    for p in [q for q in ORDER if q in parts]:
        left = args.budget - (time.perf_counter() - t_start)
        later = sum(SHARE[q] * scale for q in ORDER[ORDER.index(p) + 1:] if q in parts)
        limit = min(SHARE[p] * scale, left - 0.5 * later) if p != "c" else left
        if limit < 10:
            results[p].notes.append(f"not run: {left:.0f} s of the budget left")
            save()
            continue
        print(f"[{p}] {TITLES[p]} (limit {limit:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            fns[p](ctx, results[p], limit)
        except Exception as e:  # one broken part must not hide the others
            results[p].status, results[p].notes = "failed", results[p].notes + [f"{type(e).__name__}: {e}"[:400]]
        results[p].seconds = results[p].seconds or time.perf_counter() - t0
        print(f"[{p}] {results[p].status} in {results[p].seconds:.0f} s", flush=True)
        save()
    save()
    if args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'device_check.md'} and device_check.json ({time.perf_counter() - t_start:.0f} s)")
    return 0 if all(r.status == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

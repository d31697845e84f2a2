"""A tiny randomly initialised Llama-config causal LM with a word-level tokenizer, built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

TEXT = ("the cat sat on the mat . a dog ran in the park . the bird sang a song . we read the book by the fire . "
        "she wrote code in python and it ran . he paints red and blue boats by the sea . numbers one two three four . ")


def corpus_file(folder: Path, repeats: int = 400) -> Path:
    """A .txt corpus: shuffled variations of TEXT in paragraphs."""
    import random

    words = TEXT.split()
    rng = random.Random(0)
    paras = []
    for _ in range(repeats):
        rng.shuffle(words)
        paras.append(" ".join(words[:40]))
    p = folder / "corpus.txt"
    p.write_text("\n\n".join(paras))
    return p


def build_tiny_llama(folder: Path, layers: int = 3, d: int = 32, seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM (random weights, seed-fixed) and its tokenizer into `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for w in sorted(set(TEXT.split())):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _word_tokenizer(bos: bool):
    """A word-level tokenizer over TEXT's words (with <bos> when asked), built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    if bos:
        vocab["<bos>"] = 3
    for w in sorted(set(TEXT.split())):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {"bos_token": "<bos>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>", **kw), vocab


def build_tiny(kind: str, folder: Path, layers: int = 4, d: int = 32, seed: int = 0) -> Path:
    """Save a tiny random causal LM of another layout with a BOS-defining tokenizer: "gemma3" (sliding-window and
    full-attention blocks, a window shorter than the test's contexts, embedding scaling, final logit soft-capping),
    "gemma2" (the same family one generation back) or "qwen2" (attention biases)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    tok, vocab = _word_tokenizer(bos=True)
    ids = dict(vocab_size=len(vocab), pad_token_id=0, eos_token_id=1, bos_token_id=3)
    torch.manual_seed(seed)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=5,
                               layer_types=["sliding_attention", "full_attention"] * (layers // 2),
                               final_logit_softcapping=2.0, max_position_embeddings=256, **ids)
        model = Gemma3ForCausalLM(cfg)
    elif kind == "gemma2":
        cfg = Gemma2Config(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=5,
                           final_logit_softcapping=2.0, attn_logit_softcapping=5.0, max_position_embeddings=256, **ids)
        model = Gemma2ForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **ids)
        model = Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    with torch.no_grad():  # logits of order 1 (soft-capping acts on them); Qwen2's attention biases not zero
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.mul_(20.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder

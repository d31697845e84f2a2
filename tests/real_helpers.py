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

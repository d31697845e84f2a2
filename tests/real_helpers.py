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


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained on TEXT here (ids: <pad> 0, <eos> 1, <unk> 2, <bos> 3), the kind Qwen2's and
    Gemma's tokenizer classes rebuild faithfully when transformers loads the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<unk>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([TEXT] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                                  bos_token="<bos>")
    return tok, tk.get_vocab()


def build_tiny(kind: str, folder: Path, layers: int = 4, d: int = 32, seed: int = 0) -> Path:
    """Save a tiny random causal LM of another layout with a BOS-defining tokenizer: "gemma3" (sliding-window and
    full-attention blocks, a window shorter than the test's contexts, embedding scaling, final logit soft-capping),
    "gemma2" (the same family one generation back) or "qwen2" (attention biases)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    tok, vocab = _bpe_tokenizer()
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


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (a byte-level BPE vocabulary spells bytes this way)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_qwen2_gguf(path: Path, d: int = 32, layers: int = 3, seed: int = 0):
    """Write a tiny random Qwen2 as a GGUF file (fp32 tensors, a byte-level vocabulary with a BOS token, no merges)
    with the gguf package; return the transformers model it was written from."""
    import gguf
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    b2c = _byte_chars()
    tokens = ["<|endoftext|>", "<|bos|>"] + [b2c[b] for b in range(256)]
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokens), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=0)
    model = Qwen2ForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(2 * d)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([3, 3] + [1] * 256)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    per = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, v in model.state_dict().items():
        arr = v.detach().float().numpy()
        if k in top:
            w.add_tensor(top[k], arr)
        else:
            parts = k.split(".")  # model.layers.<i>.<module path>.<weight|bias>
            w.add_tensor(f"blk.{parts[2]}.{per['.'.join(parts[3:-1])]}.{parts[-1]}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model

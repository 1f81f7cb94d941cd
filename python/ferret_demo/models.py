"""Models of the demo: all-MiniLM-L6-v2 with a classification head (default), a tiny BERT
from a config with a hashing tokenizer (for tests), and Gemma 3 270M as a causal LM."""

from __future__ import annotations

import os
import re
import zlib

import torch

from . import assets


class Classifier(torch.nn.Module):
    """Encoder + mean pooling + a fresh linear head. Every parameter is trained."""

    def __init__(self, encoder, hidden: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, ids, mask):
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))


class HashTokenizer:
    """A tiny word-hashing tokenizer with the transformers calling convention (tests only)."""

    def __init__(self, vocab_size: int = 2048):
        self.vocab_size = vocab_size

    def __call__(self, texts, padding=None, truncation=True, max_length=32, return_tensors="pt"):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            words = [1] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in re.findall(r"\w+", t.lower())]
            words = words[:max_length]
            ids[i, : len(words)] = torch.tensor(words)
            mask[i, : len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def minilm_classifier(num_classes: int, dtype=torch.float32):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    d = assets.minilm_dir()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler would be reported as unexpected keys
    hf_logging.disable_progress_bar()
    enc = AutoModel.from_pretrained(d, dtype=dtype, add_pooling_layer=False)  # the pooler is unused
    tok = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(0)
    return Classifier(enc, enc.config.hidden_size, num_classes).to(dtype), tok


def tiny_classifier(num_classes: int, dtype=torch.float32):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Classifier(BertModel(cfg), 64, num_classes).to(dtype), HashTokenizer(2048)


def gemma_lm(cache_dir: str, dtype=torch.float32):
    """Gemma 3 270M from the packaged Q4_K_M GGUF, de-quantized on load (a few seconds; the
    assembled GGUF file is kept in cache_dir)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.gemma_gguf(cache_dir)
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    except (ImportError, ValueError) as e:  # transformers raises ValueError when accelerate is missing
        if isinstance(e, ValueError) and "pip install" not in str(e):
            raise
        raise assets.MissingAsset(f"loading the Gemma GGUF needs: pip install gguf accelerate ({e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # causal LM training: tokens first, padding after
    return model.to(dtype), tok

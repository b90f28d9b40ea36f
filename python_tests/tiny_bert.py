"""A randomly initialised tiny BERT saved as a Hugging Face model folder, with a tokenizer built offline."""

from __future__ import annotations

import os

WORDS = (
    "the a of to and is in it that for on with as are this be by an or from at not can returns return value "
    "object file list string number name function class module data type new default set get read write "
    "python code test error path time line text call first last each all one two if when which"
).split()

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-sentences over the tiny vocabulary (deterministic)."""
    import random

    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make_tiny_bert(folder: str, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Write a ``BertModel`` (hidden 32, 2 layers, 2 heads, FFN 64) and its ``BertTokenizerFast`` to ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as handle:
        handle.write("\n".join(SPECIAL + WORDS + [".", ","]) + "\n")
    config = BertConfig(
        vocab_size=len(SPECIAL) + len(WORDS) + 2,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab_file=vocab, do_lower_case=True).save_pretrained(folder)
    return folder

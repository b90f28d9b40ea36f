"""Hugging Face encoders, offline: load a model folder, tokenize sentence files, sentence embeddings.

Used by the CLI (``quantnoise-kernels compress|evaluate``) and the MiniLM demo. Loading goes through
``transformers`` with ``local_files_only=True`` (nothing is downloaded). Sentence embeddings are computed
as sentence-transformers does for ``all-MiniLM-L6-v2``: the mean of the last hidden states over the
attention mask, then L2-normalised.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "load_encoder",
    "read_sentences",
    "tokenize",
    "sentence_embedding",
    "with_hidden_states",
    "block_outputs",
    "layerwise_mse",
    "embed_sentences",
    "cosine_report",
    "recall_at_k",
]


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as error:
        raise ImportError("the CLI needs transformers: pip install transformers") from error
    transformers.logging.set_verbosity_error()
    return transformers


def load_encoder(model_dir: str | os.PathLike, *, progress: bool = True) -> tuple[nn.Module, Any]:
    """Load ``model_dir`` (a Hugging Face model folder) as ``AutoModel`` + ``AutoTokenizer``, offline, in eval mode.

    ``progress=False`` turns off transformers' progress bars.

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder or has no ``config.json``.
        ValueError: transformers cannot load it (the message says why, on one line).
    """
    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist or is not a folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model folder {path!r} has no config.json (not a Hugging Face model folder)")
    transformers = _transformers()
    if progress:
        transformers.utils.logging.enable_progress_bar()
    else:
        transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"transformers cannot load {path!r}: {error}") from error
    return model.eval(), tokenizer


def read_sentences(path: str | os.PathLike, *, what: str = "sentence file") -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file.

    Raises:
        FileNotFoundError: no such file. ValueError: the file holds no sentence.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        sentences = [line.strip() for line in handle if line.strip()]
    if not sentences:
        raise ValueError(f"{what} {path!r} holds no sentence (one per line)")
    return sentences


def tokenize(tokenizer: Any, sentences: list[str], *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Batches of ``{input_ids, attention_mask[, token_type_ids]}`` (padded per batch, truncated to ``max_length``)."""
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"tokenize: batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batches.append(dict(encoded))
    return batches


def sentence_embedding(outputs: Any, batch: dict) -> Tensor:
    """Mean of ``last_hidden_state`` over ``attention_mask``, L2-normalised: ``[B, hidden]`` float32."""
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled.float(), dim=-1)


def with_hidden_states(batches: list[dict]) -> list[dict]:
    """The same batches asking the model for every layer's hidden states (``output_hidden_states=True``)."""
    return [dict(batch, output_hidden_states=True) for batch in batches]


def block_outputs(outputs: Any, batch: dict) -> Tensor:
    """Every transformer block's output at the real (unpadded) tokens: ``[layers, tokens, hidden]``.

    The richer distillation target of the MiniLM demo (TinyBERT's hidden-state loss, Jiao et al. 2020):
    one vector per token and per block instead of one per sentence. The model must have been called with
    ``output_hidden_states=True`` (:func:`with_hidden_states`); the embedding layer's output is left out.

    Raises:
        ValueError: the outputs carry no ``hidden_states``.
    """
    states = getattr(outputs, "hidden_states", None)
    if states is None:
        raise ValueError("block_outputs: the model output has no hidden_states; call it with output_hidden_states=True")
    mask = batch["attention_mask"].bool()
    return torch.stack([state[mask] for state in states[1:]]).float()


def layerwise_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Sum over layers of each layer's MSE relative to the teacher's mean square (:func:`block_outputs`' pairs).

    Normalising per layer keeps every block's output weighted alike, whatever the scale of its hidden states.
    """
    dims = tuple(range(1, teacher.dim()))
    return ((student - teacher).square().mean(dim=dims) / teacher.square().mean(dim=dims).clamp(min=1e-12)).sum()


@torch.no_grad()
def embed_sentences(model: nn.Module, batches: list[dict]) -> Tensor:
    """Sentence embeddings ``[N, hidden]`` of every batch (eval mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([sentence_embedding(model(**batch), batch) for batch in batches])
    finally:
        model.train(was_training)


def cosine_report(reference: Tensor, other: Tensor) -> dict[str, float]:
    """Row-wise cosine similarity of two ``[N, D]`` embedding sets: mean, 5th percentile, min."""
    cos = F.cosine_similarity(reference.float(), other.float(), dim=-1)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_p5": float(torch.quantile(cos, 0.05)),
        "cosine_min": float(cos.min()),
    }


def recall_at_k(reference: Tensor, other: Tensor, k: int = 10) -> float:
    """Mean overlap of each item's ``k`` nearest neighbours (cosine, itself excluded) under both embeddings.

    Every row is a query against all rows (a retrieval over the set); 1.0 means ``other`` retrieves exactly
    the original's top ``k`` for every query.
    """
    n = reference.shape[0]
    if n <= k:
        raise ValueError(f"recall_at_k: needs more than k={k} items, got {n}")

    def top(e: Tensor) -> Tensor:
        e = F.normalize(e.float(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    ref, got = top(reference), top(other)
    hits = (ref.unsqueeze(2) == got.unsqueeze(1)).any(2).sum(1).float()
    return float((hits / k).mean())

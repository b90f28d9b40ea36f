"""A small byte-level Transformer language model, its data and its training loop (for the paper table).

Layer names follow fairseq's transformer (``layers.N.self_attn.{q,k,v,out}_proj``, ``layers.N.fc1/fc2``) so
fairseq-style iPQ configurations apply unchanged. Every projection is a plain ``nn.Linear`` (no
``nn.MultiheadAttention``, whose fused ``in_proj_weight`` no quantizer can take layer by layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LMConfig", "ByteLM", "Corpus", "train_lm", "perplexity"]

VOCAB = 128  # ASCII


@dataclass(frozen=True)
class LMConfig:
    """Model and training sizes."""

    dim: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 512
    context: int = 128
    batch: int = 32
    steps: int = 600
    lr: float = 2e-3
    seed: int = 0


class Block(nn.Module):
    """Pre-norm Transformer block: causal self-attention (q/k/v/out projections) and a GELU FFN."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(dim, dim))
        self.attn_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.attn_norm(x)
        a = self.self_attn

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(a.q_proj(h)), split(a.k_proj(h)), split(a.v_proj(h)), is_causal=True)
        x = x + a.out_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class ByteLM(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a final LayerNorm and an untied output projection."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, config.dim)
        self.embed_positions = nn.Embedding(config.context, config.dim)
        self.layers = nn.ModuleList(Block(config.dim, config.heads, config.ffn) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.output_projection = nn.Linear(config.dim, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        for layer in self.layers:
            x = layer(x)
        return self.output_projection(self.norm(x))


class Corpus:
    """ASCII text as byte tensors: every 10th 4 KiB chunk is validation, the rest training (deterministic)."""

    def __init__(self, text: str, chunk: int = 4096) -> None:
        data = torch.tensor(list(text.encode("ascii", "ignore")), dtype=torch.long).clamp_(max=VOCAB - 1)
        chunks = list(data.split(chunk))
        self.train = torch.cat([c for i, c in enumerate(chunks) if i % 10 != 9])
        self.valid = torch.cat([c for i, c in enumerate(chunks) if i % 10 == 9] or [chunks[-1]])

    def batch(self, generator: torch.Generator, batch: int, context: int) -> Tensor:
        """``[batch, context + 1]`` random windows of the training text."""
        starts = torch.randint(0, self.train.numel() - context - 1, (batch,), generator=generator)
        return torch.stack([self.train[s : s + context + 1] for s in starts.tolist()])

    def valid_windows(self, context: int, max_tokens: int) -> Tensor:
        """Consecutive non-overlapping ``[n, context + 1]`` windows of the validation text."""
        data = self.valid[: max_tokens + 1]
        n = (data.numel() - 1) // context
        return torch.stack([data[i * context : i * context + context + 1] for i in range(n)])


def lm_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean next-byte cross-entropy (nats) of ``windows [n, context + 1]``."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch: int = 64) -> float:
    """Per-byte validation perplexity ``exp(mean cross-entropy)`` (eval mode; mode restored)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch):
        chunk = windows[start : start + batch]
        total += float(lm_loss(model, chunk)) * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


def train_lm(
    model: nn.Module,
    corpus: Corpus,
    config: LMConfig,
    *,
    on_step: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; the batch order depends on ``config.seed`` only.

    ``on_step(step, model)`` runs before each step (e.g. refreshing a QAT codebook). Returns the losses.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warmup = max(1, config.steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if on_step is not None:
            on_step(step, model)
        loss = lm_loss(model, corpus.batch(generator, config.batch, config.context))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses

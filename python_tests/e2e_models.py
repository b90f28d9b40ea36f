"""Two real architectures built in code (random weights, no download) for the end-to-end flow tests, and the
independent checks those tests make: the decoded dense model, and the bytes a model really holds.

- :class:`TransformerLM`: a fairseq-style decoder-only language model with fairseq's module names
  (``decoder.embed_tokens.embeddings.<band>.<0|1>`` adaptive-input bands,
  ``decoder.layers.N.self_attn.{q,k,v,out}_proj``, ``decoder.layers.N.fc1/fc2``), so fairseq's example YAML
  selects its layers. Attention calls its four projections as modules (fairseq's MultiheadAttention hands their
  weights to ``F.multi_head_attention_forward``, which a ``quant_noise`` wrapper never sees).
- :class:`MobileNetV2`: a small first conv, inverted residual blocks (1x1 expand, depthwise 3x3, 1x1 project) and
  a classifier, in MobileNetV2's layout (``features.N``, ``classifier``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels.pq import PQLayer
from quantnoise_kernels.pq.pipeline import replace_module

# ------------------------------------------------------------------------------------------ Transformer LM


class AdaptiveInput(nn.Module):
    """fairseq's adaptive input: vocabulary bands, each an Embedding of its own width and a Linear projection."""

    def __init__(self, cutoffs: tuple[int, ...], dims: tuple[int, ...], d_model: int) -> None:
        super().__init__()
        self.cutoffs = (0, *cutoffs)
        self.embeddings = nn.ModuleList(
            nn.Sequential(nn.Embedding(hi - lo, dim), nn.Linear(dim, d_model, bias=False))
            for lo, hi, dim in zip(self.cutoffs[:-1], self.cutoffs[1:], dims)
        )
        self.d_model = d_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tokens.shape, self.d_model)
        for band, lo, hi in zip(self.embeddings, self.cutoffs[:-1], self.cutoffs[1:]):
            mask = (tokens >= lo) & (tokens < hi)
            out = out + band((tokens - lo).clamp(0, hi - lo - 1)) * mask.unsqueeze(-1)
        return out


class SelfAttention(nn.Module):
    """Causal multi-head attention whose projections run as modules (so their Quant-Noise applies)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, self.n_heads, d // self.n_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), is_causal=True
        )
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, d))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.relu(self.fc1(self.final_layer_norm(x))))


class Decoder(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_heads: int, ffn: int, n_layers: int) -> None:
        super().__init__()
        self.embed_tokens = AdaptiveInput((vocab // 2, vocab), (d_model, d_model // 4), d_model)
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, ffn) for _ in range(n_layers))
        self.layer_norm = nn.LayerNorm(d_model)
        self.output_projection = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output_projection(self.layer_norm(x))


class TransformerLM(nn.Module):
    """``decoder.*`` with fairseq's names. ``quant_noise=(p, block sizes)`` wraps the embeddings, their
    projections, the attention projections and the FFN as a fairseq model built with ``--quant-noise-pq`` does."""

    def __init__(self, vocab=512, d_model=128, n_heads=4, ffn=512, n_layers=2, quant_noise: float = 0.0) -> None:
        super().__init__()
        self.decoder = Decoder(vocab, d_model, n_heads, ffn, n_layers)
        if quant_noise:
            for band in self.decoder.embed_tokens.embeddings:
                qn.quant_noise(band[0], quant_noise, 8)  # fairseq's YAML block sizes: Embedding "emb" 8
                qn.quant_noise(band[1], quant_noise, 4)  # Linear "emb" 4
            for layer in self.decoder.layers:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    qn.quant_noise(getattr(layer.self_attn, proj), quant_noise, 4)  # "attn" 4
                qn.quant_noise(layer.fc1, quant_noise, 8)  # "fc" 8
                qn.quant_noise(layer.fc2, quant_noise, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens)


# ------------------------------------------------------------------------------------------ MobileNetV2


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        expansion = [conv_bn(cin, hidden, 1)] if expand != 1 else []  # 1x1 expand
        self.conv = nn.Sequential(
            *expansion,
            conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise 3x3
            conv_bn(hidden, cout, 1, act=False),  # 1x1 project
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's first layers at full width (first conv 3 -> 32: 96 blocks of 9; a depthwise 3x3 over 32
    channels: 32 blocks), three more inverted residual blocks, a 1x1 conv to 640 and a 100-class classifier."""

    def __init__(self, n_classes: int = 100, quant_noise: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32, 3, stride=2),
            InvertedResidual(32, 16, 1, 1),
            InvertedResidual(16, 24, 2, 6),
            InvertedResidual(24, 24, 1, 6),
            InvertedResidual(24, 32, 2, 6),
            conv_bn(32, 640, 1),
        )
        self.classifier = nn.Linear(640, n_classes)
        if quant_noise:
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    qn.quant_noise(module, quant_noise, 9 if module.kernel_size == (3, 3) else 4)
            qn.quant_noise(self.classifier, quant_noise, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# ------------------------------------------------------------------------------------------ checks


def decoded_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every PQ layer replaced by its dense decoding (``to_dense``)."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, PQLayer):
            replace_module(dense, name, module.to_dense())
    return dense


def true_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor storage the model holds (parameters and buffers, tied ones once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def fairseq_ratio(dense_params: int, model: nn.Module) -> float:
    """fairseq's compression ratio recomputed from the PQ layers the model holds: 4 bytes per dense parameter
    before; after, log2(K)/bs bits per quantized weight, K*bs*2 bytes of centroids, 4 bytes per other parameter."""
    quantized = index_bits = centroid_bytes = 0
    seen = set()
    for module in model.modules():
        if isinstance(module, PQLayer) and id(module.centroids) not in seen:
            seen.add(id(module.centroids))
            numel = math.prod(module.weight_shape)
            quantized += numel
            index_bits += math.log2(module.n_centroids) / module.block_size * numel
            centroid_bytes += module.n_centroids * module.block_size * 2
    after = index_bits / 8 + centroid_bytes + (dense_params - quantized) * 4
    return dense_params * 4 / after

"""The scalar flow as a user runs it (issue 8): a fairseq-style Transformer LM trained with ``fake_quant``
Quant-Noise, ``scalar.quantize_model_``, finetuned, exported to real int8 weights, saved, loaded and run."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from e2e_models import TransformerLM
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels import scalar as sq


def _lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def _train(model: nn.Module, batches: list[torch.Tensor], steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = _lm_loss(model, batches[step % len(batches)])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_transformer_lm_fake_quant_noise_quantize_finetune_export_save_load():
    torch.manual_seed(0)
    model = TransformerLM(vocab=128, d_model=64, n_heads=4, ffn=128, n_layers=2)
    noised = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    for m in noised:  # fairseq's scalar Quant-Noise: per-weight blocks, int8 grid
        qn.quant_noise(m, 0.2, 1, noise="fake_quant", bits=8, method="channel", update_step=5)
    # a learnable LM task: each sequence counts up from a random start
    starts = torch.randint(0, 128, (2, 8, 1))
    batches = [(s + torch.arange(17)) % 128 for s in starts]
    first = _lm_loss(model.eval(), batches[0]).item()
    losses = _train(model, batches, 20)
    assert losses[-1] < 0.5 * first, (first, losses[-1])

    sq.quantize_model_(model, p=0.2, bits=8, update_step=5, method="channel")  # takes over the wrapped layers
    assert not any(qn.noise.is_noise_wrapped(m) for m in model.modules())
    assert sum(isinstance(m, sq.IntModule) for m in model.modules()) == len(noised)
    _train(model, batches, 5)
    model.eval()
    fake_quant_loss = _lm_loss(model, batches[0]).item()
    assert fake_quant_loss < 0.5 * first
    with torch.no_grad():
        y_eval = model(batches[0][:, :-1])

    exported = sq.to_int8(model)
    int8_layers = [m for m in exported.modules() if isinstance(m, (sq.Int8Linear, sq.Int8Embedding))]
    assert len(int8_layers) == len(noised)
    with torch.no_grad():
        y = exported(batches[0][:, :-1])
    # int8 activations (7-bit on AVX2) on top of the fake-quant eval: a few percent of the logits
    assert float((y - y_eval).norm() / y_eval.norm()) < 0.1, "to_int8 computes what the fake-quant eval does"
    assert _lm_loss(exported, batches[0]).item() < 0.5 * first

    buf = io.BytesIO()
    torch.save(exported, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(batches[1][:, :-1]), exported(batches[1][:, :-1]))

"""The documented flow, end to end, on two real architectures built in code (issue 13): wrap with quant_noise,
train, quantize stage by stage with quantize_model_, finetune, save, load into a fresh instance, run.

Each test checks that the noise really applies during training (no warning, every wrapped module's forward
runs), that the quantized model computes what its decoded dense model computes, that the ratios SizeTracker
reports are the true ones (fairseq's formula recomputed from the PQ layers, and the bytes the tensors really
hold), and that the fresh instance restored from the file gives the same outputs bit for bit.
Budget: a few seconds each on an idle 2-core machine (K = 256, 15 k-means iterations, layers of 512-1024 blocks).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from e2e_models import MobileNetV2, TransformerLM, decoded_dense, fairseq_ratio, true_bytes
from torch import nn

from quantnoise_kernels import pq
from quantnoise_kernels._modules import is_noise_wrapped

FAIRSEQ_YAML = (Path(__file__).parent / "data" / "transformer_quantization_config.yaml").read_text()


def _train(model: nn.Module, batches, loss_fn, steps: int) -> None:
    """A few Adam steps; the optimizer is rebuilt, as after each quantization stage (new Parameters)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(model, batches[step % len(batches)]).backward()
        optimizer.step()


def _assert_noise_applies(model: nn.Module, batch, loss_fn) -> None:
    """Every wrapped module's forward runs in a training step, and no wrapped weight is read around its module."""
    wrapped = [m for m in model.modules() if is_noise_wrapped(m)]
    calls = {id(m): 0 for m in wrapped}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for m in wrapped]
    model.train()
    torch.manual_seed(1)
    first = loss_fn(model, batch)
    torch.manual_seed(2)
    assert not torch.equal(first, loss_fn(model, batch)), "two training forwards with different masks agree"
    first.backward()
    for h in hooks:
        h.remove()
    model.zero_grad()
    assert wrapped and all(count == 2 for count in calls.values())


def _run_stages(model, tracker, config, finetune) -> list[list[str]]:
    names = []
    for step in range(len(config["layers_to_quantize"])):
        names.append(
            pq.quantize_model_(
                model,
                tracker,
                config["layers_to_quantize"],
                config["block_sizes"],
                config["n_centroids"],
                step=step,
                verbose=False,
                seed=step,
            )
        )
        finetune()
    return names


def _check_quantized(model, dense_params: int, tracker, inputs, tmp_path, fresh: nn.Module) -> float:
    """Outputs, SizeTracker's ratios, the file round trip; returns dense file size / fp16 compressed file size."""
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        torch.testing.assert_close(out, decoded_dense(model)(inputs), rtol=1e-4, atol=1e-4)
    assert math.isclose(tracker.compression_ratio, fairseq_ratio(dense_params, model), rel_tol=1e-9)
    assert tracker.held_bytes().total == true_bytes(model)
    assert math.isclose(tracker.held_compression_ratio, tracker.original_held.total / true_bytes(model))
    path, dense_path = tmp_path / "model.qnk", tmp_path / "dense.pt"
    torch.save(decoded_dense(model).state_dict(), dense_path)
    pq.save_compressed(model, path)
    restored = pq.load_compressed(fresh, path)
    assert restored == [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, pq.PQLayer)]
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(inputs), out, rtol=0, atol=0)
    small_path = tmp_path / "model16.qnk"
    pq.save_compressed(model, small_path, centroid_dtype=torch.float16)
    return dense_path.stat().st_size / small_path.stat().st_size


def _lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def test_transformer_lm_noise_train_quantize_three_stages_finetune_save_load(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(quant_noise=0.1)
    batches = [torch.randint(0, 512, (4, 17)) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the warning of a wrapped weight read around its module
        _assert_noise_applies(model, batches[0], _lm_loss)
        _train(model, batches, _lm_loss, 3)
    dense_params = sum(p.numel() for p in model.parameters())
    config = pq.load_config_yaml(FAIRSEQ_YAML)
    tracker = pq.SizeTracker(model)
    names = _run_stages(model, tracker, config, lambda: _train(model, batches, _lm_loss, 2))
    assert names[0] == [f"decoder.layers.{i}.fc{j}" for i in (0, 1) for j in (1, 2)]
    assert names[1] == [f"decoder.embed_tokens.embeddings.{b}.{i}" for b in (0, 1) for i in (0, 1)]
    assert names[2] == [f"decoder.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "k", "v", "out")]
    assert tracker.n_quantized_layers == 16
    assert isinstance(model.decoder.output_projection, nn.Linear)  # not selected by the YAML
    assert not any(is_noise_wrapped(m) for m in model.modules())
    file_ratio = _check_quantized(model, dense_params, tracker, batches[0], tmp_path, TransformerLM(quant_noise=0.1))
    assert file_ratio > 4, file_ratio  # the output projection (a quarter of the weights) stays dense


def _cnn_loss(model: nn.Module, batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def test_mobilenet_v2_noise_train_quantize_uniform_k256_finetune_save_load(tmp_path):
    torch.manual_seed(0)
    model = MobileNetV2(quant_noise=0.1)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_noise_applies(model, batches[0], _cnn_loss)
        _train(model, batches, _cnn_loss, 3)
    dense_params = sum(p.numel() for p in model.parameters())
    config = {
        "n_centroids": {"Conv2d": ("kernel_size", {"*": 256}), "Linear": ("in_features", {"*": 256})},
        "block_sizes": {"Conv2d": ("kernel_size", {"(3, 3)": 9, "(1, 1)": 4}), "Linear": ("in_features", {"*": 4})},
        "layers_to_quantize": [r"features\.0\.0", r"features\.[1-9]\.(conv\.\d\.)?0", "classifier"],
    }
    tracker = pq.SizeTracker(model)
    with pytest.warns(UserWarning) as record:
        names = _run_stages(model, tracker, config, lambda: _train(model, batches, _cnn_loss, 2))
    small = sorted(str(w.message).split("'")[1] for w in record if "fewer than n_centroids" in str(w.message))
    # the first conv (32 * 27 / 9 = 96 blocks of 9), the depthwise convs (32, 96, 144 and 144 blocks of 9) and the
    # first 1x1 projection (16 * 32 / 4 = 128 blocks of 4) get K = their distinct blocks
    assert small == [
        "features.0.0",
        "features.1.conv.0.0",
        "features.1.conv.1.0",
        "features.2.conv.1.0",
        "features.3.conv.1.0",
        "features.4.conv.1.0",
    ]
    assert names[0] == ["features.0.0"] and names[2] == ["classifier"] and len(names[1]) == 12
    assert tracker.n_quantized_layers == 14
    assert model.features[0][0].n_centroids == 96 and model.features[1].conv[0][0].n_centroids == 32
    file_ratio = _check_quantized(model, dense_params, tracker, batches[0][0], tmp_path, MobileNetV2(quant_noise=0.1))
    assert file_ratio > 4, file_ratio

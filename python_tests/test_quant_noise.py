"""quant_noise(module, p, block_size): noise on the weight as used, never on the stored weight."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from dist_worker import finish_worker
from torch import nn

import quantnoise_kernels as qn
from quantnoise_kernels import ops, reference

P = 0.25


def _layers():
    """(module, input, block_size) for every supported kind, including 1x1 and k x k convs."""
    return [
        (nn.Linear(32, 16), torch.randn(5, 32), 8),
        (nn.Embedding(40, 16), torch.randint(0, 40, (6, 7)), 4),
        (nn.Conv1d(8, 12, 3, padding=1), torch.randn(2, 8, 10), 4),
        (nn.Conv2d(8, 6, 1), torch.randn(2, 8, 5, 5), 4),
        (nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), torch.randn(2, 4, 6, 6), 9),
    ]


def _functional(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The unwrapped layer's forward with another weight (the reference path)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    if isinstance(module, nn.Embedding):
        return F.embedding(x, weight, module.padding_idx)
    return module._conv_forward(x, weight, module.bias)


@pytest.mark.parametrize(
    "module,x,block_size", _layers(), ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_training_forward_matches_reference_and_eval_is_plain(module, x, block_size):
    expected_eval = module(x)
    qn.quant_noise(module, P, block_size)
    assert isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d))
    module.train()
    torch.manual_seed(1)
    out = module(x)
    torch.manual_seed(1)
    seed = int(ops.draw_seed())  # the seed the forward drew
    noised = reference.block_noise(module.weight.detach(), P, block_size, seed)
    torch.testing.assert_close(out, _functional(module, x, noised), rtol=1e-5, atol=1e-6)
    module.eval()
    assert torch.equal(module(x), expected_eval), "eval mode is the plain layer"


@pytest.mark.parametrize(
    "module,x,block_size", _layers(), ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_stored_weights_never_modified(module, x, block_size):
    keys = list(module.state_dict())
    qn.quant_noise(module, 0.5, block_size)
    assert list(module.state_dict()) == keys, "state_dict keys unchanged"
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for _ in range(20):
        module(x).float().square().sum().backward()
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified by training forwards/backwards"


def test_straight_through_gradient_reaches_every_weight():
    layer = qn.quant_noise(nn.Linear(64, 8), 0.5, 8)
    x = torch.randn(4, 64)
    torch.manual_seed(3)
    layer(x).sum().backward()
    # Straight-through with rescale: grad_W = s * g^T x for every entry, dropped or not.
    expected = (1 / (1 - 0.5)) * torch.ones(4, 8).T @ x
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_dropout_style_gradient_is_zero_on_dropped_blocks():
    layer = qn.quant_noise(nn.Linear(64, 8), 0.5, 8, straight_through=False)
    x = torch.randn(4, 64)
    torch.manual_seed(3)
    layer(x).sum().backward()
    torch.manual_seed(3)
    dropped = reference.block_noise_mask(8 * 64 // 8, 0.5, int(ops.draw_seed())).repeat_interleave(8).view(8, 64)
    expected = (2.0 * torch.ones(4, 8).T @ x).masked_fill(dropped, 0)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_remove_restores_the_module():
    layer = nn.Linear(16, 4)
    qn.quant_noise(layer, P, 4)
    assert type(layer).__name__ == "QuantNoiseLinear"
    qn.remove_quant_noise(layer)
    assert type(layer) is nn.Linear and not hasattr(layer, "quant_noise_config")
    with pytest.raises(ValueError, match="not wrapped"):
        qn.remove_quant_noise(layer)


def test_p_zero_returns_module_untouched():
    layer = nn.Linear(16, 4)
    assert qn.quant_noise(layer, 0.0, 4) is layer and type(layer) is nn.Linear


def test_reproducible_with_manual_seed():
    layer = qn.quant_noise(nn.Linear(32, 32), P, 8)
    x = torch.randn(3, 32)
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    assert torch.equal(a, layer(x))
    assert not torch.equal(a, layer(x)), "a new forward draws a new mask"


def test_functional_form():
    w = torch.randn(16, 32, requires_grad=True)
    assert qn.quant_noise_weight(w, P, 8, training=False) is w
    g = torch.Generator().manual_seed(9)
    out = qn.quant_noise_weight(w, P, 8, generator=g)
    seed = int(ops.draw_seed(torch.Generator().manual_seed(9)))
    torch.testing.assert_close(out, reference.block_noise(w.detach(), P, 8, seed), rtol=0, atol=0)
    layer = qn.quant_noise(nn.Linear(32, 16), P, 8)
    layer.eval()
    assert qn.noise.noised_weight(layer) is layer.weight


def test_torch_compile_fullgraph():
    layer = qn.quant_noise(nn.Linear(32, 16), P, 8)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 32)
    out = compiled(x)
    out.sum().backward()
    assert out.shape == (4, 16)
    # straight-through: grad W = s * g^T x with g = 1, whatever the mask; grad b = g.sum(0)
    expected = torch.ones(4, 16).t().mm(x) / (1 - P)
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, torch.full((16,), 4.0))
    layer.eval()
    torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize(
    "module,block_size,error,match",
    [
        (nn.Linear(30, 4), 8, ValueError, r"block_size must divide the row length of weight \(30.*got block_size=8"),
        (nn.Linear(32, 4), 0, ValueError, r"block_size must be positive, got 0"),
        (nn.Conv2d(4, 4, 3), 8, ValueError, r"row length of weight \(36.*got block_size=8"),
        (nn.LSTM(4, 4), 4, TypeError, r"module must be one of Linear, Embedding, Conv1d, Conv2d, got LSTM"),
    ],
)
def test_bad_input(module, block_size, error, match):
    with pytest.raises(error, match=match):
        qn.quant_noise(module, P, block_size)


@pytest.mark.parametrize("p", [-0.1, 1.0, 2.0])
def test_bad_p(p):
    with pytest.raises(ValueError, match=rf"p must be in \[0, 1\), got {p}"):
        qn.quant_noise(nn.Linear(8, 8), p, 4)


def _ddp_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    model = nn.Sequential(
        qn.quant_noise(nn.Linear(16, 32), 0.3, 4), nn.ReLU(), qn.quant_noise(nn.Linear(32, 4), 0.3, 8)
    )
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    torch.manual_seed(100 + rank)  # different data and masks per rank
    for _ in range(5):
        opt.zero_grad()
        ddp(torch.randn(8, 16)).square().mean().backward()
        opt.step()
    gathered = [torch.zeros(sum(p.numel() for p in model.parameters())) for _ in range(world_size)]
    dist.all_gather(gathered, torch.cat([p.detach().flatten() for p in model.parameters()]))
    if rank == 0:
        torch.save(gathered, result_file)
    finish_worker()


# slow (left out of make test-asan; make test runs it): two spawned processes (gloo) train two tiny layers; its time
# (55 s on 2 loaded cores) is process start-up and gloo. The block_noise kernels it calls run on every edge case
# under ASan in test_block_noise.py.
@pytest.mark.slow
def test_distributed_data_parallel_keeps_ranks_equal():
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "params.pt")
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), result), nprocs=2, join=True)
        params = torch.load(result)
    assert torch.equal(params[0], params[1]), "parameters differ across ranks after training"
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    assert not torch.equal(params[0], torch.cat([p.detach().flatten() for p in initial.parameters()])), "no training"

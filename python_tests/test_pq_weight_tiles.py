"""The decoded-weight-tile paths: pq_linear's backward by tiles and the PQ convolutions by tiles, against
autograd through the plain-PyTorch reference (decode + F.linear / F.conv*d), the rule that picks them,
and that the layers really take them on the shapes the rule names."""

from __future__ import annotations

import pytest
import torch
from devices import device_params
from pq_reference import assert_same_forward_backward, decoded_conv
from pq_reference import close_rel as _close
from pq_reference import linear_grads as _reference_grads

from quantnoise_kernels import ops, reference
from quantnoise_kernels.ops import _pq_autograd
from quantnoise_kernels.ops._pq_weight_tiles import backward_by_weight_tiles, weight_tiles_pay
from quantnoise_kernels.pq import PQConv1d, PQConv2d
from quantnoise_kernels.pq.layers import _conv_tiles, conv

DEVICES = device_params()


@pytest.mark.parametrize(
    "rows, out, n_blocks, K, bs, expected",
    [
        (1568, 256, 256, 256, 9, True),  # PQConv2d(256, 256, 3x3) on 8 x 14 x 14: measured 2.8x faster
        (512, 384, 96, 256, 4, True),  # MiniLM attention projection, block 4: 3.2x
        (512, 384, 192, 256, 8, True),  # MiniLM FFN output (in 1536): 1.8x
        (1024, 4096, 512, 256, 8, False),  # Linear(4096, 4096): the codes are 3x faster
        (512, 1536, 48, 256, 8, False),  # MiniLM FFN input (out 1536): the codes are 1.5x faster
        (512, 512, 512, 256, 9, False),  # Conv2d(512, 512, 3x3): tiles 0.75-1.1x, not worth it
        (63, 256, 256, 256, 9, False),  # too few rows: the tiles' fixed cost
        (64, 0, 256, 256, 9, False),
        (64, 256, 0, 256, 9, False),
    ],
)
def test_weight_tiles_pay_on_the_measured_shapes(rows, out, n_blocks, K, bs, expected):
    assert weight_tiles_pay(rows, out, n_blocks, K, bs) is expected


# (rows, out, in, bs, K, tile_bytes): several tiles with a partial last one, one row per tile, int32 codes.
CASES = [(70, 40, 36, 9, 16, 36 * 4 * 7), (64, 12, 24, 4, 300, 24 * 4), (65, 33, 16, 2, 8, 1 << 20)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("transposed", [False, True])
def test_backward_by_weight_tiles_matches_autograd_of_reference(device, case, transposed):
    m, out, inf, bs, K, tile_bytes = case
    codes = torch.randint(0, K, (out, inf // bs), device=device).to(torch.uint8 if K <= 256 else torch.int32)
    c = torch.randn(K, bs, device=device)
    x, g = torch.randn(m, inf, device=device), torch.randn(m, out, device=device)
    packed = ops.pq_pack_codes(codes) if transposed else codes
    gx, gc = backward_by_weight_tiles(g, x, packed, c, codes_transposed=transposed, tile_bytes=tile_bytes)
    rx, rc = _reference_grads(g, x, codes, c)
    assert gx.shape == x.shape and gx.dtype == torch.float32 and gc.shape == (K, bs) and gc.dtype == torch.float32
    _close(gx, rx)
    _close(gc, rc)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_backward_by_weight_tiles_dtypes_and_flags(dtype):
    codes = torch.randint(0, 16, (20, 6), dtype=torch.uint8)
    c, x, g = torch.randn(16, 4), torch.randn(2, 40, 24).to(dtype), torch.randn(2, 40, 20).to(dtype)
    gx, gc = backward_by_weight_tiles(g, x, codes, c, tile_bytes=7 * 24 * 8)
    assert gx.shape == (2, 40, 24) and gx.dtype == dtype
    assert gc.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rx, rc = _reference_grads(g.reshape(80, 20).float(), x.reshape(80, 24).float(), codes, c)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1e-2
    _close(gx.reshape(80, 24), rx, rtol)
    _close(gc, rc, 1e-5)
    only_x, empty = backward_by_weight_tiles(g, None, codes, c, centroids_grad=False)
    _close(only_x.reshape(80, 24), rx, rtol)
    assert empty.shape == (0,)
    assert backward_by_weight_tiles(g, x, codes, c, input_grad=False)[0].shape == (0,)


def test_backward_by_weight_tiles_int8_centroids():
    codes = torch.randint(0, 8, (24, 3), dtype=torch.uint8)
    cq = torch.randint(-128, 128, (8, 4), dtype=torch.int8)
    scale, zp = torch.rand(8) + 0.1, torch.randint(-5, 5, (8,), dtype=torch.int32)
    g = torch.randn(70, 24)
    gx, _ = backward_by_weight_tiles(g, None, codes, cq, centroid_scale=scale, centroid_zero_point=zp,
                                     centroids_grad=False, tile_bytes=12 * 4 * 5)  # fmt: skip
    w = (cq.float() - zp.float().unsqueeze(1)) * scale.unsqueeze(1)
    _close(gx, g.double() @ reference.pq_decode(codes, w.double(), (24, 12)))


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize("rows, used", [(64, True), (63, False)])
def test_pq_linear_autograd_takes_the_tiles_where_they_pay(monkeypatch, rows, used):
    """out 16, in 36, block 9, K 16: the rule says tiles from 64 rows; gradients equal the reference's."""
    calls = _spy(monkeypatch, _pq_autograd, "backward_by_weight_tiles")
    codes = torch.randint(0, 16, (16, 4), dtype=torch.uint8)
    c = torch.randn(16, 9, requires_grad=True)
    x, g = torch.randn(rows, 36, requires_grad=True), torch.randn(rows, 16)
    ops.pq_linear(x, ops.pq_pack_codes(codes), c, codes_transposed=True).backward(g)
    assert bool(calls) is used
    rx, rc = _reference_grads(g, x, codes, c)
    _close(x.grad, rx)
    _close(c.grad, rc)


def test_gradcheck_through_the_tiles():
    codes = torch.randint(0, 4, (6, 4), dtype=torch.uint8)
    c = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    assert weight_tiles_pay(64, 6, 4, 4, 2)
    assert torch.autograd.gradcheck(lambda x, c: ops.pq_linear(x, codes, c), (x, c))


def _conv_case(cls, n, out, **kw):
    """A PQ convolution whose shapes make the rule pick the tiles (block 9, K 64, 64+ output positions)."""
    dense = (torch.nn.Conv1d if n == 1 else torch.nn.Conv2d)(6, out, 3, **kw)
    row = dense.weight[0].numel()
    codes = torch.randint(0, 64, (out, row // 9), dtype=torch.uint8)
    c = torch.randn(64, 9)
    bias = None if dense.bias is None else dense.bias.detach().clone()
    args = {k: v for k, v in kw.items() if k != "bias"}
    return dense, cls(c, codes, bias, 6, out, 3, **args), codes, c


CONV_CASES = [
    (PQConv2d, 2, (2, 6, 9, 8), dict(padding=1)),
    (PQConv2d, 2, (6, 20, 19), dict(stride=2, dilation=2, padding=2, bias=False)),  # unbatched
    (PQConv2d, 2, (3, 6, 10, 7), dict(padding=1, padding_mode="reflect")),
    (PQConv1d, 1, (4, 6, 40), dict(padding=2, dilation=2)),
    (PQConv1d, 1, (2, 6, 70), dict(padding=1, padding_mode="circular", stride=2)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, n, shape, kw", CONV_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("tile_bytes", [1 << 22, 1], ids=["one-tile", "32-channel-tiles"])
def test_conv_by_weight_tiles_matches_decoded_conv(monkeypatch, device, cls, n, shape, kw, tile_bytes):
    """Forward and gradients (x, centroids, bias) against the reference; 80 output channels make 3 tiles
    (32, 32, 16) when a tile holds one row's bytes (rounded up to 32 channels)."""
    monkeypatch.setattr(_conv_tiles, "TILE_BYTES", tile_bytes)
    calls = _spy(monkeypatch, conv, "conv_by_weight_tiles")
    dense, layer, codes, c = _conv_case(cls, n, 80, **kw)
    layer = layer.to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    y = layer(x)
    assert calls, "the rule should pick the tiles on this shape"
    x2 = x.detach().clone().requires_grad_()
    c2 = c.to(device).requires_grad_()
    b2 = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    ref = decoded_conv(x2, codes.to(device), c2, b2, dense)
    assert_same_forward_backward(y, ref, [(x, x2), (layer.centroids, c2), (layer.bias, b2)])


def test_conv_tiles_equal_the_im2col_path_with_mean_reduction_and_int8(monkeypatch):
    """grad_reduction="mean" and int8 centroids (eval) give what the im2col path gives."""
    dense, layer, codes, c = _conv_case(PQConv2d, 2, 64, padding=1)
    layer.grad_reduction = "mean"
    x = torch.randn(2, 6, 8, 8)
    grads = []
    for pay in (weight_tiles_pay, lambda *a: False):
        monkeypatch.setattr(conv, "weight_tiles_pay", pay)
        layer.zero_grad()
        layer(x).pow(2).sum().backward()
        grads.append(layer.centroids.grad.clone())
    _close(grads[0], grads[1])
    layer.quantize_centroids_(8)
    with torch.no_grad():
        outs = []
        for pay in (weight_tiles_pay, lambda *a: False):
            monkeypatch.setattr(conv, "weight_tiles_pay", pay)
            outs.append(layer(x))
    _close(outs[0], outs[1])


def test_conv_keeps_the_im2col_path_where_tiles_do_not_apply(monkeypatch):
    """groups > 1, a forced path, activation fake-quant, half inputs, or few output positions."""
    calls = _spy(monkeypatch, conv, "conv_by_weight_tiles")
    _, grouped, _, _ = _conv_case(PQConv2d, 2, 64, padding=1, groups=2)
    grouped(torch.randn(2, 6, 8, 8))
    _, layer, _, _ = _conv_case(PQConv2d, 2, 64, padding=1)
    layer(torch.randn(1, 6, 7, 9))  # 63 output positions
    layer(torch.randn(2, 6, 8, 8, dtype=torch.bfloat16))
    layer.path = "lut"
    layer(torch.randn(2, 6, 8, 8))
    layer.path, layer.act_bits = "auto", 8
    layer(torch.randn(2, 6, 8, 8))
    assert not calls
    layer.act_bits = 0
    layer(torch.randn(2, 6, 8, 8))
    assert calls


def test_conv_tiles_under_torch_compile():
    torch._dynamo.reset()
    _, layer, _, _ = _conv_case(PQConv2d, 2, 64, padding=1)
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    layer(x).sum().backward()
    eager = (x.grad.clone(), layer.centroids.grad.clone())
    x.grad, layer.centroids.grad = None, None
    compiled = torch.compile(layer, fullgraph=False)
    compiled(x).sum().backward()
    _close(x.grad, eager[0])
    _close(layer.centroids.grad, eager[1])

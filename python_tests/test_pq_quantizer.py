"""iPQ quantizer: block layout, encode/decode, fairseq order converters."""

from __future__ import annotations

import pytest
import torch

from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQ, blocks_to_weight, from_fairseq_order, to_fairseq_order, weight_to_blocks


def _modules():
    return [
        torch.nn.Linear(64, 32),
        torch.nn.Embedding(40, 16),
        torch.nn.Conv1d(8, 12, 3),
        torch.nn.Conv2d(4, 8, (3, 3)),
        torch.nn.Conv2d(8, 6, (1, 1)),
        torch.nn.Conv2d(6, 4, (3, 2), groups=2),
    ]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__class__.__name__ + str(tuple(m.weight.shape)))
def test_blocks_layout_and_round_trip(module):
    w = module.weight.detach()
    bs = 4 if w[0].numel() % 4 == 0 else 3
    blocks = weight_to_blocks(w, bs)
    row = w[0].numel()
    assert blocks.shape == (w.shape[0] * row // bs, bs)
    r, j = w.shape[0] - 1, row // bs - 1
    assert torch.equal(blocks[r * (row // bs) + j], w.reshape(w.shape[0], -1)[r, j * bs : (j + 1) * bs])
    assert torch.equal(blocks_to_weight(blocks, w.shape), w)


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__class__.__name__ + str(tuple(m.weight.shape)))
def test_encode_decode_equals_reference_reconstruction(module):
    w = module.weight.detach()
    bs = 4 if w[0].numel() % 4 == 0 else 3
    k = min(16, w.numel() // bs)
    pq = PQ(w, bs, n_centroids=k, n_iter=5, seed=0)
    codes, centroids = pq.encode()
    assert codes.dtype == torch.uint8 and codes.shape == (w.shape[0], w[0].numel() // bs)
    assert centroids.shape == (k, bs) and centroids.dtype == torch.float32
    ref = centroids[codes.long()].reshape(w.shape)  # reference reconstruction of the layout
    assert torch.equal(pq.decode(), ref)
    # codes are the nearest centroids of the blocks (exact-distance reference)
    ref_codes, _ = reference.kmeans_assign(weight_to_blocks(w, bs)[None], centroids[None])
    chosen = ((weight_to_blocks(w, bs) - centroids[codes.reshape(-1).long()]) ** 2).sum(-1)
    best = ((weight_to_blocks(w, bs) - centroids[ref_codes[0]]) ** 2).sum(-1)
    torch.testing.assert_close(chosen, best, rtol=1e-5, atol=1e-7)
    assert pq.objective and pq.objective[-1] <= pq.objective[0]


def test_int32_codes_for_large_k():
    w = torch.randn(600, 8)
    codes, _ = PQ(w, 2, n_centroids=300, n_iter=2, seed=0).encode()
    assert codes.dtype == torch.int32 and int(codes.max()) < 300


def test_fairseq_order_converters():
    out, nb = 5, 3
    codes = torch.randint(0, 256, (out, nb), dtype=torch.uint8)
    a = to_fairseq_order(codes)
    assert a.dtype == torch.int64 and a.shape == (out * nb,)
    for o in range(out):
        for j in range(nb):
            assert a[j * out + o] == codes[o, j]
    back = from_fairseq_order(a, out, n_centroids=256)
    assert back.dtype == torch.uint8 and torch.equal(back, codes)
    assert from_fairseq_order(a.clamp(max=9), out).dtype == torch.uint8
    assert from_fairseq_order(a + 300, out).dtype == torch.int32


def test_fairseq_pq_blocks_match():
    # fairseq's PQ reshape for Linear: (out, in/bs, bs) -> permute (bs, in/bs, out) -> (bs, nb*out);
    # column n = j*out + o is our block (o, j): to_fairseq_order maps one to the other.
    w = torch.randn(6, 12)
    bs = 4
    fair = w.reshape(6, 3, bs).permute(2, 1, 0).flatten(1, 2)  # [bs, nb*out]
    ours = weight_to_blocks(w, bs)  # [out*nb, bs]
    order = to_fairseq_order(torch.arange(18).reshape(6, 3))
    assert torch.equal(fair.t(), ours[order])


def test_errors():
    with pytest.raises(ValueError, match=r"block_size must divide the row length of weight \(10 .*got block_size=4"):
        weight_to_blocks(torch.randn(3, 10), 4)
    with pytest.raises(ValueError, match="PQ: n_centroids=16 exceeds the 6 blocks of the weight"):
        PQ(torch.randn(3, 8), 4, n_centroids=16).encode()
    with pytest.raises(RuntimeError, match="encode"):
        PQ(torch.randn(3, 8), 4, n_centroids=2).decode()

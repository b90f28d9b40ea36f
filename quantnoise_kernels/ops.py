"""Typed wrappers of the ``torch.ops.quantnoise`` ops, with their fake kernels and autograd.

Each public function is one hop to the dispatcher, which picks the CPU or CUDA kernel. The fake
kernels give ``torch.compile`` output metadata; they mirror the C++ checks that shape depends on.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "block_noise",
    "draw_seed",
    "kmeans_assign",
    "kmeans_update",
    "noisy_linear",
    "pq_pack_codes",
    "pq_unpack_codes",
    "pq_decode",
    "pq_linear",
    "pq_embedding",
]

_SEED_HIGH = 2**62


def draw_seed(generator: torch.Generator | None = None) -> Tensor:
    """Draw a Philox seed from torch's RNG, so ``torch.manual_seed`` makes noise reproducible.

    Returns a 0-d int64 CPU tensor (a tensor, not an int, so ``torch.compile`` traces it).
    """
    return torch.randint(0, _SEED_HIGH, (), dtype=torch.int64, generator=generator)


def _as_seed(seed: int | Tensor) -> Tensor:
    if isinstance(seed, Tensor):
        return seed
    return torch.tensor(seed, dtype=torch.int64)


def block_noise(
    weight: Tensor,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    offset: int = 0,
    rescale: bool = True,
    straight_through: bool = True,
    noise: str = "drop",
    centroids: Tensor | None = None,
) -> Tensor:
    """Fused Quant-Noise on the blocks of ``weight`` (one pass, no mask tensor).

    ``weight`` is viewed as ``weight.reshape(out, -1)``; a block is ``block_size`` consecutive
    entries of a row. Each block is noised with probability ``p`` from a Philox draw keyed by
    ``(seed, offset, block index)``: the same seed gives the same mask on every device.

    Args:
        weight: ``[out, ...]`` float32/float16/bfloat16/float64; never modified.
        p: noise rate in ``[0, 1)`` (``1`` allowed when ``rescale=False``).
        block_size: block length; must divide the row length ``weight[0].numel()``.
        seed: int or one-element int64 tensor (CPU or ``weight``'s device); see :func:`draw_seed`.
        offset: second Philox counter word, to draw independent masks from one seed.
        rescale: ``noise="drop"`` only: scale kept blocks by ``1/(1-p)`` (fairseq's default).
            Ignored by ``noise="centroid"`` (``s = 1``, so ``p = 1`` is allowed there).
        straight_through: backward passes ``s*grad`` to every entry (the paper's
            ``W + stopgrad(mask*(phi(W)-W))``); ``False``: dropout-style, 0 on noised blocks.
        noise: ``"drop"`` (noised blocks become 0) or ``"centroid"`` (a noised block becomes its
            nearest row of ``centroids`` in squared L2, ties to the lowest index; kept blocks
            are copied unscaled).
        centroids: ``noise="centroid"`` only (required there): ``[K, block_size]`` codebook with
            ``weight``'s dtype and device. Not differentiated.

    Returns:
        A new contiguous tensor of ``weight``'s shape and dtype.
    """
    return torch.ops.quantnoise.block_noise.default(
        weight,
        _as_seed(seed),
        float(p),
        int(block_size),
        int(offset),
        bool(rescale),
        bool(straight_through),
        noise,
        centroids,
    )


@torch.library.register_fake("quantnoise::block_noise")
def _block_noise_fake(
    weight, seed, p, block_size, offset=0, rescale=True, straight_through=True, noise="drop", centroids=None
):
    torch._check(
        weight.dim() >= 2, lambda: f"quantnoise::block_noise: weight must be >= 2-D, got {tuple(weight.shape)}"
    )
    torch._check(block_size > 0, lambda: f"quantnoise::block_noise: block_size must be positive, got {block_size}")
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _block_noise_setup_context(ctx, inputs, output):
    _, seed, p, block_size, offset, rescale, straight_through, noise, _centroids = inputs
    ctx.save_for_backward(seed)
    ctx.args = (p, block_size, offset, rescale, straight_through, noise)


def _block_noise_backward(ctx, grad: Tensor):
    (seed,) = ctx.saved_tensors
    p, block_size, offset, rescale, straight_through, noise = ctx.args
    scale = 1.0 / (1.0 - p) if (noise == "drop" and rescale) else 1.0
    if straight_through:  # identity (times s) on every entry, as if no block were noised
        grad_weight = grad * scale if scale != 1.0 else grad
    else:  # dropout-style: s*grad on kept blocks, 0 on noised ones = the drop forward on grad
        grad_weight = torch.ops.quantnoise.block_noise.default(
            grad, seed, p, block_size, offset, scale != 1.0, False, "drop"
        ).view_as(grad)
    return grad_weight, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "quantnoise::block_noise", _block_noise_backward, setup_context=_block_noise_setup_context
)


def noisy_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    p: float,
    block_size: int,
    seed: int | Tensor,
    *,
    offset: int = 0,
    rescale: bool = True,
    straight_through: bool = True,
) -> Tensor:
    """``F.linear(input, block_noise(weight, ...), bias)`` without materialising the noised weight.

    Same mask as :func:`block_noise` for the same ``(seed, offset)``. On the CPU the weight is
    noised an L2-sized chunk of rows at a time and multiplied from there, so a noisy training
    step costs about what a plain one does.

    Args:
        input: ``[..., in]``, weight's dtype and device.
        weight: ``[out, in]``; never modified.
        bias: ``[out]`` or ``None``.
        p, block_size, seed, offset, rescale, straight_through: as :func:`block_noise` (``noise="drop"``).

    Returns:
        ``[..., out]``.
    """
    return torch.ops.quantnoise.noisy_linear.default(
        input,
        weight,
        bias,
        _as_seed(seed),
        float(p),
        int(block_size),
        int(offset),
        bool(rescale),
        bool(straight_through),
    )


@torch.library.register_fake("quantnoise::noisy_linear")
def _noisy_linear_fake(input, weight, bias, seed, p, block_size, offset=0, rescale=True, straight_through=True):
    torch._check(weight.dim() == 2, lambda: f"quantnoise::noisy_linear: weight must be [out, in], got {weight.shape}")
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"quantnoise::noisy_linear: input must have shape [..., {weight.shape[1]}], got {tuple(input.shape)}",
    )
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("quantnoise::noisy_linear_backward_input")
def _noisy_linear_backward_input_fake(grad_output, weight, seed, p, block_size, offset=0, rescale=True):
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


def _noisy_linear_setup_context(ctx, inputs, output):
    input, weight, bias, seed, p, block_size, offset, rescale, straight_through = inputs
    ctx.save_for_backward(input, weight, seed)
    ctx.args = (p, block_size, offset, rescale, straight_through)


def _noisy_linear_backward(ctx, grad: Tensor):
    input, weight, seed = ctx.saved_tensors
    p, block_size, offset, rescale, straight_through = ctx.args
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.quantnoise.noisy_linear_backward_input.default(
            grad, weight, seed, p, block_size, offset, rescale
        )
    g = grad.reshape(-1, weight.shape[0])
    if ctx.needs_input_grad[1]:
        x = input.reshape(-1, weight.shape[1])
        scale = 1.0 / (1.0 - p) if rescale else 1.0
        if straight_through:  # scale the small gradient, not the weight-sized product
            grad_weight = (g * scale if scale != 1.0 else g).t().mm(x)
        else:
            grad_weight = torch.ops.quantnoise.block_noise.default(
                g.t().mm(x), seed, p, block_size, offset, rescale, False, "drop"
            )
    if ctx.needs_input_grad[2]:
        grad_bias = g.sum(0)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


torch.library.register_autograd(
    "quantnoise::noisy_linear", _noisy_linear_backward, setup_context=_noisy_linear_setup_context
)


def kmeans_assign(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every vector (k-means E-step), fused: never an ``N x K`` matrix.

    Centroids are ranked by ``0.5*||c||^2 - x.c`` computed in fp32 with one FMA chain in a fixed
    order on every device (``csrc/include/quantnoise/kmeans.h``); exact ties go to the lowest
    index. ``dist`` is the exact squared distance to the chosen centroid.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16 vectors.
        centroids: ``[B, K, D]`` (or ``[K, D]``) float32/float16/bfloat16, ``1 <= K <= 65536``.

    Returns:
        ``(codes, dist)``: ``codes`` int64 ``[B, N]`` in ``[0, K)``, ``dist`` float32 ``[B, N]``
        (``[N]`` each for 2-D inputs).
    """
    if x.dim() == 2 and centroids.dim() == 2:
        codes, dist = torch.ops.quantnoise.kmeans_assign.default(x.unsqueeze(0), centroids.unsqueeze(0))
        return codes.squeeze(0), dist.squeeze(0)
    return torch.ops.quantnoise.kmeans_assign.default(x, centroids)


def kmeans_update(x: Tensor, codes: Tensor, n_centroids: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums and counts (k-means M-step statistics); centroids are ``sums / counts``.

    Deterministic on the CPU (fixed chunks reduced in order, fp64 accumulation); CUDA uses atomics.

    Args:
        x: ``[B, N, D]`` (or ``[N, D]``) float32/float16/bfloat16.
        codes: int64 ``[B, N]`` (or ``[N]``) in ``[0, n_centroids)``.
        n_centroids: ``K``.

    Returns:
        ``(sums, counts)``: float32 ``[B, K, D]`` and int64 ``[B, K]`` (without ``B`` for 2-D ``x``).
    """
    if x.dim() == 2 and codes.dim() == 1:
        sums, counts = torch.ops.quantnoise.kmeans_update.default(x.unsqueeze(0), codes.unsqueeze(0), int(n_centroids))
        return sums.squeeze(0), counts.squeeze(0)
    return torch.ops.quantnoise.kmeans_update.default(x, codes, int(n_centroids))


@torch.library.register_fake("quantnoise::kmeans_assign")
def _kmeans_assign_fake(x, centroids):
    torch._check(x.dim() == 3, lambda: f"quantnoise::kmeans_assign: x must be [B, N, D], got {tuple(x.shape)}")
    torch._check(
        centroids.dim() == 3, lambda: f"quantnoise::kmeans_assign: centroids must be [B, K, D], got {centroids.shape}"
    )
    batch, n = x.shape[0], x.shape[1]
    return x.new_empty((batch, n), dtype=torch.int64), x.new_empty((batch, n), dtype=torch.float32)


@torch.library.register_fake("quantnoise::kmeans_update")
def _kmeans_update_fake(x, codes, n_centroids):
    torch._check(x.dim() == 3, lambda: f"quantnoise::kmeans_update: x must be [B, N, D], got {tuple(x.shape)}")
    batch, dim = x.shape[0], x.shape[2]
    return (
        x.new_empty((batch, n_centroids, dim), dtype=torch.float32),
        x.new_empty((batch, n_centroids), dtype=torch.int64),
    )


# ---------------------------------------------------------------------------------------------
# Product quantization (DESIGN §3.3): pq_decode, pq_linear, pq_embedding.


def pq_pack_codes(codes: Tensor) -> Tensor:
    """Convert interchange codes ``[out, n_blocks]`` to the packed layout the lookup kernels read.

    The packed layout is the transpose ``[n_blocks, out]`` (contiguous): for an input block ``j``
    the codes of consecutive outputs are adjacent, so 16 outputs load as 16 contiguous bytes.
    Pass it with ``codes_transposed=True``. Layers convert once at construction.
    """
    return codes.t().contiguous()


def pq_unpack_codes(packed: Tensor) -> Tensor:
    """Inverse of :func:`pq_pack_codes`: packed ``[n_blocks, out]`` to interchange ``[out, n_blocks]``."""
    return packed.t().contiguous()


def pq_decode(
    codes: Tensor,
    centroids: Tensor,
    shape: list[int] | tuple[int, ...] | torch.Size,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    codes_transposed: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Rebuild the dense weight: block ``(o, j)`` of ``W.reshape(out, -1)`` is ``centroids[codes[o, j]]``.

    Args:
        codes: ``[out, n_blocks]`` uint8 (K <= 256) or int32; ``[n_blocks, out]`` if ``codes_transposed``.
        centroids: ``[K, block_size]`` float32/float16/bfloat16/float64, or int8 with ``centroid_scale``.
        shape: the weight's shape ``[out, ...]`` with ``prod(shape[1:]) == n_blocks * block_size``.
        centroid_scale: int8 centroids only: 1 or K scales; value = ``(c - zero_point) * scale``.
        centroid_zero_point: int8 centroids only: 1 or K zero points (default 0).
        codes_transposed: codes are in the packed layout of :func:`pq_pack_codes`.
        out_dtype: output dtype (default: the centroids' float dtype, float32 for int8).

    Returns:
        ``W`` of ``shape``.
    """
    return torch.ops.quantnoise.pq_decode.default(
        codes, centroids, [int(s) for s in shape], centroid_scale, centroid_zero_point, codes_transposed, out_dtype
    )


def pq_linear(
    x: Tensor,
    codes: Tensor,
    centroids: Tensor,
    bias: Tensor | None = None,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    codes_transposed: bool = False,
    act_bits: int = 0,
    act_granularity: str = "tensor",
    path: str = "auto",
) -> Tensor:
    """``y = fq(x) . decode(codes, centroids)^T + bias`` without materialising the dense weight.

    CPU paths: ``"lut"`` builds, per row, a table of ``x_block . centroid`` and sums table entries
    picked by the codes (16 rows per vector add; one row on AVX-512 looks up 16 outputs per step
    from a table held in registers); ``"tile"`` decodes ~1 MiB of ``W`` at a time and multiplies;
    ``"auto"`` picks by size. Packed codes (``codes_transposed=True``) avoid a per-call transpose.

    Args:
        x: ``[..., in]`` float32/float16/bfloat16/float64 (computed in float32, float64 in float64).
        codes: ``[out, in/block_size]`` uint8/int32, or packed ``[in/block_size, out]``.
        centroids: ``[K, block_size]`` float, or int8 with ``centroid_scale``/``centroid_zero_point``.
        bias: ``[out]`` or None.
        centroid_scale: see :func:`pq_decode`.
        centroid_zero_point: see :func:`pq_decode`.
        codes_transposed: codes are in the packed layout.
        act_bits: 0 (off) or the bit width of an affine fake-quant of ``x`` fused into the op.
        act_granularity: ``"tensor"`` (one range) or ``"token"`` (one range per row of ``x``).
        path: ``"auto"``, ``"lut"`` or ``"tile"``.

    Returns:
        ``[..., out]`` in ``x``'s dtype. Differentiable in ``x`` (straight-through across the
        activation fake-quant), float ``centroids`` (per-centroid sum of block gradients) and ``bias``.
    """
    return torch.ops.quantnoise.pq_linear.default(
        x,
        codes,
        centroids,
        bias,
        centroid_scale,
        centroid_zero_point,
        codes_transposed,
        int(act_bits),
        act_granularity,
        path,
    )


def pq_embedding(
    indices: Tensor,
    codes: Tensor,
    centroids: Tensor,
    *,
    centroid_scale: Tensor | None = None,
    centroid_zero_point: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Rows ``indices`` of the PQ-compressed table, decoding only those rows.

    Args:
        indices: int64/int32 tensor of any shape, values in ``[0, num_embeddings)``.
        codes: ``[num_embeddings, dim/block_size]`` uint8/int32 (interchange layout).
        centroids: ``[K, block_size]`` float, or int8 with ``centroid_scale``/``centroid_zero_point``.
        centroid_scale: see :func:`pq_decode`.
        centroid_zero_point: see :func:`pq_decode`.
        out_dtype: output dtype (default: the centroids' float dtype, float32 for int8).

    Returns:
        ``indices.shape + [dim]``. Differentiable in float ``centroids``.
    """
    return torch.ops.quantnoise.pq_embedding.default(
        indices, codes, centroids, centroid_scale, centroid_zero_point, out_dtype
    )


def _pq_dims(codes, centroids, codes_transposed):
    out = codes.shape[1] if codes_transposed else codes.shape[0]
    n_blocks = codes.shape[0] if codes_transposed else codes.shape[1]
    return out, n_blocks, centroids.shape[0], centroids.shape[1]


def _pq_out_dtype(centroids, out_dtype):
    if out_dtype is not None:
        return out_dtype
    return torch.float32 if centroids.dtype == torch.int8 else centroids.dtype


@torch.library.register_fake("quantnoise::pq_decode")
def _pq_decode_fake(
    codes, centroids, shape, centroid_scale=None, centroid_zero_point=None, codes_transposed=False, out_dtype=None
):
    return codes.new_empty(shape, dtype=_pq_out_dtype(centroids, out_dtype))


@torch.library.register_fake("quantnoise::pq_linear")
def _pq_linear_fake(
    x,
    codes,
    centroids,
    bias=None,
    centroid_scale=None,
    centroid_zero_point=None,
    codes_transposed=False,
    act_bits=0,
    act_granularity="tensor",
    path="auto",
):
    out, n_blocks, _, block_size = _pq_dims(codes, centroids, codes_transposed)
    torch._check(
        x.shape[-1] == n_blocks * block_size,
        lambda: f"quantnoise::pq_linear: x must have in_features = {n_blocks * block_size}, got {tuple(x.shape)}",
    )
    return x.new_empty((*x.shape[:-1], out))


@torch.library.register_fake("quantnoise::pq_embedding")
def _pq_embedding_fake(indices, codes, centroids, centroid_scale=None, centroid_zero_point=None, out_dtype=None):
    return centroids.new_empty(
        (*indices.shape, codes.shape[1] * centroids.shape[1]), dtype=_pq_out_dtype(centroids, out_dtype)
    )


def _interchange(codes: Tensor, codes_transposed: bool) -> Tensor:
    return codes.t() if codes_transposed else codes


def _centroid_grad(grad_blocks: Tensor, codes: Tensor, centroids: Tensor) -> Tensor:
    """Per-centroid sum of the block gradients ``grad_blocks[n_blocks_total, bs]`` (codes flattened alike).

    Empty clusters get exactly 0 (a sum, never a division)."""
    grad = torch.zeros(centroids.shape, dtype=grad_blocks.dtype, device=grad_blocks.device)
    grad.index_add_(0, codes.reshape(-1).long(), grad_blocks)
    return grad.to(centroids.dtype)


def _act_fake_quant(x: Tensor, bits: int, granularity: str) -> Tensor:
    """The fake-quant the kernel fuses (reference.act_fake_quant), for the centroid gradient."""
    from .reference import act_fake_quant

    return act_fake_quant(x, bits, granularity)


def _pq_linear_setup_context(ctx, inputs, output):
    x, codes, centroids, bias, scale, zero_point, transposed, act_bits, granularity, _path = inputs
    ctx.args = (transposed, act_bits, granularity, bias is not None)
    ctx.x_shape = x.shape
    ctx.x_dtype = x.dtype
    float_centroids = centroids.dtype != torch.int8
    need_c = float_centroids and ctx.needs_input_grad[2]
    ctx.save_for_backward(x if need_c else None, codes, centroids, scale, zero_point)


def _pq_linear_backward(ctx, grad: Tensor):
    x, codes, centroids, scale, zero_point = ctx.saved_tensors
    transposed, act_bits, granularity, has_bias = ctx.args
    out, n_blocks, _, block_size = _pq_dims(codes, centroids, transposed)
    in_features = n_blocks * block_size
    compute = torch.float64 if ctx.x_dtype == torch.float64 else torch.float32
    g2 = grad.reshape(-1, out).to(compute)
    grad_x = grad_c = grad_b = None
    if ctx.needs_input_grad[0]:  # straight-through: the fake-quant passes the gradient unchanged
        # Training only: the dense weight is decoded here (inference never takes this path).
        w = pq_decode(
            codes,
            centroids,
            (out, in_features),
            centroid_scale=scale,
            centroid_zero_point=zero_point,
            codes_transposed=transposed,
            out_dtype=compute,
        )
        grad_x = (g2 @ w).to(ctx.x_dtype).reshape(ctx.x_shape)
    if x is not None:
        xq = x.reshape(-1, in_features).to(compute)
        if act_bits > 0:
            xq = _act_fake_quant(xq, act_bits, granularity)
        grad_w = g2.t() @ xq  # [out, in]
        grad_c = _centroid_grad(grad_w.reshape(-1, block_size), _interchange(codes, transposed), centroids)
    if has_bias and ctx.needs_input_grad[3]:
        grad_b = g2.sum(0)
    return grad_x, None, grad_c, grad_b, None, None, None, None, None, None


torch.library.register_autograd("quantnoise::pq_linear", _pq_linear_backward, setup_context=_pq_linear_setup_context)


def _pq_decode_setup_context(ctx, inputs, output):
    codes, centroids, _shape, _scale, _zp, transposed, _dtype = inputs
    ctx.transposed = transposed
    ctx.c_dtype = centroids.dtype
    ctx.c_shape = centroids.shape
    ctx.save_for_backward(codes)


def _pq_decode_backward(ctx, grad: Tensor):
    (codes,) = ctx.saved_tensors
    grad_c = None
    if ctx.c_dtype != torch.int8 and ctx.needs_input_grad[1]:
        bs = ctx.c_shape[1]
        grad_c = torch.zeros(ctx.c_shape, dtype=grad.dtype, device=grad.device)
        grad_c.index_add_(0, _interchange(codes, ctx.transposed).reshape(-1).long(), grad.reshape(-1, bs))
        grad_c = grad_c.to(ctx.c_dtype)
    return None, grad_c, None, None, None, None, None


torch.library.register_autograd("quantnoise::pq_decode", _pq_decode_backward, setup_context=_pq_decode_setup_context)


def _pq_embedding_setup_context(ctx, inputs, output):
    indices, codes, centroids, _scale, _zp, _dtype = inputs
    ctx.c_dtype = centroids.dtype
    ctx.c_shape = centroids.shape
    ctx.save_for_backward(indices, codes)


def _pq_embedding_backward(ctx, grad: Tensor):
    indices, codes = ctx.saved_tensors
    grad_c = None
    if ctx.c_dtype != torch.int8 and ctx.needs_input_grad[2]:
        bs = ctx.c_shape[1]
        rows = codes.index_select(0, indices.reshape(-1).long())  # [N, n_blocks]
        grad_c = torch.zeros(ctx.c_shape, dtype=grad.dtype, device=grad.device)
        grad_c.index_add_(0, rows.reshape(-1).long(), grad.reshape(-1, bs))
        grad_c = grad_c.to(ctx.c_dtype)
    return None, None, grad_c, None, None, None


torch.library.register_autograd(
    "quantnoise::pq_embedding", _pq_embedding_backward, setup_context=_pq_embedding_setup_context
)

"""Real int8 export: ``to_int8(model)`` turns the Int layers into layers that hold int8 weights.

The integer grid of each layer is the one its fake quantization used in eval, so the exported
weights are exactly the fake-quantized ones: ``(w_int8 - zero_point) * scale == Q(W)`` bit for bit
(an N-bit grid is shifted into int8's range; ``bits <= 8`` all fit).

Kernels (measured side by side on an AVX2 machine without VNNI, see README "Real int8 export"):
``Int8Linear`` runs fbgemm's dynamic int8 GEMM through ``torch.ops.quantized.linear_dynamic``
(what torch.ao's dynamic quantized Linear calls): activations quantized per tensor on the fly
to 7 bits (``reduce_range``: AVX2's ``vpmaddubsw`` would saturate 8x8-bit pairs), int32
accumulation. Its weight is held only in fbgemm's packed form; ``state_dict`` unpacks it to a
plain int8 tensor. ``Int8Embedding`` gathers the int8 rows looked up and dequantizes only those.
``Int8Conv2d`` holds int8 weights and dequantizes them for ``F.conv2d`` (4x less memory, not
faster).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activation import ActivationQuantizer
from .modules import IntConv2d, IntEmbedding, IntLinear
from .qparams import QParams, observe

__all__ = ["to_int8", "Int8Linear", "Int8Embedding", "Int8Conv2d"]


class _Int8Base(nn.Module):
    """int8 weights ``[out, ...]``, float32 ``scale`` and int32 ``zero_point`` (``[1]`` or ``[out]``)."""

    def _init_codes(self, codes: Tensor, scale: Tensor, zero_point: Tensor) -> None:
        self.register_buffer("weight_int8", codes)
        self.register_buffer("scale", scale.float().reshape(-1).clone())
        self.register_buffer("zero_point", zero_point.to(torch.int32).reshape(-1).clone())

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(w_int8 - zero_point) * scale`` in ``dtype``, the weight's shape."""
        codes = self.weight_int8.reshape(self.weight_int8.shape[0], -1).float()
        w = (codes - self.zero_point.reshape(-1, 1).float()) * self.scale.reshape(-1, 1)
        return w.to(dtype).view(self.weight_int8.shape)


class Int8Linear(nn.Module):
    """``y = x . Wᵀ + b`` with int8 ``W`` (fbgemm dynamic int8 GEMM, CPU only).

    Shapes as ``nn.Linear``; ``x`` float32/bfloat16/float16 (computed in float32, returned in
    ``x``'s dtype). Error against ``F.linear(x, Q(W), b)``: the 7-bit per-tensor rounding of ``x``,
    about 1-2% of ``|y|`` (relative Frobenius norm) on Gaussian inputs.
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero_point: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]
        self._pack(codes, scale, zero_point, bias)

    def _pack(self, codes: Tensor, scale: Tensor, zero_point: Tensor, bias: Tensor | None) -> None:
        # fbgemm takes its weight as a quantized tensor, a dtype torch 2.13 deprecates (pytorch#184982)
        # with a warning on creation; the kernel itself is not deprecated. The warning is ours to keep.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if scale.numel() == 1:
                q = torch._make_per_tensor_quantized_tensor(codes.cpu(), float(scale), int(zero_point))
            else:
                q = torch._make_per_channel_quantized_tensor(
                    codes.cpu(), scale.double().cpu(), zero_point.long().cpu(), 0
                )
        b = None if bias is None else bias.detach().float().cpu()
        self._packed = torch.ops.quantized.linear_prepack(q, b)

    def __getstate__(self):  # pickle the plain int8 tensors, not fbgemm's packed object
        state = self.__dict__.copy()
        state["_packed"] = self.unpacked()
        return state

    def __setstate__(self, state):
        packed = state.pop("_packed")
        self.__dict__.update(state)
        self._pack(*packed)

    @classmethod
    def from_int(cls, module: IntLinear, qparams: QParams) -> Int8Linear:
        codes, zp = qparams.to_int8(module.weight)
        return cls(codes, qparams.scale, zp, module.bias)

    def unpacked(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(codes int8 [out, in], scale float32, zero_point int32, bias or None)``."""
        q, bias = torch.ops.quantized.linear_unpack(self._packed)
        if q.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale, zp = torch.tensor([q.q_scale()]), torch.tensor([q.q_zero_point()])
        else:
            scale, zp = q.q_per_channel_scales(), q.q_per_channel_zero_points()
        return q.int_repr(), scale.float(), zp.to(torch.int32), bias

    def dequantized_weight(self) -> Tensor:
        codes, scale, zp, _ = self.unpacked()
        return (codes.float() - zp.reshape(-1, 1).float()) * scale.reshape(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"Int8Linear runs on the CPU only, got input on {x.device}")
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float(), self._packed, True)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        codes, scale, zp, bias = self.unpacked()
        destination[prefix + "weight_int8"] = codes
        destination[prefix + "scale"] = scale
        destination[prefix + "zero_point"] = zp
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors):
        keys = [prefix + k for k in ("weight_int8", "scale", "zero_point")]
        missing = [k for k in keys if k not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        codes, scale, zp = (state_dict[k] for k in keys)
        if tuple(codes.shape) != (self.out_features, self.in_features) or codes.dtype != torch.int8:
            errors.append(f"{prefix}weight_int8: expected int8 {(self.out_features, self.in_features)}, got "
                          f"{codes.dtype} {tuple(codes.shape)}")  # fmt: skip
            return
        self._pack(codes, scale, zp, state_dict.get(prefix + "bias"))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=fbgemm dynamic int8"


class Int8Embedding(_Int8Base):
    """``nn.Embedding`` lookups from int8 rows: only the rows looked up are dequantized."""

    def __init__(self, codes: Tensor, scale: Tensor, zero_point: Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.padding_idx = padding_idx
        self._init_codes(codes, scale, zero_point)

    @classmethod
    def from_int(cls, module: IntEmbedding, qparams: QParams) -> Int8Embedding:
        if module.max_norm is not None:
            raise ValueError("to_int8: an Embedding with max_norm cannot be exported (it renormalizes rows)")
        codes, zp = qparams.to_int8(module.weight)
        return cls(codes, qparams.scale, zp, module.padding_idx)

    def forward(self, indices: Tensor) -> Tensor:
        rows = F.embedding(indices, self.weight_int8.view(torch.uint8)).view(torch.int8).float()
        if self.scale.numel() == 1:
            return (rows - self.zero_point.float()) * self.scale
        zp = F.embedding(indices, self.zero_point.view(-1, 1)).float()
        scale = F.embedding(indices, self.scale.view(-1, 1))
        return (rows - zp) * scale


class Int8Conv2d(_Int8Base):
    """``nn.Conv2d`` with int8 weights, dequantized for the convolution at each forward."""

    def __init__(self, conv: nn.Conv2d, codes: Tensor, scale: Tensor, zero_point: Tensor) -> None:
        super().__init__()
        # A weight-less copy of the convolution's settings (stride, padding, padding_mode, ...).
        self.conv = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )  # fmt: skip
        del self.conv.weight
        if conv.bias is not None:
            self.conv.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self._init_codes(codes.view(conv.weight.shape), scale, zero_point)

    @classmethod
    def from_int(cls, module: IntConv2d, qparams: QParams) -> Int8Conv2d:
        codes, zp = qparams.to_int8(module.weight)
        return cls(module, codes, qparams.scale, zp)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.dequantized_weight(x.dtype), self.conv.bias)


_EXPORTS = {IntLinear: Int8Linear, IntEmbedding: Int8Embedding, IntConv2d: Int8Conv2d}


def to_int8(model: nn.Module, *, inplace: bool = False, refresh: bool = False) -> nn.Module:
    """Replace every Int layer of a scalar-quantized model by its real-int8 counterpart (CPU).

    Args:
        model: a model after :func:`~.pipeline.quantize_model_` (and training); on the CPU.
        inplace: change ``model`` itself; by default a deep copy is converted and returned.
        refresh: observe the quantization parameters from the current weights; by default each
            layer keeps the cached ones its eval forward uses (observed now if it has none), so
            the exported model computes what the fake-quantized eval computed.

    Returns:
        The converted model: ``Int8Linear``/``Int8Embedding``/``Int8Conv2d`` in place of the Int
        layers, activation quantizers moved along; weights held as int8 (about 4x fewer bytes).

    Raises:
        ValueError: no Int layer in ``model``, a layer not on the CPU, or an embedding with
            ``max_norm``; the model is not modified.
    """
    targets = [(n, m) for n, m in model.named_modules() if type(m) in _EXPORTS]
    if not targets:
        raise ValueError("to_int8: the model has no IntLinear/IntEmbedding/IntConv2d (run scalar.quantize_model_)")
    for name, module in targets:
        if module.weight.device.type != "cpu":
            raise ValueError(f"to_int8: layer {name!r} is on {module.weight.device}; move the model to the CPU")
        if isinstance(module, IntEmbedding) and module.max_norm is not None:
            raise ValueError(f"to_int8: layer {name!r} is an Embedding with max_norm (renormalizes rows)")
    if not inplace:
        model = copy.deepcopy(model)
        targets = [(n, m) for n, m in model.named_modules() if type(m) in _EXPORTS]
    for name, module in targets:
        qp = module._qcache.qparams
        if refresh or qp is None:
            qp = observe(module.weight, module._qcache.grid, name=f"{name}.weight")
        new = _EXPORTS[type(module)].from_int(module, qp)
        new.train(module.training)
        act: ActivationQuantizer | None = getattr(module, "activation_quantizer", None)
        if act is not None:
            new.activation_quantizer = act.attach(new)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model

"""``PQLayer``: what every PQ layer holds, and how it converts from and to its dense layer (DESIGN §3.3).

A PQ layer holds ``centroids`` (``nn.Parameter [K, block_size]``, float16 from :meth:`PQLayer.from_float`,
computed in float32), the ``bias`` (None for a layer without one) and the codes as a buffer (uint8 when
``K <= 256``, else int32): in the packed layout ``[n_blocks, out]`` the lookup kernels read (buffer
``packed_codes``, ``ops.pq_pack_codes``) or in the interchange layout ``[out, n_blocks]`` (buffer ``codes``).
:meth:`PQLayer.interchange_codes` always returns ``[out, row/block_size]``, the layout files use, and
:meth:`PQLayer.set_codes` takes it back. Training gradients to the centroids are the per-centroid sum of block
gradients (``grad_reduction="sum"``) or their mean over the blocks assigned to each centroid (``"mean"``; an
empty cluster gets 0, never NaN).

iPQ & int8 (the paper's best setting): the centroids may be int8 with a float32 ``centroid_scale`` and an int32
``centroid_zero_point`` (buffers, one value each: value = ``(c - zero_point) * scale``), made by
:meth:`PQLayer.quantize_centroids_` (or ``quantize_model_(..., centroid_bits=8)``). The kernels read them
through their int8-centroid path; int8 centroids are not trained (finetune the float ones first).

Conversion is owned here, keyed by ``_FLOAT_MODULE`` as in ``torch.ao.nn.qat``'s ``from_float``: a subclass
names its dense class (``_FLOAT_MODULE``) and the dense constructor arguments it keeps (``_LAYER_ARGS``, its
*config*), and implements ``weight_shape`` and ``forward``. The base gives :meth:`~PQLayer.from_float` (k-means
of the dense weight's blocks), :meth:`~PQLayer.to_dense`, :meth:`~PQLayer.config` and
:meth:`~PQLayer.from_config` (what save/load and the pipeline build layers with).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ... import ops
from ..._blocks import check_block_size, codes_dtype, row_length
from .._checks import check_finite
from ..quantizer import PQ

__all__ = ["PQLayer"]

_REDUCTIONS = ("sum", "mean")


def _grad_scaled(centroids: Tensor, counts: Tensor) -> Tensor:
    """``centroids`` in the forward; in the backward, the gradient divided by each cluster's size.

    ``c0 + (c - c0) * f`` equals ``c`` exactly (``c - c0`` is 0) and has derivative ``f``."""
    factor = (1.0 / counts.clamp(min=1).to(centroids.dtype)).unsqueeze(1)
    detached = centroids.detach()
    return detached + (centroids - detached) * factor


def _plain(value: Any) -> Any:
    """A config value as files store it: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


def _constructor_args(config: dict[str, Any]) -> dict[str, Any]:
    """A config as constructor arguments: lists (as files store them) become tuples."""
    return {key: tuple(v) if isinstance(v, list) else v for key, v in config.items()}


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)  # stride (1, 1) is the default stride 1
    return value == default


class PQLayer(nn.Module):
    """Base of the PQ layers: the codebook, the codes, the bias, and conversion from and to the dense layer.

    Subclasses set ``_FLOAT_MODULE`` (the dense class), ``_LAYER_ARGS`` (the dense constructor arguments the
    layer keeps as attributes of the same names), ``_HAS_BIAS`` and ``_PACKED_CODES``; their ``__init__`` takes
    ``(centroids, codes, [bias,] *layer_args, *, grad_reduction)``, stores the layer arguments, then calls
    :meth:`_init_codebook`. Register a new class with :func:`quantnoise_kernels.pq.registry.register_pq_layer`.
    """

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    _LAYER_ARGS: ClassVar[tuple[str, ...]]
    _HAS_BIAS: ClassVar[bool] = True
    _PACKED_CODES: ClassVar[bool] = True  # store packed [n_blocks, out] (pq_linear) or interchange [out, n_blocks]

    centroids: nn.Parameter
    bias: nn.Parameter | None
    counts: Tensor

    # ------------------------------------------------------------------------------------------ state

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the dense weight this layer encodes (``[out, ...]``)."""
        raise NotImplementedError

    def _init_codebook(
        self,
        centroids: Tensor,
        codes: Tensor,
        bias: Tensor | None,
        grad_reduction: str,
        centroid_scale: Tensor | None = None,
        centroid_zero_point: Tensor | None = None,
    ) -> None:
        """Check and store the codebook, the codes and the bias (a subclass calls it after its layer arguments)."""
        name = type(self).__name__
        if grad_reduction not in _REDUCTIONS:
            raise ValueError(f"{name}: grad_reduction must be one of {_REDUCTIONS}, got {grad_reduction!r}")
        for arg, t in (("centroids", centroids), ("bias", bias)):
            if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point()):
                kind = f"dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise TypeError(f"{name}: {arg} must be a float tensor, got {kind}")
        if centroids.dim() != 2:
            shape = tuple(centroids.shape)
            raise ValueError(f"{name}: centroids must be 2-D [n_centroids, block_size], got shape {shape}")
        check_block_size(int(centroids.shape[1]), self.weight_shape, name)
        out = self.weight_shape[0]
        if bias is not None and tuple(bias.shape) != (out,):
            raise ValueError(f"{name}: bias must have shape ({out},) [out], got {tuple(bias.shape)}")
        for arg, t in (("codes", codes), ("bias", bias)):
            if isinstance(t, Tensor) and t.device != centroids.device:
                raise ValueError(f"{name}: {arg} must be on the centroids' device {centroids.device}, got {t.device}")
        check_finite(name, "centroids", centroids)
        self.grad_reduction = grad_reduction
        self.act_bits = 0
        self._set_centroids(centroids.detach().clone(), centroid_scale, centroid_zero_point)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        counts = torch.zeros(centroids.shape[0], dtype=torch.int64, device=centroids.device)
        self.register_buffer("counts", counts, persistent=False)
        self.set_codes(codes)

    def _size_arg(self, arg: str, value: Any) -> int:
        """A layer size (``in_features``, ``num_embeddings``, ...): an int >= 0."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{type(self).__name__}: {arg} must be an int >= 0, got {value!r}")
        return value

    def _set_centroids(self, centroids: Tensor, scale: Tensor | None, zero_point: Tensor | None) -> None:
        name = type(self).__name__
        is_int8 = centroids.dtype == torch.int8
        if is_int8 != (scale is not None) or (zero_point is not None and not is_int8):
            raise ValueError(
                f"{name}: centroid_scale (and centroid_zero_point) go with int8 centroids, got centroids of dtype "
                f"{centroids.dtype} and centroid_scale {'given' if scale is not None else 'None'}"
            )
        self.centroids = nn.Parameter(centroids, requires_grad=not is_int8)
        for key in ("centroid_scale", "centroid_zero_point"):
            self._buffers.pop(key, None)
            self.__dict__.pop(key, None)
        if is_int8:
            if scale.numel() != 1 or not bool(scale.float().gt(0).all()):
                raise ValueError(f"{name}: centroid_scale must be one positive value, got {scale.tolist()}")
            zp = torch.zeros(1, dtype=torch.int32) if zero_point is None else zero_point
            self.register_buffer("centroid_scale", scale.detach().float().reshape(1).to(centroids.device).clone())
            self.register_buffer("centroid_zero_point", zp.detach().to(centroids.device, torch.int32).reshape(1))
        else:
            self.centroid_scale = self.centroid_zero_point = None

    def quantize_centroids_(self, bits: int = 8) -> PQLayer:
        """Store the centroids as int8 on a ``bits``-bit grid (2..8; affine, one scale and zero point, from
        torchao's min/max observer), in place: iPQ & int8. The decoded weight becomes the centroids' fake
        quantization. Returns ``self``. Raises ValueError for ``bits`` outside 2..8 or int8 centroids already."""
        from ...scalar.qparams import QuantGrid, observe

        if self.centroids.dtype == torch.int8:
            raise ValueError(f"{type(self).__name__}: the centroids are int8 already")
        qparams = observe(self.centroids.detach(), QuantGrid(bits, "tensor"), name="centroids")
        codes, zero_point = qparams.to_int8(self.centroids.reshape(1, -1))
        self._set_centroids(codes.view(self.centroids.shape), qparams.scale, zero_point)
        return self

    @property
    def block_size(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    def _check_codes(self, codes: Tensor) -> None:
        name = type(self).__name__
        expected = (self.weight_shape[0], row_length(self.weight_shape) // self.block_size)
        if tuple(codes.shape) != expected:
            shape = tuple(codes.shape)
            raise ValueError(f"{name}: codes must have shape {expected} [out, row/block_size], got {shape}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"{name}: codes must be an integer tensor, got dtype {codes.dtype}")
        if (
            codes.numel()
            and codes.device.type != "meta"
            and (int(codes.min()) < 0 or int(codes.max()) >= self.n_centroids)
        ):
            raise ValueError(
                f"{name}: codes must be in [0, n_centroids={self.n_centroids}), "
                f"got values in [{int(codes.min())}, {int(codes.max())}]"
            )

    def set_codes(self, codes: Tensor) -> None:
        """Replace the codes, given in the interchange layout ``[out, row/block_size]``."""
        self._check_codes(codes)
        codes = codes.detach().to(codes_dtype(self.n_centroids))
        name = "packed_codes" if self._PACKED_CODES else "codes"
        stored = ops.pq_pack_codes(codes) if self._PACKED_CODES else codes.contiguous()
        if name in self._buffers:
            self._buffers[name] = stored.to(self._buffers[name].device)
        else:
            self.register_buffer(name, stored)
        if codes.device.type == "meta":  # no values to count
            self.counts = torch.zeros(self.n_centroids, dtype=torch.int64, device="meta")
        else:
            self.counts = torch.bincount(codes.reshape(-1).long(), minlength=self.n_centroids).to(self.counts.device)

    def interchange_codes(self) -> Tensor:
        """The codes as ``[out, row/block_size]`` (uint8 or int32), the layout files exchange."""
        return ops.pq_unpack_codes(self.packed_codes) if self._PACKED_CODES else self.codes.contiguous()

    def _centroids_for_forward(self) -> Tensor:
        c = self.centroids
        if self.grad_reduction == "mean" and c.requires_grad and torch.is_grad_enabled():
            c = _grad_scaled(c, self.counts)
        return c

    def _codebook_args(self) -> dict[str, Any]:
        """The keyword arguments of the PQ ops describing the codebook: int8 scale and zero point."""
        return {"centroid_scale": self.centroid_scale, "centroid_zero_point": self.centroid_zero_point}

    def extra_repr(self) -> str:
        defaults = inspect.signature(self._FLOAT_MODULE).parameters
        args = []
        for key in self._LAYER_ARGS:
            value = getattr(self, key)
            default = defaults[key].default if key in defaults else inspect.Parameter.empty
            if default is inspect.Parameter.empty or not _is_default(value, default):
                args.append(f"{key}={value}")
        return ", ".join(
            args
            + [
                f"block_size={self.block_size}, n_centroids={self.n_centroids}, centroid_dtype={self.centroids.dtype}",
                f"bias={self.bias is not None}, grad_reduction={self.grad_reduction}",
            ]
        )

    # ------------------------------------------------------------------------------------------ conversion

    @classmethod
    def config_of(cls, module: nn.Module) -> dict[str, Any]:
        """The layer arguments ``_LAYER_ARGS`` of ``module`` (the dense layer or a PQ layer of this class).

        Plain Python values (tuples as lists): what files store and :meth:`from_config` takes.
        """
        return {key: _plain(getattr(module, key)) for key in cls._LAYER_ARGS}

    def config(self) -> dict[str, Any]:
        """This layer's arguments (see :meth:`config_of`); with the codebook and bias, all it takes to rebuild it."""
        return self.config_of(self)

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        centroids: Tensor,
        codes: Tensor,
        bias: Tensor | None = None,
        *,
        grad_reduction: str = "sum",
        centroid_scale: Tensor | None = None,
        centroid_zero_point: Tensor | None = None,
    ) -> PQLayer:
        """Build a layer from :meth:`config`, centroids ``[K, bs]`` (dtype kept), interchange codes and a bias
        (int8 centroids: with their ``centroid_scale`` and ``centroid_zero_point``).

        Raises:
            ValueError: ``config`` has keys that are not layer arguments, or a bias for a layer without one.
        """
        unknown = sorted(set(config) - set(cls._LAYER_ARGS))
        if unknown:
            raise ValueError(f"{cls.__name__}: config has unknown keys {unknown}; expected {list(cls._LAYER_ARGS)}")
        args = _constructor_args(config)
        if cls._HAS_BIAS:
            args["bias"] = bias
        elif bias is not None:
            raise ValueError(f"{cls.__name__}: takes no bias, got one of shape {tuple(bias.shape)}")
        layer = cls(centroids.float() if centroids.dtype == torch.int8 else centroids, codes, **args,
                    grad_reduction=grad_reduction)  # fmt: skip
        if centroids.dtype == torch.int8:
            layer._set_centroids(centroids.detach().clone(), centroid_scale, centroid_zero_point)
        return layer

    @classmethod
    def _check_float_module(cls, module: nn.Module) -> None:
        """Raise if ``module`` cannot become a layer of this class (a subclass adds what it cannot honour)."""
        if not isinstance(module, cls._FLOAT_MODULE):
            raise TypeError(
                f"{cls.__name__}.from_float: module must be a {cls._FLOAT_MODULE.__name__}, got {type(module).__name__}"
            )

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        block_size: int,
        n_centroids: int = 256,
        *,
        n_iter: int = 20,
        eps: float = 1e-6,
        max_tentatives: int = 30,
        seed: int | None = None,
        centroid_dtype: torch.dtype = torch.float16,
        h: Tensor | None = None,
    ) -> PQLayer:
        """Quantize ``module.weight`` with iPQ (k-means over its blocks, ``pq.PQ``) into a layer of this class.

        Keeps the module's layer arguments (``config_of``) and bias. Centroids are computed in float32 and
        stored as ``centroid_dtype``. ``n_iter``, ``eps``, ``max_tentatives`` and ``seed`` go to k-means; ``h``
        (the block columns' input second moments, ``pq.calibration``) makes it activation-aware.

        Raises:
            TypeError: ``module`` is not a ``_FLOAT_MODULE``.
            ValueError: ``block_size`` does not divide the weight's row, or what k-means refuses.
        """
        cls._check_float_module(module)
        check_block_size(block_size, tuple(module.weight.shape), f"{cls.__name__}.from_float")
        pq = PQ(
            module.weight.detach().float(),
            block_size,
            n_centroids=n_centroids,
            n_iter=n_iter,
            eps=eps,
            max_tentatives=max_tentatives,
            seed=seed,
            h=h,
        )
        codes, centroids = pq.encode()
        bias = getattr(module, "bias", None) if cls._HAS_BIAS else None
        return cls.from_config(
            cls.config_of(module), centroids.to(centroid_dtype), codes, None if bias is None else bias.detach()
        )

    def _dense_weight(self) -> Tensor:
        half = (torch.float16, torch.bfloat16, torch.int8)
        dtype = torch.float32 if self.centroids.dtype in half else self.centroids.dtype
        with torch.no_grad():
            return ops.pq_decode(
                self.interchange_codes(), self.centroids, self.weight_shape, out_dtype=dtype, **self._codebook_args()
            )

    def to_dense(self) -> nn.Module:
        """The ``_FLOAT_MODULE`` holding the decoded weight (float32 for half centroids) and the bias."""
        weight = self._dense_weight()
        args = _constructor_args(self.config())
        if self._HAS_BIAS:
            args["bias"] = self.bias is not None
        dense = torch.nn.utils.skip_init(self._FLOAT_MODULE, **args, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

"""``SizeTracker``: fairseq's iPQ compression bookkeeping, plus the bytes the model really holds.

fairseq's accounting (kept number for number, fields in MB = 2**20 bytes): the original size is
``4 bytes x numel`` of every parameter; each quantized layer then moves ``4 x numel(W)`` out of the
"other" bucket and adds ``log2(K) / block_size`` bits per weight of indices and ``K x block_size x 2`` bytes
of fp16 centroids. That is a theoretical figure (exact for K = 256 only). :meth:`SizeTracker.held_bytes` counts
what the model holds right now: codes as stored, centroids in their dtype, biases and every other
parameter and buffer, each storage once (tied weights are not counted twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from .registry import is_pq_layer

__all__ = ["SizeTracker", "HeldBytes", "held_bytes"]

_MB = 1024 * 1024


@dataclass(frozen=True)
class HeldBytes:
    """Bytes held by a model: PQ codes (and other PQ layer buffers), PQ centroids, everything else."""

    codes: int
    centroids: int
    other: int

    @property
    def total(self) -> int:
        return self.codes + self.centroids + self.other


def _key(t: Tensor) -> tuple:
    return (t.device.type, t.data_ptr(), t.numel(), t.dtype)


def held_bytes(model: nn.Module) -> HeldBytes:
    """Bytes of every parameter and buffer of ``model``, each tensor counted once, split into buckets.

    Within a PQ layer the ``centroids`` (with their scale and zero point when int8) count as
    centroids, its ``bias`` as other, and its remaining buffers (the codes, in whatever layout the layer
    stores them) as codes.
    """
    seen: set[tuple] = set()
    buckets = {"codes": 0, "centroids": 0, "other": 0}
    # unpacked() makes new tensors: kept alive, so a freed one's address is not reused as a "seen" key
    alive: list[Tensor] = []

    def add(t: Tensor | None, bucket: str) -> None:
        if t is None:
            return
        k = _key(t)
        if k in seen:
            return
        seen.add(k)
        buckets[bucket] += t.numel() * t.element_size()

    for module in model.modules():
        if is_pq_layer(module):
            add(module.centroids, "centroids")
            add(getattr(module, "centroid_scale", None), "centroids")  # int8 centroids: scale, zero point
            add(getattr(module, "centroid_zero_point", None), "centroids")
            for buf in module.buffers(recurse=False):
                add(buf, "codes")
    for module in model.modules():
        for t in module.parameters(recurse=False):
            add(t, "other")
        for t in module.buffers(recurse=False):
            add(t, "other")
        # scalar.Int8Linear holds its int8 weight in fbgemm's packed object, not as a tensor
        unpacked = getattr(module, "unpacked", None)
        if callable(unpacked):
            for t in unpacked():
                alive.append(t)
                add(t, "other")
    return HeldBytes(**buckets)


class SizeTracker:
    """Compression statistics of a model quantized stage by stage (fairseq's ``SizeTracker``).

    Args:
        model: the dense model, before any quantization.

    Attributes (fairseq's, in MB):
        size_non_compressed_model: ``4 x numel`` of all parameters at construction.
        size_non_quantized: the part not quantized yet (starts equal to the above).
        size_index: indices, ``log2(K) / block_size`` bits per quantized weight.
        size_centroids: ``K x block_size x 2`` bytes (fp16) per quantized layer (x 1 for int8 centroids).
        n_quantized_layers: number of :meth:`update` calls.
        original_held: :class:`HeldBytes` of the model at construction (true bytes, buffers included).

    ``str(tracker)`` prints the true bytes held now, then fairseq's line, which ends with
    ``compression ratio: 27.00x`` (two ``Linear(512, 512)``, block 8, K 256).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"SizeTracker: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.size_non_compressed_model = self.compute_size()
        self.size_non_quantized = self.size_non_compressed_model
        self.size_index = 0.0
        self.size_centroids = 0.0
        self.n_quantized_layers = 0
        self.original_held = held_bytes(model)

    def compute_size(self) -> float:
        """fairseq's model size in MB: 4 bytes per parameter element (buffers ignored)."""
        return sum(p.numel() for p in self.model.parameters()) * 4 / _MB

    def update(self, W: Tensor, block_size: int, n_centroids: int, centroid_bytes: int = 2) -> None:
        """Account for one quantized layer of weight ``W`` (fairseq's formula, fractional bits allowed).

        ``centroid_bytes``: bytes per centroid entry, 2 (fp16, fairseq's assumption) or 1 (int8 centroids).

        Raises:
            TypeError: ``W`` is not a tensor.
            ValueError: ``block_size``, ``n_centroids`` or ``centroid_bytes`` is not a positive int.
        """
        if not isinstance(W, Tensor):
            raise TypeError(f"SizeTracker.update: W must be a tensor, got {type(W).__name__}")
        for name, value in (
            ("block_size", block_size),
            ("n_centroids", n_centroids),
            ("centroid_bytes", centroid_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SizeTracker.update: {name} must be a positive int, got {value!r}")
        bits_per_weight = math.log2(n_centroids) / block_size
        self.n_quantized_layers += 1
        self.size_index += bits_per_weight * W.numel() / 8 / _MB
        self.size_centroids += n_centroids * block_size * centroid_bytes / _MB
        self.size_non_quantized -= W.numel() * 4 / _MB

    @property
    def size_compressed(self) -> float:
        """fairseq's compressed size in MB: indices + centroids + the rest."""
        return self.size_index + self.size_centroids + self.size_non_quantized

    @property
    def compression_ratio(self) -> float:
        """fairseq's ratio: original / compressed (theoretical); 1.0 for a model without parameters."""
        if self.size_compressed == 0:
            return 1.0
        return self.size_non_compressed_model / self.size_compressed

    def held_bytes(self) -> HeldBytes:
        """True bytes the model holds now (see :func:`held_bytes`)."""
        return held_bytes(self.model)

    @property
    def held_compression_ratio(self) -> float:
        """True bytes held at construction / true bytes held now."""
        return self.original_held.total / max(self.held_bytes().total, 1)

    def fairseq_line(self) -> str:
        """The line fairseq prints, number for number."""
        return (
            f"Non-compressed model size: {self.size_non_compressed_model:.2f} MB. "
            f"After quantizing {self.n_quantized_layers} layers, size "
            f"(indexing + centroids + other): {self.size_index:.2f} MB + "
            f"{self.size_centroids:.2f} MB + {self.size_non_quantized:.2f} MB = "
            f"{self.size_compressed:.2f} MB, compression ratio: {self.compression_ratio:.2f}x"
        )

    def __repr__(self) -> str:
        now = self.held_bytes()
        held = (
            f"Held in memory (parameters + buffers, MiB = 2**20 bytes): "
            f"{self.original_held.total / _MB:.4f} MiB dense ({self.original_held.total} bytes) -> "
            f"{now.codes / _MB:.4f} MiB codes + {now.centroids / _MB:.4f} MiB centroids + "
            f"{now.other / _MB:.4f} MiB other = {now.total / _MB:.4f} MiB ({now.total} bytes), "
            f"held ratio: {self.original_held.total / max(now.total, 1):.2f}x"
        )
        return held + "\n" + self.fairseq_line()

    __str__ = __repr__

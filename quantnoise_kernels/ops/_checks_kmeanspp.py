"""Argument checks of the k-means++ ops, mirroring ``csrc/host/checks.cpp`` for the fake kernels
(the checks that read data stay in C++)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._blocks import MAX_CENTROIDS
from ._checks import _FLOATS, _check_kmeans_x, _name, _shape, _type, _value

__all__ = ["KMEANSPP_CHUNK", "check_kmeanspp_init_args", "check_kmeanspp_step_args", "check_kmeanspp_sample_args"]

KMEANSPP_CHUNK = 1024  # kKMeansPPChunk (csrc/include/quantnoise/kmeanspp.h): points per chunk weight


def _check_kmeanspp_points(op: str, x: Tensor) -> None:
    _check_kmeans_x(op, x)
    _value(x.dim() == 3, op, lambda: f"x must have 3 dimensions [B, N, D], got shape {_shape(x.shape)}")


def _same_device(op: str, ref_name: str, ref: Tensor, name: str, t: Tensor) -> None:
    _value(t.device == ref.device, op, lambda: f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def check_kmeanspp_init_args(x: Tensor, first: Tensor, uniforms: Tensor) -> None:
    """``csrc/host/checks.cpp``; the value checks (first's range, uniforms' range, finite x) read data."""
    op = "kmeanspp_init"
    _check_kmeanspp_points(op, x)
    batch, n = x.shape[0], x.shape[1]
    _type(first.dtype == torch.int64, op, lambda: f"first must be int64, got dtype {_name(first.dtype)}")
    _type(uniforms.dtype == torch.float64, op, lambda: f"uniforms must be float64, got dtype {_name(uniforms.dtype)}")
    _value(
        first.dim() == 1 and first.shape[0] == batch,
        op,
        lambda: f"first must have shape [B] = [{batch}], got {_shape(first.shape)}",
    )
    _value(
        uniforms.dim() == 2 and uniforms.shape[0] == batch,
        op,
        lambda: f"uniforms must have shape [B, K-1] with B={batch}, got {_shape(uniforms.shape)}",
    )
    _value(
        uniforms.shape[1] < MAX_CENTROIDS,
        op,
        lambda: (
            f"uniforms must hold at most {MAX_CENTROIDS - 1} draws per problem (K <= {MAX_CENTROIDS}), "
            f"got {uniforms.shape[1]}"
        ),
    )
    _same_device(op, "x", x, "first", first)
    _same_device(op, "x", x, "uniforms", uniforms)
    _value(batch == 0 or n >= 1, op, lambda: f"x must hold at least one point per problem, got shape {_shape(x.shape)}")


def check_kmeanspp_step_args(x: Tensor, dmin: Tensor, centroid: Tensor) -> None:
    op = "kmeanspp_step"
    _check_kmeanspp_points(op, x)
    _type(dmin.dtype == torch.float32, op, lambda: f"dmin must be float32, got dtype {_name(dmin.dtype)}")
    _type(centroid.dtype in _FLOATS, op, lambda: f"centroid must be a float tensor, got dtype {_name(centroid.dtype)}")
    _value(
        dmin.dim() == 2 and dmin.shape[0] == x.shape[0] and dmin.shape[1] == x.shape[1],
        op,
        lambda: f"dmin must have shape [B, N] = [{x.shape[0]}, {x.shape[1]}], got {_shape(dmin.shape)}",
    )
    _value(
        centroid.dim() == 2 and centroid.shape[0] == x.shape[0] and centroid.shape[1] == x.shape[2],
        op,
        lambda: f"centroid must have shape [B, D] = [{x.shape[0]}, {x.shape[2]}], got {_shape(centroid.shape)}",
    )
    _same_device(op, "x", x, "dmin", dmin)
    _same_device(op, "x", x, "centroid", centroid)


def check_kmeanspp_sample_args(dmin: Tensor, chunk_weights: Tensor, target: Tensor) -> None:
    """``csrc/host/checks.cpp``; target >= 0 reads data."""
    op, cw = "kmeanspp_sample", chunk_weights
    _type(dmin.dtype == torch.float32, op, lambda: f"dmin must be float32, got dtype {_name(dmin.dtype)}")
    _type(cw.dtype == torch.float64, op, lambda: f"chunk_weights must be float64, got dtype {_name(cw.dtype)}")
    _type(target.dtype == torch.float64, op, lambda: f"target must be float64, got dtype {_name(target.dtype)}")
    _value(dmin.dim() == 2, op, lambda: f"dmin must have 2 dimensions [B, N], got shape {_shape(dmin.shape)}")
    batch, n_chunks = dmin.shape[0], (dmin.shape[1] + KMEANSPP_CHUNK - 1) // KMEANSPP_CHUNK
    _value(
        cw.dim() == 2 and cw.shape[0] == batch and cw.shape[1] == n_chunks,
        op,
        lambda: (
            f"chunk_weights must have shape [B, ceil(N / {KMEANSPP_CHUNK})] = [{batch}, {n_chunks}], "
            f"got {_shape(cw.shape)}"
        ),
    )
    _value(
        target.dim() == 1 and target.shape[0] == batch,
        op,
        lambda: f"target must have shape [B] = [{batch}], got {_shape(target.shape)}",
    )
    _same_device(op, "dmin", dmin, "chunk_weights", cw)
    _same_device(op, "dmin", dmin, "target", target)

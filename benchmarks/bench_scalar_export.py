"""Real int8 export: ``scalar.to_int8``'s ``Int8Linear`` against fp32/bf16 dense and every other int8 path.

``Linear(4096, 4096)`` at batch 1, 16, 256, rotating over 8 distinct layers (the fp32 weights,
512 MiB, do not fit in any L3), side by side in interleaved rounds. The candidates measured for
the export (issue 8 item 6): fbgemm's dynamic int8 GEMM (``torch.ops.quantized.linear_dynamic``,
what torch.ao's dynamic quantized Linear calls; ours wraps it), ``torch.ops.aten._weight_int8pack_mm``
(int8 weights, bf16 activations), ``torch._int_mm`` (int8 x int8, per-token activations), and
torchao's ``Int8WeightOnlyConfig`` / ``Int8DynamicActivationInt8WeightConfig``. Also the file size.
"""

from __future__ import annotations

import copy
import io
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import Case, compare, make_row
from quantnoise_kernels import scalar as sq

LAYERS = 8
TARGETS = {1: 2.5, 16: 1.5, 256: 1.5}


def _per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(1).clamp_min(1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _int_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    sx = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    xq = torch.round(x / sx).clamp(-127, 127).to(torch.int8)
    m = xq.shape[0]
    if m <= 16:  # _int_mm wants more than 16 rows
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    return torch._int_mm(xq, q.t())[:m].float() * sx * scale + bias


def _torchao(layers: list[nn.Linear], config_name: str) -> list[nn.Module] | None:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
    except ImportError:
        return None
    out = [copy.deepcopy(layer) for layer in layers]
    for layer in out:
        tq.quantize_(nn.Sequential(layer), getattr(tq, config_name)())
    return out


def _cases(layers: list[nn.Linear], exported: list[nn.Module], x: torch.Tensor, i: list[int]) -> dict[str, Case]:
    def rotating(fn):
        def run():
            i[0] = (i[0] + 1) % len(layers)
            return fn(i[0])

        return run

    w = [layer.weight.detach() for layer in layers]
    b = [layer.bias.detach() for layer in layers]
    w_bf16 = [t.bfloat16() for t in w]
    q = [_per_channel_int8(t) for t in w]
    cases = {
        "Int8Linear (ours: fbgemm dynamic int8)": Case(rotating(lambda k: exported[k](x)), "ours"),
        "dense fp32 F.linear": Case(rotating(lambda k: F.linear(x, w[k], b[k]))),
        "dense bf16 F.linear": Case(rotating(lambda k: F.linear(x.bfloat16(), w_bf16[k], b[k].bfloat16()))),
        "_weight_int8pack_mm (int8 W, bf16 x)": Case(
            rotating(lambda k: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q[k][0], q[k][1].bfloat16()))
        ),
        "torch._int_mm (int8 W, int8 x per token)": Case(rotating(lambda k: _int_mm(x, q[k][0], q[k][1], b[k]))),
    }
    for config in ("Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"):
        ao = _torchao(layers, config)
        if ao is not None:
            cases[f"torchao {config}"] = Case(rotating(lambda k, ao=ao: ao[k](x)))
    return cases


def _size_rows(n: int) -> list[dict[str, Any]]:
    layer = nn.Sequential(nn.Linear(n, n))
    dense = io.BytesIO()
    torch.save(layer.state_dict(), dense)
    sq.quantize_model_(layer, method="channel", quantize_activations=False)
    int8 = io.BytesIO()
    torch.save(sq.to_int8(layer).state_dict(), int8)
    ratio = dense.tell() / int8.tell()
    group = f"saved file, Linear({n}, {n}) state_dict"
    note = f"{int8.tell():,} B vs {dense.tell():,} B fp32: {ratio:.2f}x smaller (target >= 3.9x)"
    return [make_row(group, "to_int8 state_dict (ours)", "ours", note=note, ratio=ratio, target=3.9)]


def rows(quick: bool = False) -> list[dict[str, Any]]:
    n = 512 if quick else 4096
    torch.manual_seed(0)
    layers = [nn.Linear(n, n) for _ in range(2 if quick else LAYERS)]
    exported = []
    for layer in layers:
        model = nn.Sequential(copy.deepcopy(layer))
        sq.quantize_model_(model, method="channel", quantize_activations=False)
        exported.append(sq.to_int8(model, inplace=True)[0])
    out = []
    with torch.no_grad():
        for batch in (1, 16) if quick else (1, 16, 256):
            x = torch.randn(batch, n)
            cases = _cases(layers, exported, x, [0])
            targets = {"dense fp32 F.linear": TARGETS[batch]}
            group = f"int8 export, Linear({n}, {n}) batch {batch}, {len(layers)} layers rotating"
            out += compare(group, cases, params={"batch": batch, "layers": len(layers)}, targets=targets,
                           figure="int8_export", x="batch", rounds=3 if quick else 7)  # fmt: skip
    return out + _size_rows(n)

"""Scalar Quant-Noise (int8/int4) and real int8 export (fairseq ``modules/quantization/scalar``).

Train with ``quantize_model_(model, p, bits, update_step, method)`` (fairseq's signature): every
``nn.Linear``/``nn.Embedding``/``nn.Conv2d`` becomes an Int layer sharing its parameters, whose
training forwards fake-quantize a fraction ``p`` of the weight (the fused ``fake_quant`` noise
kernel) and whose eval is fully fake-quantized; then ``to_int8(model)`` gives real int8 layers
for CPU inference. Quantization parameters come from torchao's observers on the real int-N grid.
"""

from __future__ import annotations

from .activation import ActivationQuantizer
from .export import Int8Conv2d, Int8Embedding, Int8Linear, to_int8
from .functional import fake_quant_noise, fake_quant_noise_linear
from .modules import IntConv2d, IntEmbedding, IntLinear, IntModule
from .pipeline import quantize_model_
from .qparams import QParams, QuantGrid, observe

__all__ = [
    "IntLinear",
    "IntConv2d",
    "IntEmbedding",
    "IntModule",
    "ActivationQuantizer",
    "quantize_model_",
    "to_int8",
    "Int8Linear",
    "Int8Embedding",
    "Int8Conv2d",
    "fake_quant_noise",
    "fake_quant_noise_linear",
    "QuantGrid",
    "QParams",
    "observe",
]

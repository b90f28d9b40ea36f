"""``ActivationQuantizer``: scalar Quant-Noise on a module's output (fairseq ``scalar/modules/qact.py``)."""

from __future__ import annotations

from torch import Tensor, nn

from .functional import fake_quant_noise
from .qparams import QParamsCache, QParamsCacheViews, QuantGrid, check_p

__all__ = ["ActivationQuantizer"]


class ActivationQuantizer(QParamsCacheViews):
    """Fake-quantizes the output of ``module`` through a forward hook (fairseq's signature).

    In training a fraction ``p`` of the output entries is fake-quantized and every entry is clamped
    to the grid's range (gradient: straight-through times the clamp mask); in eval the whole
    output is fake-quantized (``p = 1``). The parameters are observed on the output of the first
    call and then every ``update_step`` calls (fairseq: from one batch). Per tensor only
    (``method="channel"`` would give one scale per batch row). ``clamp_threshold`` is kept for
    fairseq compatibility and unused, as in fairseq.

    Args:
        module: the module whose output is quantized (a hook is registered; ``self.handle``).
        p: noise rate in training, in ``[0, 1]``.
        update_step, bits, method: as the Int layers (``method`` "histogram" or "tensor").
        clamp_threshold: unused.
    """

    def __init__(
        self,
        module: nn.Module,
        p: float = 1.0,
        update_step: int = 1000,
        bits: int = 8,
        method: str = "histogram",
        clamp_threshold: float = 5,
    ) -> None:
        if method == "channel":
            raise ValueError("ActivationQuantizer: method must be 'histogram' or 'tensor', got 'channel'")
        self.p = check_p(p)
        self.clamp_threshold = clamp_threshold
        self._qcache = QParamsCache(QuantGrid(bits, method), update_step)
        self.handle = module.register_forward_hook(self._hook)

    def qparams(self):
        """The cached parameters (``None`` before the first call)."""
        return self._qcache.qparams

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> Tensor:
        if output.numel() == 0:
            return output
        p = self.p if module.training else 1.0
        qparams = self._qcache(output, name=f"output of {type(module).__name__}")
        return fake_quant_noise(output.reshape(1, -1), p, qparams).view_as(output)

    def attach(self, module: nn.Module) -> ActivationQuantizer:
        """Move the hook to ``module`` (keeps the cached parameters and the counter)."""
        self.handle.remove()
        self.handle = module.register_forward_hook(self._hook)
        return self

    def remove(self) -> None:
        """Remove the hook."""
        self.handle.remove()

"""``quantize_model_`` on fairseq's example model (two ``Linear(512, 512)``, block 8, K 256, n_iter 15).

Target: < 2 s. fairseq's own ``quantize_model_`` on this model took 53-63 s on this machine (2 threads, two runs;
``shared/reference/fairseq-quant-noise.md`` part (d).5): about 55 s. Running it here each time would cost a
minute, so the baseline group times ONE iteration of fairseq's EM (``reference.ipq_em_iteration_fairseq``, a
lower bound: no empty-cluster repair passes) on both layers against one iteration of ours; multiply the
baseline by 15 for an extrapolated (optimistic) fairseq ``quantize_model_`` time.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantnoise_kernels import reference
from quantnoise_kernels.pq import PQ, SizeTracker, quantize_model_

BLOCKS = {"Linear": ("in_features", {"*": 8})}
CENTROIDS = {"Linear": ("in_features", {"*": 256})}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))


def test_quantize_model_fairseq_example(benchmark):
    """Whole pipeline, fairseq defaults (n_iter=15): layer selection, k-means, PQ layers, size tracking."""
    benchmark.group = "quantize_model_ 2x Linear(512,512) bs8 K256 n_iter=15 (fairseq: ~55 s measured)"
    benchmark.extra_info["role"] = "ours"
    models = iter([_model() for _ in range(20)])

    def run():
        model = next(models)
        tracker = SizeTracker(model)
        quantize_model_(
            model, tracker, [r"\d"], BLOCKS, CENTROIDS, n_iter=15, verbose=False, seed=0, centroid_dtype=torch.float16
        )
        return tracker

    tracker = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["size_tracker"] = str(tracker)


@pytest.mark.parametrize("impl", ["ours", "fairseq_em"])
def test_one_em_iteration(benchmark, impl):
    """One k-means iteration on both layers' blocks (2 x 32768 vectors of 8, K 256)."""
    benchmark.group = "one EM iteration, 2 x (32768 x 8) blocks, K=256 (fairseq x15 = extrapolated quantize_model_)"
    weights = [m.weight.detach() for m in _model()]
    if impl == "ours":
        benchmark.extra_info["role"] = "ours"

        def run():
            for w in weights:
                PQ(w, 8, n_centroids=256, n_iter=1, seed=0).encode()

        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    else:
        benchmark.extra_info["role"] = "baseline"
        g = torch.Generator().manual_seed(0)
        # fairseq's PQ reshape: (out, in/bs, bs) -> (bs, in/bs, out) -> columns are the blocks
        cols = [w.reshape(512, 64, 8).permute(2, 1, 0).reshape(8, -1).contiguous() for w in weights]
        inits = [c[:, torch.randint(0, c.shape[1], (256,), generator=g)].t().contiguous() for c in cols]

        def run():
            for c, init in zip(cols, inits):
                reference.ipq_em_iteration_fairseq(c, init)

        benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info["extrapolated_quantize_model_s"] = benchmark.stats.stats.median * 15

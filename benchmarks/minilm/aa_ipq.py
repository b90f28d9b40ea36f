"""Activation-aware iPQ on MiniLM (issue 10), measured side by side with plain iPQ.

For every Linear layer of the MiniLM iPQ configuration (the demo's ``minilm_ipq.yaml``), both k-means runs see
the same blocks, K, seed and iterations (so the same bytes): plain EM on the weights, and activation-aware EM
with ``H`` captured on the calibration sentences (``pq.calibration``). Each quantized weight is then scored in
isolation on *held-out* sentences, the dense model supplying every layer's input: relative output error
``||X (W - W_q)^T|| / ||X W^T||``. Then one EM iteration of each kind is timed on the largest layer
(interleaved rounds; median and min). ``python -m benchmarks.minilm.aa_ipq [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.minilm import demo, measure
from quantnoise_kernels import _C, hf, ops, pq
from quantnoise_kernels.clustering import kmeans
from quantnoise_kernels.clustering_weighted import weighted_centroids
from quantnoise_kernels.pq.calibration import run_calibration
from quantnoise_kernels.pq.quantizer import weight_to_blocks


class _OutputError:
    """Forward hook: sums ``||x dW^T||^2`` per quantized weight and ``||x W^T||^2`` over the held-out inputs."""

    def __init__(self, weight: torch.Tensor, quantized: dict[str, torch.Tensor]) -> None:
        self.weight, self.deltas = weight, {k: weight - w for k, w in quantized.items()}
        self.err = dict.fromkeys(quantized, 0.0)
        self.ref = 0.0

    def __call__(self, _m, args, _out) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        self.ref += float((x @ self.weight.t()).square().sum())
        for k, d in self.deltas.items():
            self.err[k] += float((x @ d.t()).square().sum())


def _quantize(weight, block_size, k, n_iter, h=None):
    blocks = weight_to_blocks(weight, block_size)
    run = kmeans(blocks, k, n_iter=n_iter, seed=0, h=h)
    return run.centroids[run.codes].reshape(weight.shape)


def _time_iteration(weight, block_size, k, h, rounds):
    x = weight_to_blocks(weight, block_size)[None].contiguous()
    c = x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))[:k]].contiguous()
    hb = h[None]

    def plain():
        codes, _ = ops.kmeans_assign(x, c)
        sums, counts = ops.kmeans_update(x, codes, k)
        return sums / counts.clamp(min=1)[..., None]

    def aware():
        codes, _ = ops.kmeans_assign_weighted(x, c, hb)
        return weighted_centroids(ops.kmeans_update_weighted(x, codes, hb, k), c)

    times = {"plain": [], "aware": []}
    for fn in (plain, aware):
        fn()
    for _ in range(rounds):
        for name, fn in (("plain", plain), ("aware", aware)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {n: (statistics.median(t), min(t)) for n, t in times.items()}


def run(args) -> None:
    settings = demo.QUICK if args.quick else demo.FULL
    print(f"machine: {measure.machine()}, ISA path {_C.cpu_isa()}")
    dense, tokenizer = hf.load_encoder(demo.find_minilm(), progress=False)
    dense.requires_grad_(False).eval()
    train, held = demo._split(settings)
    train_batches = hf.tokenize(tokenizer, train, batch_size=16)
    held_batches = hf.tokenize(tokenizer, held, batch_size=64)
    config = pq.load_config_yaml(args.config or demo.recipes.LINEAR_YAML)
    layers = [x for stage in pq.plan_stages(dense, config) for x in stage]
    modules = {x.name: dense.get_submodule(x.name) for x in layers}
    hs = run_calibration(dense, [(x.name, modules[x.name], x.block_size) for x in layers], train_batches, args.h)
    hooks, errors = [], {}
    for x in layers:
        w = modules[x.name].weight.detach().float()
        quantized = {
            "plain": _quantize(w, x.block_size, x.n_centroids, args.n_iter),
            "aware": _quantize(w, x.block_size, x.n_centroids, args.n_iter, hs[x.name]),
        }
        errors[x.name] = _OutputError(w, quantized)
        hooks.append(modules[x.name].register_forward_hook(errors[x.name]))
    try:
        hf.embed_sentences(dense, held_batches)
    finally:
        for hook in hooks:
            hook.remove()
    rel = {k: [(e.err[k] / e.ref) ** 0.5 for e in errors.values()] for k in ("plain", "aware")}
    for x, p, a in zip(layers, rel["plain"], rel["aware"]):
        print(f"{x.name:45s} bs={x.block_size} plain {p:.4f} aware {a:.4f} ({1 - a / p:+.0%})")
    mp, ma = statistics.mean(rel["plain"]), statistics.mean(rel["aware"])
    print(
        f"mean relative output error over {len(layers)} Linear layers: plain {mp:.4f}, activation-aware {ma:.4f} "
        f"({1 - ma / mp:.1%} lower); held-out {len(held)} sentences, calibration {len(train)}"
    )
    big = max(layers, key=lambda x: x.n_weights)
    timing = _time_iteration(
        modules[big.name].weight.detach().float(), big.block_size, big.n_centroids, hs[big.name], args.rounds
    )
    (pm, pn), (am, an) = timing["plain"], timing["aware"]
    print(
        f"one EM iteration on {big.name} ({tuple(modules[big.name].weight.shape)}, bs={big.block_size}, "
        f"K={big.n_centroids}): plain {pm:.1f} ms (min {pn:.1f}), activation-aware {am:.1f} ms (min {an:.1f}); "
        f"ratio {am / pm:.2f}x median, {an / pn:.2f}x min; threads {torch.get_num_threads()}, "
        f"load {measure.machine()['loadavg']}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.minilm.aa_ipq", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", help="iPQ YAML (default: the demo's Linear configuration)")
    p.add_argument("--h", default="full", choices=("full", "diag"))
    p.add_argument("--n-iter", type=int, default=15)
    p.add_argument("--rounds", type=int, default=7)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""iPQ pipeline: config, get_layers/get_param, quantize_model_ (stages, tied weights, distributed), SizeTracker."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dist_worker import finish_worker
from torch import nn

from quantnoise_kernels import pq, reference
from quantnoise_kernels.pq import (
    PQConv2d,
    PQEmbedding,
    PQLinear,
    SizeTracker,
    get_layers,
    get_param,
    load_config_yaml,
    quantize_model_,
)

LINEAR_8 = {"Linear": ("in_features", {"*": 8})}
K_16 = {
    "Linear": ("in_features", {"*": 16}),
    "Embedding": ("embedding_dim", {"*": 16}),
    "Conv2d": ("groups", {"*": 16}),
}

# fairseq's examples/quant_noise/transformer_quantization_config.yaml, as shipped (doubled backslashes).
FAIRSEQ_YAML = (Path(__file__).parent / "data" / "transformer_quantization_config.yaml").read_text()


class Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))


class Block(nn.Module):
    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = Attn(d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.layer_norm = nn.LayerNorm(d)


class Decoder(nn.Module):
    """fairseq-like names: decoder.layers.N.{fc1,fc2,self_attn.*}, decoder.embed_tokens."""

    def __init__(self, vocab: int = 40, d: int = 16, ffn: int = 32, n_layers: int = 2, tie: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d, padding_idx=1)
        self.layers = nn.ModuleList(Block(d, ffn) for _ in range(n_layers))
        self.output_projection = nn.Linear(d, vocab, bias=False)
        if tie:
            self.output_projection.weight = self.embed_tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            a = layer.self_attn
            x = x + a.out_proj(a.v_proj(x) + a.q_proj(x) * a.k_proj(x).sigmoid())
            x = layer.layer_norm(x + layer.fc2(F.relu(layer.fc1(x))))
        return self.output_projection(x)


class Model(nn.Module):
    def __init__(self, tie: bool = False) -> None:
        super().__init__()
        self.decoder = Decoder(tie=tie)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens)


def _dense_copy(model: nn.Module) -> nn.Module:
    """The model with every PQ layer replaced by its dense decoding (the reference forward)."""
    import copy

    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, (PQLinear, PQConv2d, PQEmbedding)):
            pq.pipeline.replace_module(dense, name, module.to_dense())
    return dense


def _assert_is_codebook_decoding(layer: nn.Module) -> None:
    """Every block of the decoded weight is the centroid its code names (checked from the interchange codes)."""
    w = layer.to_dense().weight.detach()
    codes = layer.interchange_codes().long()
    blocks = w.reshape(w.shape[0], -1, layer.block_size)
    expected = layer.centroids.detach().float()[codes]
    torch.testing.assert_close(blocks.float(), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# config


def test_load_config_yaml_defaults_are_fairseqs():
    config = load_config_yaml()
    assert config["n_centroids"] == {"Linear": ("in_features", {"*": 256}), "Embedding": ("embedding_dim", {"*": 256})}
    assert config["block_sizes"]["Linear"] == ("fuzzy_name", {"fc": 8, "attn": 4, "emb": 4})
    assert config["block_sizes"]["Embedding"] == ("fuzzy_name", {"emb": 8})
    assert re.match(config["layers_to_quantize"][0], "decoder.layers.11.fc2")
    assert config == load_config_yaml({})


def test_load_config_yaml_fairseq_example_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(FAIRSEQ_YAML)
    for source in (path, str(path), FAIRSEQ_YAML):
        config = load_config_yaml(source)
        assert config == load_config_yaml(), "the example file equals the built-in defaults"
    stages = config["layers_to_quantize"]
    assert re.match(stages[0], "decoder.layers.3.fc1")
    assert re.match(stages[1], "decoder.embed_tokens.embeddings.2.1")
    assert re.match(stages[2], "decoder.layers.0.self_attn.v_proj")
    literal = load_config_yaml(FAIRSEQ_YAML, fix_double_escapes=False)["layers_to_quantize"]
    assert literal[0] == r"decoder\\.layers\\.\d+\\.fc[12]"  # what fairseq applies: matches no real name
    assert not re.match(literal[0], "decoder.layers.3.fc1")


def test_load_config_yaml_partial_keeps_other_defaults():
    config = load_config_yaml("block_sizes:\n  Conv2d: {key: kernel_size, value: {'(3, 3)': 9, '*': 4}}\n")
    assert config["block_sizes"] == {"Conv2d": ("kernel_size", {"(3, 3)": 9, "*": 4})}  # replaced whole
    assert config["n_centroids"] == load_config_yaml()["n_centroids"]
    assert config["layers_to_quantize"] == load_config_yaml()["layers_to_quantize"]
    assert load_config_yaml("layers_to_quantize: fc")["layers_to_quantize"] == ["fc"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("blocks: {}", "unknown top-level keys \\['blocks'\\]"),
        ("block_sizes: {Linear: {key: in_features}}", "exactly the keys 'key' and 'value'"),
        ("block_sizes: {Linear: {key: in_features, value: {'*': 0}}}", "must be a positive integer, got 0"),
        ("block_sizes: {Linear: {key: in_features, value: {'*': 2.5}}}", "must be a positive integer, got 2.5"),
        ("n_centroids: {Linear: [in_features]}", "must be \\(feature"),
        ("layers_to_quantize: ['fc[12']", "not a valid regex"),
        ("- a\n- b", "must be a mapping"),
    ],
)
def test_load_config_yaml_bad_input(text, match):
    with pytest.raises(ValueError, match=match):
        load_config_yaml(text)


# ----------------------------------------------------------------------------------------------
# get_layers / get_param


def test_get_layers_fairseq_rule():
    model = Model()
    names = get_layers(model, r"decoder\.layers\.\d+\.fc[12]")
    assert names == ["decoder.layers.0.fc1", "decoder.layers.0.fc2", "decoder.layers.1.fc1", "decoder.layers.1.fc2"]
    # prefix match: a pattern also selects longer names; biases never appear; LayerNorm weights do
    assert get_layers(model, r"decoder\.layers\.0\.self") == [
        f"decoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]
    assert "decoder.layers.1.layer_norm" in get_layers(model, "decoder")
    assert not any("bias" in n for n in get_layers(model, ".*"))
    # DataParallel-style prefix
    wrapped = nn.Module()
    wrapped.module = model
    assert get_layers(wrapped, r"decoder\.embed")[0] == "module.decoder.embed_tokens"


def test_get_layers_spectral_norm_and_weights_suffix():
    model = nn.Module()
    model.sn = nn.utils.spectral_norm(nn.Linear(8, 8))
    model.block = nn.Module()
    model.block.weights = nn.Parameter(torch.zeros(3))
    assert get_layers(model, "sn") == ["sn"]
    assert get_layers(model, "block") == ["blocks"]  # ".weight" stripped from ".weights" (fairseq's replace)
    assert get_layers(model, "block", remove_weights=True) == ["block"]


def test_get_param_rules():
    lin = nn.Linear(16, 4)
    assert get_param(lin, "x.fc1", {"Linear": ("in_features", {"16": 4, "*": 8})}) == 4
    assert get_param(lin, "x.fc1", {"Linear": ("in_features", {16: 2})}) == 2  # YAML int keys
    assert get_param(lin, "x.fc1", {"Linear": ("in_features", {"32": 4, "*": 8})}) == 8
    fuzzy = {"Linear": ("fuzzy_name", {"fc": 8, "attn": 4, "*": 2})}
    assert get_param(lin, "decoder.layers.0.fc1", fuzzy) == 8
    assert get_param(lin, "decoder.layers.0.self_attn.q_proj", fuzzy) == 4
    assert get_param(lin, "head", fuzzy) == 2
    assert get_param(lin, "fc.attn", {"Linear": ("fuzzy_name", {"attn": 4, "fc": 8})}) == 4  # first key wins
    conv = nn.Conv2d(4, 4, 3)
    assert get_param(conv, "c", {"Conv2d": ("kernel_size", {"(3, 3)": 9, "(1, 1)": 4})}) == 9
    with pytest.raises(KeyError, match="module type Linear is not in the config"):
        get_param(lin, "fc1", {"Conv2d": ("kernel_size", {"*": 9})})
    with pytest.raises(KeyError, match="in_features=16 is not in the config keys"):
        get_param(lin, "fc1", {"Linear": ("in_features", {"32": 4})})
    with pytest.raises(KeyError, match="no fuzzy_name key"):
        get_param(lin, "head", {"Linear": ("fuzzy_name", {"fc": 4})})
    with pytest.raises(KeyError, match="has no attribute 'kernel_size'"):
        get_param(lin, "fc1", {"Linear": ("kernel_size", {"*": 4})})


# ----------------------------------------------------------------------------------------------
# quantize_model_


def test_quantize_model_staged_fairseq_config():
    model = Model()
    dense_out_before = model(torch.tensor([[2, 3, 1, 5]]))
    config = load_config_yaml(FAIRSEQ_YAML)
    config["layers_to_quantize"][1] = r"decoder\.embed_tokens"  # our toy has one embedding table
    n_centroids = {"Linear": ("in_features", {"*": 16}), "Embedding": ("embedding_dim", {"*": 16})}
    blocks = config["block_sizes"]
    tracker = SizeTracker(model)
    names0 = quantize_model_(
        model, tracker, config["layers_to_quantize"], blocks, n_centroids, 0, verbose=False, seed=0
    )
    assert names0 == [f"decoder.layers.{i}.fc{j}" for i in (0, 1) for j in (1, 2)]
    for name in names0:
        layer = model.get_submodule(name)
        assert isinstance(layer, PQLinear) and layer.block_size == 8 and layer.n_centroids == 16
        _assert_is_codebook_decoding(layer)
    assert isinstance(model.decoder.layers[0].self_attn.q_proj, nn.Linear)
    names1 = quantize_model_(model, tracker, config["layers_to_quantize"], blocks, n_centroids, 1, verbose=False)
    assert names1 == ["decoder.embed_tokens"]
    emb = model.decoder.embed_tokens
    assert isinstance(emb, PQEmbedding) and emb.block_size == 8 and emb.padding_idx == 1
    names2 = quantize_model_(model, tracker, config["layers_to_quantize"], blocks, n_centroids, 2, verbose=False)
    assert len(names2) == 8 and all(model.get_submodule(n).block_size == 4 for n in names2)
    assert tracker.n_quantized_layers == 13
    # re-running a stage finds only PQ layers: nothing to do
    assert quantize_model_(model, tracker, config["layers_to_quantize"], blocks, n_centroids, 0, verbose=False) == []
    assert tracker.n_quantized_layers == 13
    tokens = torch.tensor([[2, 3, 1, 5]])
    torch.testing.assert_close(model(tokens), _dense_copy(model)(tokens), rtol=1e-5, atol=1e-5)
    assert model(tokens).shape == dense_out_before.shape


def test_quantize_model_quality_and_bias_copy():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16, bias=False))
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    quantize_model_(model, None, [".*"], {"Linear": ("in_features", {"*": 4})}, {"Linear": ("in_features", {"*": 64})})
    assert torch.equal(model[0].bias.detach(), b0) and model[2].bias is None
    w = model[0].to_dense().weight.detach()
    rel = (w - w0).norm() / w0.norm()
    assert rel < 0.6, f"k-means should reconstruct far better than zero (relative error {rel:.3f})"


def test_quantize_model_conv2d_configs():
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 3, groups=2)
    )
    blocks = {"Conv2d": ("kernel_size", {"(3, 3)": 9, "(1, 1)": 4})}
    names = quantize_model_(model, SizeTracker(model), [r"\d"], blocks, K_16, verbose=False, seed=0)
    assert names == ["0", "1", "2"]
    assert [m.block_size for m in model] == [9, 4, 9]
    assert model[0].padding_mode == "reflect" and model[2].groups == 2
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(model(x), _dense_copy(model)(x), rtol=1e-5, atol=1e-5)


def test_quantize_model_tied_weights_stay_tied():
    model = Model(tie=True)
    tracker = SizeTracker(model)
    blocks = {"Embedding": ("fuzzy_name", {"*": 4}), "Linear": ("fuzzy_name", {"*": 4})}
    names = quantize_model_(model, tracker, [r"decoder\.embed_tokens"], blocks, K_16, verbose=False, seed=0)
    assert names == ["decoder.embed_tokens", "decoder.output_projection"]
    emb, proj = model.decoder.embed_tokens, model.decoder.output_projection
    assert isinstance(emb, PQEmbedding) and isinstance(proj, PQLinear)
    assert emb.centroids is proj.centroids
    assert torch.equal(emb.interchange_codes(), proj.interchange_codes())
    assert torch.equal(emb.to_dense().weight, proj.to_dense().weight)
    assert tracker.n_quantized_layers == 1  # one parameter, one update
    assert sum(1 for n, _ in model.named_parameters() if n.endswith("centroids")) == 1
    # finetuning moves both users of the shared codebook
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([[0, 2, 4]])).sum().backward()
    assert emb.centroids.grad is not None and emb.centroids.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(emb.to_dense().weight, proj.to_dense().weight)


def test_quantize_model_tied_selected_through_second_name_and_shared_module():
    model = Model(tie=True)
    blocks = {"Embedding": ("fuzzy_name", {"*": 4}), "Linear": ("fuzzy_name", {"*": 4})}
    # the tied parameter is listed under its first name only; matching the second name still quantizes both
    names = quantize_model_(model, None, [r"decoder\.output"], blocks, K_16, verbose=False)
    assert sorted(names) == ["decoder.embed_tokens", "decoder.output_projection"]
    assert model.decoder.embed_tokens.centroids is model.decoder.output_projection.centroids
    # one module object under two names -> one PQ layer object under both
    shared = nn.Linear(8, 8)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert quantize_model_(seq, None, ["2"], {"Linear": ("in_features", {"*": 4})}, K_16, verbose=False) == ["0", "2"]
    assert seq[0] is seq[2] and isinstance(seq[0], PQLinear)


def test_quantize_model_errors():
    model = Model()
    blocks = {"Linear": ("in_features", {"*": 8}), "Embedding": ("embedding_dim", {"*": 8})}
    with pytest.raises(ValueError, match="'decoder.layers.0.layer_norm' .* is a LayerNorm"):
        quantize_model_(model, None, [r"decoder\.layers\.0\.(fc1|layer)"], blocks, K_16, verbose=False)
    with pytest.raises(ValueError, match=r"'decoder.layers.0.fc1': block_size must divide .*\(16 .*got block_size=3"):
        quantize_model_(model, None, [r"decoder\.layers\.0\.fc1"], {"Linear": ("in_features", {"*": 3})}, K_16)
    with pytest.raises(KeyError, match="module type Embedding is not in the config"):
        quantize_model_(model, None, [r"decoder\.embed"], LINEAR_8, K_16)
    with pytest.raises(IndexError, match=r"step must be in \[0, 1\), got 1"):
        quantize_model_(model, None, ["fc"], LINEAR_8, K_16, step=1)
    with pytest.raises(ValueError, match="is not a regex"):
        quantize_model_(model, None, ["fc[1"], LINEAR_8, K_16)
    with pytest.raises(ValueError, match="must be a positive integer"):
        quantize_model_(model, None, ["fc"], {"Linear": ("in_features", {"*": -8})}, K_16)
    bare = nn.Module()
    bare.scale = nn.Parameter(torch.ones(4))
    with pytest.raises(ValueError, match="'scale' .* is a parameter, not a module"):
        quantize_model_(bare, None, ["scale"], LINEAR_8, K_16)
    assert isinstance(model.decoder.layers[0].fc1, nn.Linear), "a failed call leaves the layer dense"


def test_quantize_model_warns_on_empty_stage(caplog):
    with caplog.at_level("WARNING"):
        assert quantize_model_(Model(), None, [r"encoder\\.layers"], LINEAR_8, K_16) == []
    assert "matches no layer" in caplog.text and "literal backslash" in caplog.text


def test_quantize_model_verbose_logs_each_layer(caplog):
    """verbose=True shows one line per layer (fairseq's), even where the application set up no logging."""
    quantize_model_(Model(), None, [r"decoder\.layers\.\d+\.fc1"], LINEAR_8, K_16, n_iter=1, verbose=True)
    lines = [r.message for r in caplog.records if r.name == "quantnoise_kernels.pq.pipeline"]
    assert lines and all(line.startswith("Quantizing layer decoder.layers.") for line in lines), lines


def test_quantize_model_state_dict_path_takes_fairseq_entries():
    """n_iter=0 with a fairseq state_dict: layers built from the checkpoint, decode = fairseq's rule."""
    model = nn.Sequential(nn.Linear(16, 8))
    centroids = torch.randn(32, 4)
    assignments = torch.randint(0, 32, (8 * 16 // 4,))
    bias = torch.randn(8)
    sd = {
        "0.centroids": centroids,
        "0.assignments": assignments,
        "0.counts": torch.bincount(assignments),
        "0.bias": bias,
    }
    tracker = SizeTracker(model)
    quantize_model_(
        model,
        tracker,
        ["0"],
        {"Linear": ("in_features", {"*": 4})},
        {"Linear": ("in_features", {"*": 32})},
        n_iter=0,
        state_dict=sd,
    )
    assert torch.equal(model[0].to_dense().weight, reference.pq_decode_fairseq(centroids, assignments, (8, 16)))
    assert torch.equal(model[0].bias.detach(), bias)


# ----------------------------------------------------------------------------------------------
# SizeTracker


def test_size_tracker_fairseq_example_27x():
    """fairseq's documented figure: two Linear(512, 512), block 8, K 256 -> 27.00x."""
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    tracker = SizeTracker(model)
    dense_bytes = 2 * (512 * 512 + 512) * 4
    assert tracker.size_non_compressed_model == pytest.approx(dense_bytes / 2**20)
    assert tracker.original_held.total == dense_bytes
    quantize_model_(
        model,
        tracker,
        [r"\d"],
        LINEAR_8,
        {"Linear": ("in_features", {"*": 256})},
        n_iter=2,
        seed=0,
        centroid_dtype=torch.float16,
    )
    text = str(tracker)
    assert text.endswith(
        "Non-compressed model size: 2.00 MB. After quantizing 2 layers, size (indexing + centroids + other): "
        "0.06 MB + 0.01 MB + 0.00 MB = 0.07 MB, compression ratio: 27.00x"
    )
    assert tracker.size_index == pytest.approx(2 * 512 * 512 / 8 / 2**20)
    assert tracker.size_centroids == pytest.approx(2 * 256 * 8 * 2 / 2**20)
    held = tracker.held_bytes()
    assert held.centroids == 2 * 256 * 8 * 2  # fp16
    assert held.other == 2 * 512 * 4  # the biases
    assert held.codes >= 2 * 512 * 64  # at least one byte per block
    assert held.total <= dense_bytes / 14, f"held {held.total} B > 1/14 of fp32 {dense_bytes} B"
    assert "Held in memory" in text


def test_size_tracker_fractional_bits_and_tied():
    model = Model(tie=True)
    tracker = SizeTracker(model)
    n_params = sum(p.numel() for p in model.parameters())  # the tied table once
    assert tracker.size_non_compressed_model == pytest.approx(n_params * 4 / 2**20)
    w = torch.zeros(100, 64)
    tracker.update(w, 8, 16)  # log2(16)/8 = 0.5 bit per weight: fairseq's fractional rule
    assert tracker.size_index == pytest.approx(100 * 64 * 0.5 / 8 / 2**20)
    assert tracker.size_non_quantized == pytest.approx((n_params - 6400) * 4 / 2**20)


# ----------------------------------------------------------------------------------------------
# torch.distributed: rank 0's result is broadcast


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(123)  # same dense model on every rank
        model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8))
        quantize_model_(model, None, [r"\d"], {"Linear": ("in_features", {"*": 4})}, K_16, seed=rank, verbose=False)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()
        raise
    finish_worker()


# slow (left out of make test-asan; make test runs it): two spawned processes (gloo) check that rank 0's layers are
# broadcast; its time (46 s on 2 loaded cores) is process start-up and gloo. The k-means kernels it calls run on
# every edge case under ASan in test_kmeans.py (test_kmeans_distributed_matches_single_process included).
@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_quantize_model_distributed_broadcasts_rank0(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    sd0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    sd1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert sd0.keys() == sd1.keys()
    for key in sd0:
        assert torch.equal(sd0[key], sd1[key]), key  # different seeds per rank, identical layers after broadcast

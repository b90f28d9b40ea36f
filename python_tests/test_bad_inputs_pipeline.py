"""Bad-input matrix, the model-level entry points (issue 13): quantize_model_, SizeTracker, load_config_yaml,
save_compressed, load_compressed, from_fairseq_state_dict. Each case: a clear error naming the argument (and the
layer), or the correct result; the model exactly as it was after every failure."""

from __future__ import annotations

import math

import pytest
import torch
from bad_inputs import Case, run_case
from torch import nn

from quantnoise_kernels.pq import (
    PQLinear,
    SizeTracker,
    from_fairseq_state_dict,
    load_compressed,
    load_config_yaml,
    quantize_model_,
    save_compressed,
)

META, NAN = "meta", float("nan")
HUGE = 2**33
BLOCKS = {"Linear": ("in_features", {"*": 4}), "Conv3d": ("groups", {"*": 4})}
KS = {"Linear": ("in_features", {"*": 8}), "Conv3d": ("groups", {"*": 8})}


def net(dtype=torch.float32, device="cpu", out=8, poison=None):
    model = nn.Sequential(nn.Linear(16, 16, dtype=dtype, device=device), nn.ReLU(), nn.Linear(16, out, device=device))
    if poison is not None:
        with torch.no_grad():
            model[2].weight[0, 0] = poison
    return model


def quantize(model_fn, *args, **kwargs):
    def build():
        defaults = {"n_iter": 2, "verbose": False, "seed": 0}
        return quantize_model_, (model_fn(), None, *args), {**defaults, **kwargs}

    return build


def _quantized_as_pq(names):
    def check(result, args, kwargs):
        assert result == names and all(isinstance(args[0].get_submodule(n), PQLinear) for n in names)

    return check


def _tied_to_a_parameter():
    model = net()
    model.extra = nn.Module()
    model.extra.w = model[2].weight
    return model


def _conv3d():
    return nn.Sequential(nn.Linear(8, 8), nn.Conv3d(2, 2, 2))


QUANTIZE = [
    Case(
        "quantize_model_",
        "type",
        "layers_to_quantize an int",
        quantize(net, 5, BLOCKS, KS),
        TypeError,
        "layers_to_quantize must be a regex or a list of regexes, got 5",
    ),
    Case(
        "quantize_model_",
        "type",
        "model not a module",
        lambda: (quantize_model_, ([1, 2], None, [".*"], BLOCKS, KS), {}),
        TypeError,
        "quantize_model_: model must be an nn.Module, got list",
    ),
    Case(
        "quantize_model_",
        "dtype",
        "a float64 model",
        quantize(lambda: net(torch.float64), [r"0"], BLOCKS, KS),
        check=_quantized_as_pq(["0"]),
        mutates=True,
    ),
    Case(
        "quantize_model_",
        "rank",
        "a Conv3d selected",
        quantize(_conv3d, [r"\d"], BLOCKS, KS),
        ValueError,
        "layer '1' .* is a Conv3d, not one of",
    ),
    Case(
        "quantize_model_",
        "shape",
        "block size 5",
        quantize(net, [".*"], {"Linear": ("in_features", {"*": 5})}, KS),
        ValueError,
        r"layer '0'.*block_size must divide the row length of weight \(16",
    ),
    Case(
        "quantize_model_",
        "range",
        "K = 70000",
        quantize(net, [".*"], BLOCKS, {"Linear": ("in_features", {"*": 70000})}),
        ValueError,
        r"layer '0': n_centroids must be an int in \[1, 65536\]",
    ),
    Case(
        "quantize_model_",
        "range",
        "step 1 of 1",
        quantize(net, [".*"], BLOCKS, KS, step=1),
        IndexError,
        r"step must be in \[0, 1\), got 1",
    ),
    Case(
        "quantize_model_",
        "nonfinite",
        "NaN in the last layer",
        quantize(lambda: net(poison=NAN), [".*"], BLOCKS, KS),
        ValueError,
        "layer '2': its weight must be finite",
    ),
    Case(
        "quantize_model_",
        "nonfinite",
        "eps inf",
        quantize(net, [".*"], BLOCKS, KS, eps=math.inf),
        ValueError,
        "eps must be a finite number >= 0, got inf",
    ),
    Case(
        "quantize_model_",
        "device",
        "a meta model",
        quantize(lambda: net(device=META), [".*"], BLOCKS, KS),
        ValueError,
        "layer '0': its weight is on the meta device",
    ),
    Case(
        "quantize_model_",
        "empty",
        "a layer without outputs",
        quantize(lambda: net(out=0), [".*"], BLOCKS, KS, fewer_blocks="error"),
        ValueError,
        "layer '2' has 0 blocks of 4",
    ),
    Case(
        "quantize_model_",
        "empty",
        "no layer matched",
        quantize(net, ["nothing"], BLOCKS, KS),
        check=lambda r, a, k: r == [] or pytest.fail(str(r)),
    ),
    Case(
        "quantize_model_",
        "huge",
        "huge layer on meta",
        quantize(lambda: nn.Sequential(nn.Linear(8, HUGE, device=META)), [".*"], BLOCKS, KS),
        ValueError,
        "layer '0': its weight is on the meta device",
    ),
    Case(
        "quantize_model_",
        "grad",
        "weights tied to a bare parameter",
        quantize(_tied_to_a_parameter, [".*"], BLOCKS, KS),
        ValueError,
        r"also registered as \['extra.w'\]",
    ),
]


def _tracker(model_fn, *update_args):
    def build():
        tracker = SizeTracker(model_fn())
        return (tracker.update if update_args else (lambda: tracker)), update_args, {}

    return build


def _ratio(expected):
    return lambda result, args, kwargs: math.isclose(result.compression_ratio, expected) or pytest.fail(str(result))


def _updated(result, args, kwargs):
    assert result is None


SIZE_TRACKER = [
    Case(
        "SizeTracker",
        "type",
        "not a module",
        lambda: (SizeTracker, ([1],), {}),
        TypeError,
        "SizeTracker: model must be an nn.Module, got list",
    ),
    Case(
        "SizeTracker",
        "type",
        "W not a tensor",
        _tracker(net, [1.0], 4, 8),
        TypeError,
        "SizeTracker.update: W must be a tensor, got list",
    ),
    Case(
        "SizeTracker",
        "range",
        "K = 0",
        _tracker(net, torch.zeros(16, 16), 4, 0),
        ValueError,
        "n_centroids must be a positive int, got 0",
    ),
    Case(
        "SizeTracker",
        "range",
        "block size 0",
        _tracker(net, torch.zeros(16, 16), 0, 8),
        ValueError,
        "block_size must be a positive int, got 0",
    ),
    Case("SizeTracker", "empty", "no parameters", _tracker(nn.ReLU), check=_ratio(1.0)),
    Case("SizeTracker", "dtype", "a bfloat16 model", _tracker(lambda: net(torch.bfloat16)), check=_ratio(1.0)),
    Case("SizeTracker", "device", "a meta model", _tracker(lambda: net(device=META)), check=_ratio(1.0)),
    Case(
        "SizeTracker",
        "huge",
        "a huge meta model",
        _tracker(lambda: nn.Linear(HUGE, 8, bias=False, device=META)),
        check=lambda r, a, k: r.size_non_compressed_model == HUGE * 8 * 4 / 2**20 or pytest.fail("size"),
    ),
    Case("SizeTracker", "nonfinite", "a NaN weight", _tracker(net, torch.full((16, 16), NAN), 4, 8), check=_updated),
    Case(
        "SizeTracker",
        "grad",
        "W requires grad",
        _tracker(net, torch.zeros(16, 16, requires_grad=True), 4, 8),
        check=_updated,
    ),
    Case("SizeTracker", "rank", "1-D W", _tracker(net, torch.zeros(256), 4, 8), check=_updated),
]


def yaml_call(text_or_path, as_file=False):
    def build():
        if as_file:
            import tempfile

            handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            handle.write(text_or_path)
            handle.close()
            return load_config_yaml, (handle.name,), {}
        return load_config_yaml, (text_or_path,), {}

    return build


LOAD_CONFIG = [
    Case("load_config_yaml", "file", "a missing file", yaml_call("missing.yaml"), FileNotFoundError, "missing.yaml"),
    Case("load_config_yaml", "file", "a directory", yaml_call("/"), IsADirectoryError, "'/'"),
    Case(
        "load_config_yaml",
        "type",
        "an int",
        yaml_call(5),
        TypeError,
        "path_or_str must be a path, a YAML string, a dict or None, got int",
    ),
    Case(
        "load_config_yaml",
        "shape",
        "not a mapping",
        yaml_call("- a\n- b\n"),
        ValueError,
        "the document must be a mapping",
    ),
    Case(
        "load_config_yaml",
        "range",
        "an unknown key",
        yaml_call("n_centroid: {}\n"),
        ValueError,
        r"unknown top-level keys \['n_centroid'\]",
    ),
    Case(
        "load_config_yaml", "range", "a bad regex", yaml_call("layers_to_quantize:\n  - 'fc['\n"), ValueError, "fc\\["
    ),
    Case(
        "load_config_yaml",
        "dtype",
        "a block size 2.5",
        yaml_call("block_sizes:\n  Linear:\n    key: in_features\n    value: {'*': 2.5}\n"),
        ValueError,
        "must be a positive integer, got 2.5",
    ),
    Case(
        "load_config_yaml",
        "nonfinite",
        "a block size .nan",
        yaml_call("block_sizes:\n  Linear:\n    key: in_features\n    value: {'*': .nan}\n"),
        ValueError,
        "must be a positive integer, got nan",
    ),
    Case(
        "load_config_yaml",
        "rank",
        "value a list",
        yaml_call("block_sizes:\n  Linear:\n    key: in_features\n    value: [8]\n"),
        ValueError,
        "block_sizes",
    ),
    Case(
        "load_config_yaml",
        "empty",
        "an empty file",
        yaml_call("", as_file=True),
        check=lambda r, a, k: r == load_config_yaml() or pytest.fail("defaults"),
    ),
    Case(
        "load_config_yaml", "device", "invalid YAML", yaml_call("a: [1,\n"), ValueError, "path_or_str is not valid YAML"
    ),
    Case(
        "load_config_yaml",
        "grad",
        "a dict",
        yaml_call({"layers_to_quantize": ["fc"]}),
        check=lambda r, a, k: r["layers_to_quantize"] == ["fc"] or pytest.fail("dict"),
    ),
    Case(
        "load_config_yaml",
        "huge",
        "a long regex list",
        yaml_call({"layers_to_quantize": [f"l{i}" for i in range(10000)]}),
        check=lambda r, a, k: len(r["layers_to_quantize"]) == 10000 or pytest.fail("list"),
    ),
]


def quantized_net():
    torch.manual_seed(0)
    model = net()
    quantize_model_(model, None, [r"\d"], BLOCKS, KS, n_iter=2, verbose=False, seed=0)
    return model


def save_call(model_fn, path_fn, **kwargs):
    return lambda: (save_compressed, (model_fn(), path_fn()), kwargs)


def _tmp(name="model.qnk"):
    import tempfile

    return lambda: f"{tempfile.mkdtemp()}/{name}"


def _saved_loads(result, args, kwargs):
    fresh = net()
    assert load_compressed(fresh, args[1]) == ["0", "2"]


def _nan_centroid():
    model = quantized_net()
    with torch.no_grad():
        model[2].centroids[0, 0] = NAN
    return model


def _meta_pq():
    return quantized_net().to(META)


SAVE = [
    Case(
        "save_compressed",
        "type",
        "model not a module",
        save_call(lambda: [1], _tmp()),
        TypeError,
        "save_compressed: model must be an nn.Module, got list",
    ),
    Case(
        "save_compressed",
        "file",
        "a missing directory",
        save_call(quantized_net, lambda: "/nonexistent/dir/model.qnk"),
        FileNotFoundError,
        "the directory '/nonexistent/dir' of",
    ),
    Case(
        "save_compressed",
        "file",
        "a directory",
        save_call(quantized_net, lambda: "/tmp"),
        IsADirectoryError,
        "'/tmp' is a directory",
    ),
    Case(
        "save_compressed",
        "dtype",
        "centroid_dtype int8",
        save_call(quantized_net, _tmp(), centroid_dtype=torch.int8),
        TypeError,
        "centroid_dtype must be a float dtype or None, got torch.int8",
    ),
    Case(
        "save_compressed",
        "nonfinite",
        "a NaN centroid",
        save_call(_nan_centroid, _tmp()),
        ValueError,
        "save_compressed: layer '2': its centroids must be finite",
    ),
    Case(
        "save_compressed",
        "device",
        "a meta model",
        save_call(_meta_pq, _tmp()),
        ValueError,
        "save_compressed: the model's '0.centroids' is on the meta device",
    ),
    Case(
        "save_compressed",
        "huge",
        "a huge meta model",
        save_call(lambda: nn.Linear(HUGE, 8, device=META), _tmp()),
        ValueError,
        "save_compressed: the model's 'weight' is on the meta device",
    ),
    Case(
        "save_compressed",
        "empty",
        "no PQ layer",
        save_call(net, _tmp()),
        check=lambda r, a, k: load_compressed(net(), a[1]) == [] or pytest.fail("empty"),
    ),
    Case(
        "save_compressed", "grad", "centroids that require grad", save_call(quantized_net, _tmp()), check=_saved_loads
    ),
    Case(
        "save_compressed",
        "range",
        "fp16 centroids",
        save_call(quantized_net, _tmp(), centroid_dtype=torch.float16),
        check=_saved_loads,
    ),
]


def _file(edit=None):
    """A file of quantized_net(), optionally edited."""

    def make():
        path = _tmp()()
        save_compressed(quantized_net(), path)
        if edit is not None:
            data = torch.load(path, weights_only=True)
            edit(data)
            torch.save(data, path)
        return path

    return make


def load_call(model_fn, path_fn, **kwargs):
    return lambda: (load_compressed, (model_fn(), path_fn()), kwargs)


def _entry(data, name):
    return next(e for e in data["layers"] if e["name"] == name)


def _loaded(result, args, kwargs):
    assert result == ["0", "2"] and isinstance(args[0][2], PQLinear)


LOAD = [
    Case(
        "load_compressed",
        "file",
        "a missing file",
        load_call(net, lambda: "/nonexistent.qnk"),
        FileNotFoundError,
        "/nonexistent.qnk",
    ),
    Case(
        "load_compressed",
        "file",
        "not a torch file",
        load_call(net, lambda: __file__),
        ValueError,
        "is not a readable quantnoise_kernels.pq.compressed file",
    ),
    Case("load_compressed", "type", "path an int list", load_call(net, lambda: [1]), ValueError, "load_compressed"),
    Case(
        "load_compressed",
        "shape",
        "a model with 9 outputs",
        load_call(lambda: net(out=9), _file()),
        ValueError,
        r"'2' has a weight of shape \(9, 16\)",
    ),
    Case(
        "load_compressed",
        "range",
        "a code out of range",
        load_call(net, _file(lambda d: _entry(d, "2")["codes"].fill_(9))),
        ValueError,
        r"layer '2': PQLinear: codes must be in \[0, n_centroids=8\)",
    ),
    Case(
        "load_compressed",
        "dtype",
        "float codes",
        load_call(net, _file(lambda d: _entry(d, "2").update(codes=torch.zeros(8, 4)))),
        ValueError,
        "layer '2': PQLinear: codes must be an integer tensor",
    ),
    Case(
        "load_compressed",
        "nonfinite",
        "a NaN centroid",
        load_call(net, _file(lambda d: _entry(d, "2")["centroids"].fill_(NAN))),
        ValueError,
        "layer '2': its centroids must be finite",
    ),
    Case(
        "load_compressed",
        "rank",
        "1-D centroids",
        load_call(net, _file(lambda d: _entry(d, "2").update(centroids=torch.zeros(32)))),
        ValueError,
        "layer '2': PQLinear: centroids must be 2-D",
    ),
    Case(
        "load_compressed",
        "device",
        "a meta model",
        load_call(lambda: net(device=META), _file()),
        ValueError,
        "load_compressed: the model's '0.weight' is on the meta device",
    ),
    Case(
        "load_compressed",
        "empty",
        "a model without that layer",
        load_call(lambda: nn.Sequential(nn.Linear(16, 16)), _file()),
        ValueError,
        "the model has no module '2'",
    ),
    Case(
        "load_compressed",
        "huge",
        "a huge meta model",
        load_call(lambda: nn.Sequential(nn.Linear(16, HUGE, device=META)), _file()),
        ValueError,
        "on the meta device",
    ),
    Case("load_compressed", "grad", "a model that requires grad", load_call(net, _file()), check=_loaded, mutates=True),
]


def fairseq_sd(**edits):
    def make():
        sd = {
            "0.centroids": torch.randn(8, 4),
            "0.assignments": torch.randint(0, 8, (64,)),
            "0.bias": torch.randn(16),
            "2.weight": torch.randn(8, 16),
            "2.bias": torch.randn(8),
        }
        for key, value in edits.items():
            key = key.replace("_", ".")
            if value is None:
                sd.pop(key)
            else:
                sd[key] = value
        return sd

    return make


def fairseq_call(model_fn, sd_fn, **kwargs):
    return lambda: (from_fairseq_state_dict, (model_fn(), sd_fn()), kwargs)


FAIRSEQ = [
    Case(
        "from_fairseq_state_dict",
        "type",
        "a list",
        fairseq_call(net, lambda: [1]),
        TypeError,
        "state_dict must be a dict, got list",
    ),
    Case(
        "from_fairseq_state_dict",
        "dtype",
        "int centroids",
        fairseq_call(net, fairseq_sd(**{"0_centroids": torch.zeros(8, 4, dtype=torch.int64)})),
        ValueError,
        "'0.centroids' must be a \\[K, block_size\\] tensor of floats",
    ),
    Case(
        "from_fairseq_state_dict",
        "rank",
        "1-D centroids",
        fairseq_call(net, fairseq_sd(**{"0_centroids": torch.zeros(32)})),
        ValueError,
        "'0.centroids' must be a \\[K, block_size\\] tensor",
    ),
    Case(
        "from_fairseq_state_dict",
        "shape",
        "31 assignments",
        fairseq_call(net, fairseq_sd(**{"0_assignments": torch.zeros(31, dtype=torch.int64)})),
        ValueError,
        "assignments must be 1-D with out \\* row / block_size = 16 \\* 16 / 4 = 64 entries",
    ),
    Case(
        "from_fairseq_state_dict",
        "range",
        "assignment 8 of K 8",
        fairseq_call(net, fairseq_sd(**{"0_assignments": torch.full((64,), 8)})),
        ValueError,
        r"assignments must lie in \[0, 8\)",
    ),
    Case(
        "from_fairseq_state_dict",
        "nonfinite",
        "NaN centroids",
        fairseq_call(net, fairseq_sd(**{"0_centroids": torch.full((8, 4), NAN)})),
        ValueError,
        "'0.centroids' must be finite",
    ),
    Case(
        "from_fairseq_state_dict",
        "device",
        "a meta model",
        fairseq_call(lambda: net(device=META), fairseq_sd()),
        ValueError,
        "from_fairseq_state_dict: the model's '0.weight' is on the meta device",
    ),
    Case(
        "from_fairseq_state_dict",
        "empty",
        "no quantized entry",
        fairseq_call(net, fairseq_sd(**{"0_centroids": None, "0_assignments": None, "0_bias": None})),
        RuntimeError,
        r"missing keys \['0.bias', '0.weight'\]",
    ),
    Case(
        "from_fairseq_state_dict",
        "file",
        "the bias missing",
        fairseq_call(net, fairseq_sd(**{"0_bias": None})),
        ValueError,
        "'0.bias' is missing for a layer with a bias",
    ),
    Case(
        "from_fairseq_state_dict",
        "huge",
        "a huge meta model",
        fairseq_call(lambda: nn.Sequential(nn.Linear(16, HUGE, device=META)), fairseq_sd()),
        ValueError,
        "on the meta device",
    ),
    Case(
        "from_fairseq_state_dict",
        "grad",
        "a model that requires grad",
        fairseq_call(net, fairseq_sd()),
        check=lambda r, a, k: r == ["0"] or pytest.fail(str(r)),
        mutates=True,
    ),
]

CASES = QUANTIZE + SIZE_TRACKER + LOAD_CONFIG + SAVE + LOAD + FAIRSEQ


def test_every_entry_point_gets_eight_kinds_of_bad_input():
    kinds: dict[str, set[str]] = {}
    for case in CASES:
        kinds.setdefault(case.entry, set()).add(case.kind)
    assert len(kinds) == 6
    assert all(len(k) >= 8 for k in kinds.values()), {e: sorted(k) for e, k in kinds.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case):
    run_case(case)

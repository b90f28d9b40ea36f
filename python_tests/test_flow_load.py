"""load_compressed and from_fairseq_state_dict are all or nothing (issue 13): every file entry is checked against
the model (class, shape, configuration, bias, ties, values) and every layer is built before anything changes; a
failing call leaves the model exactly as it was and says which layer and what differs."""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

from quantnoise_kernels.pq import PQConv2d, PQLinear, from_fairseq_state_dict, load_compressed, quantize_model_
from quantnoise_kernels.pq import save_compressed as save

BLOCKS = {
    "Linear": ("in_features", {"*": 4}),
    "Embedding": ("embedding_dim", {"*": 4}),
    "Conv2d": ("kernel_size", {"(3, 3)": 9, "(1, 9)": 9}),
}
KS = {name: (feature, {"*": 8}) for name, (feature, _) in BLOCKS.items()}


class Net(nn.Module):
    """emb (tied to head), conv, fc (last: failures there used to come after the others were replaced), norm."""

    def __init__(self, kernel=3, stride=1, padding=0, fc_bias=True) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.conv = nn.Conv2d(4, 8, kernel, stride=stride, padding=padding)
        self.fc = nn.Linear(8, 8, bias=fc_bias)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = Net()
    quantize_model_(model, None, ["emb|conv|fc"], BLOCKS, KS, n_iter=2, verbose=False, seed=0)
    path = str(tmp_path_factory.mktemp("flow") / "net.qnk")
    save(model, path)
    return path


def _edited(saved: str, tmp_path, edit) -> str:
    data = torch.load(saved, weights_only=True)
    edit(data)
    path = str(tmp_path / "edited.qnk")
    torch.save(data, path)
    return path


def _layer(data: dict, name: str) -> dict:
    return next(entry for entry in data["layers"] if entry["name"] == name)


def _set(name: str, key: str, value):
    return lambda data: _layer(data, name).__setitem__(key, value)


def _codes_out_of_range(data):
    _layer(data, "fc")["codes"][0, 0] = 200


def _nan_centroid(data):
    _layer(data, "fc")["centroids"][1, 2] = float("nan")


def _extra_key(data):
    data["state_dict"]["ghost.weight"] = torch.zeros(2)


def _bad_shape(data):
    data["state_dict"]["norm.weight"] = torch.ones(9)


def _rename(data):
    _layer(data, "fc")["name"] = "fc9"


LOAD_FAILURES = [
    # (id, model arguments, file edit, error, message)
    (
        "kernel (1, 9) for 3x3",
        {"kernel": (1, 9)},
        None,
        ValueError,
        r"'conv' has kernel_size=\[1, 9\] in the model, the file holds kernel_size=\[3, 3\]",
    ),
    (
        "stride",
        {"stride": 2},
        None,
        ValueError,
        r"'conv' has stride=\[2, 2\] in the model, the file holds stride=\[1, 1\]",
    ),
    ("padding", {"padding": 1}, None, ValueError, r"'conv' has padding=\[1, 1\] in the model"),
    (
        "bias in the file only",
        {"fc_bias": False},
        None,
        ValueError,
        "'fc' has no bias in the model, the file holds one",
    ),
    (
        "bias shape",
        {},
        _set("fc", "bias", torch.zeros(9)),
        ValueError,
        r"layer 'fc': PQLinear: bias must have shape \(8,\)",
    ),
    (
        "codes out of range",
        {},
        _codes_out_of_range,
        ValueError,
        r"layer 'fc': PQLinear: codes must be in \[0, n_centroids=8\)",
    ),
    ("NaN centroid", {}, _nan_centroid, ValueError, "layer 'fc': its centroids must be finite, got 1 NaN"),
    (
        "entry without codes",
        {},
        lambda d: _layer(d, "fc").pop("codes"),
        ValueError,
        r"layer 'fc': the file entry has no \['codes'\]",
    ),
    (
        "centroids not a tensor",
        {},
        _set("fc", "centroids", [1.0]),
        ValueError,
        "layer 'fc': 'centroids' must be a tensor",
    ),
    (
        "unknown class",
        {},
        _set("fc", "dense_class", "Bilinear"),
        ValueError,
        "'fc': the file holds an unknown layer 'Bilinear'",
    ),
    ("no such module", {}, _rename, ValueError, "the model has no module 'fc9'"),
    (
        "tie to nothing",
        {},
        _set("head", "tied_to", "nowhere"),
        ValueError,
        "'head' is tied to 'nowhere', which no earlier",
    ),
    ("config not a dict", {}, _set("fc", "config", None), ValueError, "layer 'fc': the file's config must be a dict"),
    ("extra state key", {}, _extra_key, RuntimeError, r"unexpected keys \['ghost.weight'\]"),
    ("state shape", {}, _bad_shape, ValueError, r"entry 'norm.weight' has shape \(9,\), the model's has \(8,\)"),
    ("version", {}, lambda d: d.update(version=2), ValueError, "file version 2 is not supported"),
    ("layers not a list", {}, lambda d: d.update(layers={}), ValueError, "'layers' must be a list"),
]


@pytest.mark.parametrize(
    "model_args,edit,error,match", [c[1:] for c in LOAD_FAILURES], ids=[c[0] for c in LOAD_FAILURES]
)
def test_load_compressed_failing_leaves_the_model_as_it_was(saved, tmp_path, model_args, edit, error, match):
    path = saved if edit is None else _edited(saved, tmp_path, edit)
    model = Net(**model_args)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        load_compressed(model, path)
    assert_unchanged(model, before)


def test_load_compressed_untied_model(saved):
    model = Net()
    model.head.weight = nn.Parameter(model.emb.weight.detach().clone())  # the file ties them, this model not
    before = snapshot(model)
    with pytest.raises(ValueError, match="'head' shares its weight with 'emb' in the file, not in the model"):
        load_compressed(model, saved)
    assert_unchanged(model, before)


def test_load_compressed_the_issue_case_would_compute_a_wrong_shape(saved):
    """A file from Conv2d(4, 8, 3) loaded into Conv2d(4, 8, (1, 9)): the flattened weights agree, the forward
    would return [1, 8, 7, 7] instead of [1, 8, 9, 1]; the configuration check refuses it."""
    model = Net(kernel=(1, 9))
    with pytest.raises(ValueError, match="kernel_size"):
        load_compressed(model, saved)
    assert model.conv(torch.randn(1, 4, 9, 9)).shape == (1, 8, 9, 1)


def test_load_compressed_succeeds_on_the_right_model_and_non_strict(saved, tmp_path):
    model = Net()
    assert load_compressed(model, saved) == ["emb", "conv", "fc", "head"]
    assert isinstance(model.conv, PQConv2d) and isinstance(model.fc, PQLinear)
    lenient = Net()
    assert load_compressed(lenient, _edited(saved, tmp_path, _extra_key), strict=False)


@pytest.mark.parametrize(
    "content,error,match",
    [
        (None, FileNotFoundError, "missing.qnk"),
        (b"PK\x03\x04 truncated", ValueError, r"'.*bad.qnk' is not a readable .* archive is truncated or corrupted$"),
        (b"", ValueError, r"'.*bad.qnk' is not a readable .*: the file is empty$"),
        (b"hello, not a model", ValueError, r"'.*bad.qnk' is not a readable .*: wrong magic b'hell'"),
        ("dict", ValueError, r"'.*bad.qnk' is not a quantnoise_kernels.pq.compressed file"),
    ],
    ids=["missing", "truncated", "empty", "text", "foreign"],
)
def test_load_compressed_file_errors(tmp_path, content, error, match):
    path = tmp_path / ("missing.qnk" if content is None else "bad.qnk")
    if content == "dict":
        torch.save({"weights": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    model = Net()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        load_compressed(model, path)
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------ fairseq import


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 8)


def _fairseq_sd(model: Two) -> dict:
    sd = {}
    for name, out in (("fc1", 16), ("fc2", 8)):
        sd[f"{name}.centroids"] = torch.randn(8, 4)
        sd[f"{name}.assignments"] = torch.randint(0, 8, (out * 4,))
        sd[f"{name}.counts"] = torch.ones(8)
        sd[f"{name}.bias"] = torch.randn(out)
    sd.update({k: v.clone() for k, v in model.norm.state_dict(prefix="norm.").items()})
    return sd


def _put(key, value):
    return lambda sd: sd.__setitem__(key, value)


FAIRSEQ_FAILURES = [
    ("fc2 bias missing", lambda sd: sd.pop("fc2.bias"), ValueError, "'fc2.bias' is missing for a layer with a bias"),
    ("fc2 bias shape", _put("fc2.bias", torch.zeros(9)), ValueError, r"'fc2.bias' must have shape \(8,\), got \(9,\)"),
    (
        "assignments range",
        _put("fc2.assignments", torch.full((32,), 8)),
        ValueError,
        r"assignments must lie in \[0, 8\)",
    ),
    (
        "assignments count",
        _put("fc2.assignments", torch.zeros(31, dtype=torch.int64)),
        ValueError,
        "with out \\* row / block_size = 8 \\* 16 / 4 = 32 entries",
    ),
    (
        "NaN centroids",
        _put("fc2.centroids", torch.full((8, 4), float("nan"))),
        ValueError,
        "'fc2.centroids' must be finite",
    ),
    (
        "int centroids",
        _put("fc2.centroids", torch.zeros(8, 4, dtype=torch.int64)),
        ValueError,
        r"'fc2.centroids' must be a \[K, block_size\] tensor of floats",
    ),
    ("block size", _put("fc2.centroids", torch.randn(8, 5)), ValueError, "block_size must divide the row length"),
    ("other entry shape", _put("norm.weight", torch.ones(3)), ValueError, r"entry 'norm.weight' has shape \(3,\)"),
    ("unexpected key", _put("ghost", torch.ones(3)), RuntimeError, r"unexpected keys \['ghost'\]"),
    (
        "no such module",
        _put("fc3.assignments", torch.zeros(4, dtype=torch.int64)),
        ValueError,
        "the model has no module 'fc3'",
    ),
    (
        "not quantizable",
        _put("norm.assignments", torch.zeros(4, dtype=torch.int64)),
        ValueError,
        "'norm' is a LayerNorm",
    ),
    ("not a tensor", _put("norm.weight", [1.0] * 16), ValueError, "entry 'norm.weight' must be a tensor, got list"),
]


@pytest.mark.parametrize("edit,error,match", [c[1:] for c in FAIRSEQ_FAILURES], ids=[c[0] for c in FAIRSEQ_FAILURES])
def test_fairseq_import_failing_leaves_the_model_as_it_was(edit, error, match):
    model = Two()
    sd = _fairseq_sd(model)
    edit(sd)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        from_fairseq_state_dict(model, sd)
    assert_unchanged(model, before)


def test_fairseq_import_argument_types():
    model = Two()
    before = snapshot(model)
    with pytest.raises(TypeError, match="state_dict must be a dict, got list"):
        from_fairseq_state_dict(model, [])
    with pytest.raises(TypeError, match="centroid_dtype must be a float dtype or None, got torch.int8"):
        from_fairseq_state_dict(model, _fairseq_sd(model), centroid_dtype=torch.int8)
    assert_unchanged(model, before)
    assert from_fairseq_state_dict(model, _fairseq_sd(model)) == ["fc1", "fc2"]

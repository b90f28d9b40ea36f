"""The ``quantnoise-kernels`` CLI on a randomly initialised tiny BERT: compress, evaluate, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_bert import make_tiny_bert, tiny_sentences

pytest.importorskip("transformers", reason="the CLI tests need transformers: pip install -r requirements-dev.txt")

from quantnoise_kernels import cli

CONFIG = r"""
n_centroids:
  Linear: {key: in_features, value: {"*": 16}}
  Embedding: {key: embedding_dim, value: {"*": 16}}
block_sizes:
  Linear: {key: fuzzy_name, value: {attention: 4, "*": 8}}
  Embedding: {key: fuzzy_name, value: {"*": 8}}
layers_to_quantize:
  - encoder\.layer\.\d+\.(intermediate|output)\.dense
  - encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)
  - embeddings\.word_embeddings
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_bert(str(root / "model"))
    sentences = root / "sentences.txt"
    sentences.write_text("\n".join(tiny_sentences(40)) + "\n", encoding="utf-8")
    config = root / "config.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    return {"model": model, "sentences": str(sentences), "config": str(config), "root": root}


def _compress(files, out, *extra):
    return cli.main(
        ["compress", files["model"], "--config", files["config"], "--out", str(out), "--no-progress", *extra]
    )


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("quantnoise-kernels: error: ")
    return err[0]


def test_compress_then_evaluate(files, tmp_path, capsys):
    out = tmp_path / "tiny.qnk"
    args = ["--calibration", files["sentences"], "--finetune-steps", "2", "--batch-size", "16"]
    assert _compress(files, out, *args) == 0
    printed = capsys.readouterr().out
    assert (
        "stage 2: 1 layers" in printed and "compression ratio" in printed and "centroid finetuning 2 steps" in printed
    )
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["tiny.qnk"]  # no temp file left

    assert cli.main(["evaluate", files["model"], str(out), "--sentences", files["sentences"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sentences"] == 40 and report["file_bytes"] == out.stat().st_size
    assert report["compressed_bytes"] < report["dense_bytes"]
    assert 0.0 < report["cosine_p5"] <= report["cosine_mean"] <= 1.0 + 1e-6
    assert 0.0 <= report["recall_at_10"] <= 1.0

    few = tmp_path / "few.txt"  # recall@10 needs 11 sentences: left out, and a note says why
    few.write_text("\n".join(tiny_sentences(8)) + "\n", encoding="utf-8")
    assert cli.main(["evaluate", files["model"], str(out), "--sentences", str(few), "--json"]) == 0
    captured = capsys.readouterr()
    assert "recall_at_10" not in json.loads(captured.out)
    assert "recall@10 left out: it needs at least 11 sentences, got 8" in captured.err


def test_compress_with_block_output_distillation(files, tmp_path, capsys):
    out = tmp_path / "blocks.qnk"
    args = ["--calibration", files["sentences"], "--finetune-steps", "2", "--loss", "blocks", "--lr", "1e-3"]
    assert _compress(files, out, *args) == 0
    printed = capsys.readouterr().out
    assert printed.count("centroid finetuning 2 steps") == 3 and out.is_file()


def test_compress_activation_aware(files, tmp_path, capsys):
    """--activation-aware weights k-means by the calibration sentences' second moments: other codes than
    plain EM for the same seed, and the same model for the same run twice (deterministic)."""
    import torch

    from quantnoise_kernels import hf, pq

    def loaded(name, *extra):
        out = tmp_path / f"{name}.qnk"
        assert _compress(files, out, "--calibration", files["sentences"], "--finetune-steps", "0", *extra) == 0
        model = hf.load_encoder(files["model"])[0]
        assert len(pq.load_compressed(model, str(out))) == 13
        return model.state_dict()

    plain, aa, again = (
        loaded("plain"),
        loaded("aa", "--activation-aware", "diag"),
        loaded("aa2", "--activation-aware", "diag"),
    )
    assert plain.keys() == aa.keys() == again.keys()
    assert all(torch.equal(aa[k], again[k]) for k in aa)
    assert any(not torch.equal(aa[k], plain[k]) for k in aa if k.endswith("codes"))
    capsys.readouterr()


def test_compressed_file_reloads_exactly(files, tmp_path):
    import copy

    import torch

    from quantnoise_kernels import hf, pq

    out = tmp_path / "a.qnk"
    assert _compress(files, out, "--seed", "3") == 0
    model, tokenizer = hf.load_encoder(files["model"])
    again = copy.deepcopy(model)
    names = pq.load_compressed(again, str(out))
    assert len(names) == 13 and all(pq.is_pq_layer(again.get_submodule(n)) for n in names)
    # the same flow in process, same seed: identical codes, centroids and embeddings
    config = pq.load_config_yaml(files["config"])
    pq.compress_staged(model, config, seed=3, progress=False)
    batches = hf.tokenize(tokenizer, tiny_sentences(12))
    assert torch.equal(hf.embed_sentences(model, batches), hf.embed_sentences(again, batches))


@pytest.mark.parametrize(
    "case",
    [
        "missing_model",
        "no_config_json",
        "missing_config",
        "matches_nothing",
        "not_a_layer",
        "out_folder_missing",
        "out_is_folder",
        "bad_yaml_value",
        "aa_without_calibration",
    ],
)
def test_bad_input_one_line_error(files, tmp_path, capsys, case):
    model, config, out = files["model"], files["config"], tmp_path / "out.qnk"
    if case == "missing_model":
        model = str(tmp_path / "nope")
    elif case == "no_config_json":
        model = str(tmp_path)
    elif case == "missing_config":
        config = str(tmp_path / "nope.yaml")
    elif case in ("matches_nothing", "not_a_layer", "bad_yaml_value"):
        config = tmp_path / "c.yaml"
        text = {
            "matches_nothing": "layers_to_quantize: [decoder\\.layers\\.\\d+\\.fc1]\n",
            "not_a_layer": CONFIG.split("layers_to_quantize")[0]
            + "layers_to_quantize: [encoder\\.layer\\.0\\.attention]\n",
            "bad_yaml_value": CONFIG.replace('"*": 16}}\n  Embedding', '"*": -3}}\n  Embedding'),
        }[case]
        config.write_text(text, encoding="utf-8")
    elif case == "out_folder_missing":
        out = tmp_path / "missing" / "out.qnk"
    elif case == "out_is_folder":
        out = tmp_path
    extra = ["--activation-aware", "full"] if case == "aa_without_calibration" else []
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["compress", model, "--config", str(config), "--out", str(out), "--no-progress", *extra]) == 1
    line = _error_line(capsys)
    expected = {
        "missing_model": "does not exist",
        "no_config_json": "no config.json",
        "missing_config": "--config",
        "matches_nothing": "matches no layer",
        "not_a_layer": "LayerNorm",
        "out_folder_missing": "does not exist",
        "out_is_folder": "is a folder",
        "bad_yaml_value": "positive integer",
        "aa_without_calibration": "--activation-aware full needs --calibration",
    }[case]
    assert expected in line
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_failed_write_leaves_no_file(files, tmp_path, capsys, monkeypatch):
    from quantnoise_kernels import pq

    out = tmp_path / "out.qnk"
    out.write_bytes(b"previous")

    def broken(model, path):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "save_compressed", broken)
    assert _compress(files, out) == 1
    assert "No space left" in _error_line(capsys)
    assert os.listdir(tmp_path) == ["out.qnk"] and out.read_bytes() == b"previous"


def test_evaluate_missing_file(files, tmp_path, capsys):
    args = ["evaluate", files["model"], str(tmp_path / "x.qnk"), "--sentences", files["sentences"]]
    assert cli.main(args) == 1
    assert "does not exist" in _error_line(capsys)


def test_python_dash_m_entry_point(tmp_path):
    """``python -m quantnoise_kernels``: usage on --help, one-line error and exit 1 on a missing folder."""
    run = [sys.executable, "-m", "quantnoise_kernels"]
    assert "compress" in subprocess.run([*run, "--help"], capture_output=True, text=True, check=True).stdout
    bad = subprocess.run(
        [*run, "compress", str(tmp_path / "nope"), "--config", "x.yaml", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "error:" in bad.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "option, rule",
    [
        (["--finetune-steps", "-3"], ">= 0, got -3"),
        (["--n-iter", "0"], ">= 1, got 0"),
        (["--lr", "0"], "> 0, got 0.0"),
        (["--batch-size", "0"], ">= 1, got 0"),
        (["--max-length", "1"], ">= 2, got 1"),
    ],
)
def test_usage_errors_exit_2(files, tmp_path, capsys, option, rule):
    """A usage error names the flag, the rule and the value given."""
    with pytest.raises(SystemExit) as exc:
        _compress(files, tmp_path / "o.qnk", *option)
    assert exc.value.code == 2 and f"{option[0]} must be {rule}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

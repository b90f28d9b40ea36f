"""``quantnoise-kernels``: compress a Hugging Face model folder with iPQ, and evaluate the result.

    quantnoise-kernels compress MODEL_DIR --config CONFIG.yaml --out FILE [--calibration SENTENCES.txt]
        [--activation-aware full|diag]
    quantnoise-kernels evaluate MODEL_DIR FILE --sentences SENTENCES.txt

``compress`` loads the model offline (``transformers``, ``local_files_only``), checks the whole
configuration against it (fairseq's YAML format, :func:`quantnoise_kernels.pq.load_config_yaml`), quantizes
it stage by stage with progress, optionally finetunes the centroids after each stage by distillation from
the uncompressed model on calibration sentences (:func:`quantnoise_kernels.pq.finetune_centroids`, MSE on
mean-pooled sentence embeddings) and, with ``--activation-aware``, clusters each layer's weight blocks to
preserve its outputs on those sentences (activation-aware iPQ, ``quantize_model_(..., calibration=)``),
prints the size report and writes a compact file (:func:`quantnoise_kernels.pq.save_compressed`) through a
temporary file in the target folder, so an interrupted or failed run never leaves a half-written file.
``evaluate`` loads that file into a fresh copy of the model and compares sentence embeddings with the
original's. Errors are one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections.abc import Sequence

from ._torchao import import_torchao_quietly

__all__ = ["main", "build_parser", "atomic_save"]

_PROG = "quantnoise-kernels"
_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


class CLIError(Exception):
    """A user error reported as one line."""


def _output_dir(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"--out {path!r} is a folder; give a file name")
    if not os.path.isdir(directory):
        raise CLIError(f"--out {path!r}: the folder {directory!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qnk-probe-", dir=directory)
    except OSError as error:
        raise CLIError(f"--out {path!r}: cannot write to {directory!r} ({error.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return directory


def atomic_save(model, path: str) -> int:
    """``save_compressed(model, path)`` through a temporary file in the same folder and ``os.replace``.

    Returns the file's size in bytes. On any failure the temporary file is removed and ``path`` is untouched.
    """
    from .pq import save_compressed

    directory = _output_dir(path)
    fd, tmp = tempfile.mkstemp(prefix=".qnk-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_compressed(model, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def _load_config(path: str) -> dict:
    from .pq import load_config_yaml

    if not os.path.isfile(path):
        raise CLIError(f"--config {path!r} does not exist")
    return load_config_yaml(os.path.abspath(path))


def _batches(args: argparse.Namespace, tokenizer, path: str, what: str) -> list[dict]:
    from .hf import read_sentences, tokenize

    return tokenize(tokenizer, read_sentences(path, what=what), batch_size=args.batch_size, max_length=args.max_length)


def _finetuner(args: argparse.Namespace, teacher, batches):
    from .hf import block_outputs, layerwise_mse, sentence_embedding, with_hidden_states
    from .pq import finetune_centroids

    loss, output_fn = args.loss, sentence_embedding
    if loss == "blocks":  # every block's output at every token, each layer's MSE relative to its scale
        batches, loss, output_fn = with_hidden_states(batches), layerwise_mse, block_outputs

    def after_stage(stage: int, model) -> None:
        losses = finetune_centroids(
            model,
            teacher,
            batches,
            steps=args.finetune_steps,
            lr=args.lr,
            loss=loss,
            output_fn=output_fn,
            train_float=args.train_float,
            progress=args.progress,
            desc=f"stage {stage} finetune",
        )
        print(f"stage {stage}: centroid finetuning {len(losses)} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}")

    return after_stage


def cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from .hf import load_encoder
    from .pq import SizeTracker, compress_staged, plan_stages

    if args.activation_aware != "off" and not args.calibration:
        raise CLIError(f"--activation-aware {args.activation_aware} needs --calibration SENTENCES.txt")
    config = _load_config(args.config)
    _output_dir(args.out)
    model, tokenizer = load_encoder(args.model_dir, progress=args.progress)
    plan = plan_stages(model, config)
    for stage, layers in enumerate(plan):
        print(f"stage {stage}: {len(layers)} layers ({config['layers_to_quantize'][stage]})")
    after_stage, quantize_kwargs = None, {}
    if args.calibration:
        batches = _batches(args, tokenizer, args.calibration, "--calibration")
        if args.finetune_steps > 0:
            after_stage = _finetuner(args, copy.deepcopy(model).eval(), batches)
        if args.activation_aware != "off":  # issue 10: k-means weighted by each layer's input second moments
            quantize_kwargs = {"calibration": batches, "calibration_h": args.activation_aware}
    tracker = SizeTracker(model)
    compress_staged(
        model,
        config,
        tracker=tracker,
        n_iter=args.n_iter,
        seed=args.seed,
        centroid_dtype=getattr(torch, args.centroid_dtype),
        after_stage=after_stage,
        progress=args.progress,
        quantize_kwargs=quantize_kwargs,
    )
    print(tracker)
    size = atomic_save(model, args.out)
    print(f"wrote {args.out} ({size} bytes)")
    return 0


def evaluate_file(args: argparse.Namespace) -> dict:
    """The comparison ``evaluate`` prints, as a dict (bytes, cosine statistics, recall@10)."""
    from .hf import cosine_report, embed_sentences, load_encoder, recall_at_k
    from .pq import held_bytes, load_compressed

    if not os.path.isfile(args.file):
        raise CLIError(f"compressed file {args.file!r} does not exist")
    original, tokenizer = load_encoder(args.model_dir, progress=False)
    compressed = copy.deepcopy(original)
    load_compressed(compressed, args.file)
    batches = _batches(args, tokenizer, args.sentences, "--sentences")
    ref, got = embed_sentences(original, batches), embed_sentences(compressed.eval(), batches)
    dense_bytes, held = held_bytes(original).total, held_bytes(compressed).total
    report = {
        "sentences": int(ref.shape[0]),
        "dense_bytes": dense_bytes,
        "compressed_bytes": held,
        "file_bytes": os.path.getsize(args.file),
        "compression_ratio": dense_bytes / held,
        **cosine_report(ref, got),
    }
    if ref.shape[0] > 10:
        report["recall_at_10"] = recall_at_k(ref, got, 10)
    else:  # stderr: keeps --json output parseable
        print(f"note: recall@10 left out: it needs at least 11 sentences, got {ref.shape[0]}", file=sys.stderr)
    return report


def cmd_evaluate(args: argparse.Namespace) -> int:
    report = evaluate_file(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence (default 128)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``quantnoise-kernels``."""
    parser = argparse.ArgumentParser(prog=_PROG, description="iPQ compression of Hugging Face models (offline).")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model folder with iPQ (fairseq YAML config)")
    c.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face model folder (config.json, weights)")
    c.add_argument("--config", required=True, help="iPQ configuration in fairseq's YAML format")
    c.add_argument("--out", required=True, help="compressed file to write")
    c.add_argument(
        "--calibration", help="text file, one sentence per line: centroid finetuning and activation-aware iPQ"
    )
    c.add_argument(
        "--activation-aware",
        choices=["off", "full", "diag"],
        default="off",
        help="activation-aware iPQ on the --calibration sentences: full or diagonal H per block (default off)",
    )
    c.add_argument("--finetune-steps", type=int, default=100, help="distillation steps after each stage")
    c.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate for the centroids")
    c.add_argument(
        "--loss",
        choices=["mse", "cosine", "blocks"],
        default="mse",
        help="mse/cosine: on the sentence embeddings; blocks: every block's output at every token",
    )
    c.add_argument("--train-float", action="store_true", help="also finetune the float parameters left")
    c.add_argument("--n-iter", type=int, default=15, help="k-means iterations per layer (fairseq: 15)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--centroid-dtype", choices=sorted(_DTYPES), default="float16")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _common(c)
    c.set_defaults(func=cmd_compress)

    e = sub.add_parser("evaluate", help="compare a compressed file with its original on sentences")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="the original Hugging Face model folder")
    e.add_argument("file", metavar="FILE", help="a file written by `compress`")
    e.add_argument("--sentences", required=True, help="text file, one sentence per line")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    _common(e)
    e.set_defaults(func=cmd_evaluate)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if isinstance(error, (CLIError, FileNotFoundError, ValueError)) else f"{type(error).__name__}: {text}"


_NUMERIC_RULES = (
    ("--batch-size", "batch_size", lambda v: v >= 1, ">= 1"),
    ("--max-length", "max_length", lambda v: v >= 2, ">= 2"),
    ("--finetune-steps", "finetune_steps", lambda v: v >= 0, ">= 0"),
    ("--n-iter", "n_iter", lambda v: v >= 1, ">= 1"),
    ("--lr", "lr", lambda v: v > 0, "> 0"),
)
"""(flag, argument, check, rule) of the numeric options: a usage error names the flag and the value."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 1 error, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, attr, ok, rule in _NUMERIC_RULES:
        if hasattr(args, attr) and not ok(getattr(args, attr)):
            parser.error(f"{flag} must be {rule}, got {getattr(args, attr)}")
    try:
        import_torchao_quietly()  # before transformers imports it
    except ImportError:  # a declared dependency; quantnoise_kernels.scalar says so where it needs it
        pass
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; --traceback for developers
        if args.traceback:
            raise
        print(f"{_PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

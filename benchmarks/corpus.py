"""Real English text available offline: the Python standard library's docstrings and comments.

Deterministic for a given Python version: files are read in sorted order, parsed with ``ast`` (docstrings)
and ``tokenize`` (comments), and nothing depends on hashing or the file system's order.

- :func:`docstring_sentences`: the first sentence of every docstring, kept when it reads as English
  prose (letters and common words, no code), deduplicated; the MiniLM demo's calibration and held-out
  sentences.
- :func:`stdlib_text`: docstrings and comments as one text, the miniature paper table's corpus.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import random
import re
import sysconfig
import tokenize
from collections.abc import Iterator

__all__ = ["stdlib_files", "docstring_sentences", "split_sentences", "stdlib_text"]

_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "dist-packages"}
_COMMON = set(
    "the a an of to and is in it that for on with as are this be by or from at not can if when which "
    "will should may must was were has have its their been any all each one".split()
)
_CODE = re.compile(r"[=<>{}\[\]|\\`@$#_]|\(\)|::|\.\w+\(|\bNone\b|\bTrue\b|\bFalse\b|https?:|\w+\.\w+\.\w+")
_SENTENCE_END = re.compile(r"(?<=[a-z)][.!?])\s+(?=[A-Z])")


def stdlib_files() -> list[str]:
    """The standard library's ``.py`` files (tests and site-packages excluded), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        found += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


def _source(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def split_sentences(paragraph: str) -> list[str]:
    """Split prose at ``. `` / ``! `` / ``? `` followed by a capital letter."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s.strip()]


def _is_prose(sentence: str, min_words: int, max_words: int) -> bool:
    words = sentence.split()
    if not min_words <= len(words) <= max_words or not sentence[0].isupper() or sentence[-1] != ".":
        return False
    if _CODE.search(sentence) or sum(c.isdigit() for c in sentence) > 2:
        return False
    alpha = [w.strip(".,;:'\"()") for w in words]
    if sum(w.isalpha() for w in alpha) < 0.85 * len(words):
        return False
    common = sum(w.lower() in _COMMON for w in alpha)
    return common >= 2 and common >= 0.15 * len(words)


def docstring_sentences(min_words: int = 6, max_words: int = 40) -> list[str]:
    """First sentences of the standard library's docstrings that read as English prose, deduplicated, shuffled.

    The order is a fixed shuffle (``random.Random(0)``) of the first-seen order, so any prefix is a sample
    of the whole library rather than of its first modules. Computed once per process (a fresh list each call).
    """
    return list(_docstring_sentences(min_words, max_words))


@functools.lru_cache(maxsize=4)
def _docstring_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for path in stdlib_files():
        source = _source(path)
        if source is None:
            continue
        for doc in _docstrings(source):
            first = split_sentences(doc.split("\n\n")[0])
            if not first:
                continue
            sentence = first[0]
            key = sentence.lower()
            if key not in seen and _is_prose(sentence, min_words, max_words):
                seen.add(key)
                out.append(sentence)
    random.Random(0).shuffle(out)
    return tuple(out)


def _comments(source: str) -> Iterator[str]:
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                text = token.string.lstrip("#").strip()
                if len(text) > 2 and not text.startswith("!"):
                    yield text
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return


def stdlib_text(max_chars: int | None = None) -> str:
    """Docstrings and comments of the standard library, file by file, as one ASCII text.

    Non-ASCII characters are dropped so a byte-level model sees 95-odd symbols. ``max_chars`` truncates.
    """
    parts: list[str] = []
    total = 0
    for path in stdlib_files():
        source = _source(path)
        if source is None:
            continue
        for piece in (*_docstrings(source), *_comments(source)):
            piece = piece.encode("ascii", "ignore").decode() + "\n"
            parts.append(piece)
            total += len(piece)
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(parts)
    return text if max_chars is None else text[:max_chars]

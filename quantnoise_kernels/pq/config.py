"""fairseq's iPQ configuration: the YAML format, its defaults, and validation.

A configuration holds three entries (fairseq's ``parse_config_yaml`` keys):

- ``n_centroids``: ``{module class name: (feature, {value: K})}``
- ``block_sizes``: ``{module class name: (feature, {value: block_size})}``
- ``layers_to_quantize``: one regex per stage, applied in order (``quantize_model_(..., step=i)``).

``feature`` is an attribute of the module compared as ``str(getattr(module, feature))`` with the keys
(``in_features``, ``embedding_dim``, ``kernel_size`` -> ``"(3, 3)"``), or ``"fuzzy_name"``: the first key
that is a substring of the layer name; ``"*"`` is the fallback (see :func:`quantnoise_kernels.pq.get_param`).

In YAML each ``(feature, {value: param})`` pair is written ``{key: feature, value: {...}}``. A top-level
key that is present replaces the whole default of that key (as fairseq does); a missing one keeps it.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

__all__ = ["DEFAULT_CONFIG", "load_config_yaml", "normalize_param_config"]

# fairseq's built-in defaults (identical to examples/quant_noise/transformer_quantization_config.yaml):
# FFN 8, attention 4, embedding projections 4, embeddings 8; 256 centroids everywhere.
DEFAULT_CONFIG: dict[str, Any] = {
    "n_centroids": {
        "Linear": ("in_features", {"*": 256}),
        "Embedding": ("embedding_dim", {"*": 256}),
    },
    "block_sizes": {
        "Linear": ("fuzzy_name", {"fc": 8, "attn": 4, "emb": 4}),
        "Embedding": ("fuzzy_name", {"emb": 8}),
    },
    "layers_to_quantize": [
        r"decoder\.layers\.\d+\.fc[12]",
        r"decoder\.embed_tokens\.embeddings\.[012]\.[01]",
        r"decoder\.layers\.\d+\.self_attn\.(k_proj|v_proj|q_proj|out_proj)",
    ],
}

_TOP_KEYS = ("n_centroids", "block_sizes", "layers_to_quantize")
# A regex atom `\\` matches a literal backslash, which never occurs in module names; fairseq's own example
# YAML writes `decoder\\.layers` in plain scalars, so taken literally its patterns select nothing.
_DOUBLE_ESCAPE = re.compile(r"\\\\(?=[.dDwWsS])")


def normalize_param_config(config: Any, what: str) -> dict[str, tuple[str, dict]]:
    """Validate a ``{class name: (feature, {value: param})}`` mapping; also accepts ``{key:, value:}`` entries.

    Args:
        config: the mapping (a ``block_sizes`` or ``n_centroids`` configuration).
        what: its name, for error messages.

    Returns:
        A new dict ``{class name: (feature, {value: int param})}``.

    Raises:
        ValueError: naming the entry that is malformed (not a pair, non-positive or non-integer value).
    """
    if not isinstance(config, dict):
        raise ValueError(f"{what} must be a dict {{module class name: (feature, {{value: param}})}}, got {config!r}")
    out: dict[str, tuple[str, dict]] = {}
    for layer_type, entry in config.items():
        if isinstance(entry, dict):
            if set(entry) != {"key", "value"}:
                raise ValueError(
                    f"{what}[{layer_type!r}] must have exactly the keys 'key' and 'value', got {sorted(entry)}"
                )
            feature, params = entry["key"], entry["value"]
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            feature, params = entry
        else:
            raise ValueError(f"{what}[{layer_type!r}] must be (feature, {{value: param}}), got {entry!r}")
        if not isinstance(feature, str) or not feature:
            raise ValueError(f"{what}[{layer_type!r}]: feature must be a non-empty string, got {feature!r}")
        if not isinstance(params, dict) or not params:
            raise ValueError(f"{what}[{layer_type!r}]: values must be a non-empty dict, got {params!r}")
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{what}[{layer_type!r}][{key!r}] must be a positive integer, got {value!r}")
        out[str(layer_type)] = (feature, dict(params))
    return out


def _fix_double_escapes(pattern: str) -> str:
    return _DOUBLE_ESCAPE.sub(r"\\", pattern)


def _is_path(text: str) -> bool:
    """A one-line string that is not a YAML mapping (``key: value`` or ``{...}``) names a file."""
    return "\n" not in text and ": " not in text and not text.lstrip().startswith("{")


def load_config_yaml(path_or_str: str | os.PathLike | dict | None = None, *, fix_double_escapes: bool = True) -> dict:
    """Read an iPQ configuration in fairseq's YAML format, filling fairseq's defaults.

    Args:
        path_or_str: a path to a YAML file, a YAML document as a string, an already parsed dict, or None
            (the defaults). A one-line string that is not a YAML mapping (no ``key: value``, no ``{``) is a path.
        fix_double_escapes: rewrite ``\\\\.`` / ``\\\\d`` (a doubled backslash, as written in fairseq's example
            YAML plain scalars) to ``\\.`` / ``\\d`` in ``layers_to_quantize``. Taken literally, the doubled form
            requires a backslash in the layer name and never matches; fairseq itself applies it literally.

    Returns:
        ``{"n_centroids": {...}, "block_sizes": {...}, "layers_to_quantize": [regex, ...]}`` where each
        per-class entry is a ``(feature, {value: param})`` tuple, ready for ``quantize_model_``.

    Raises:
        ValueError: unknown top-level keys, malformed entries, or invalid regexes (the message names them).
        ImportError: PyYAML is not installed and a path or string was given.
        FileNotFoundError: the path does not exist.
        TypeError: ``path_or_str`` is of another type.
    """
    if path_or_str is None:
        data: Any = {}
    elif isinstance(path_or_str, dict):
        data = path_or_str
    else:
        try:
            import yaml
        except ImportError as error:  # pragma: no cover - pyyaml is in the test extras
            raise ImportError("load_config_yaml needs PyYAML: pip install pyyaml") from error
        if not isinstance(path_or_str, (str, os.PathLike)):
            kind = type(path_or_str).__name__
            raise TypeError(f"load_config_yaml: path_or_str must be a path, a YAML string, a dict or None, got {kind}")
        text = os.fspath(path_or_str)
        if isinstance(path_or_str, os.PathLike) or _is_path(text):
            with open(path_or_str, encoding="utf-8") as handle:  # FileNotFoundError names the path
                text = handle.read()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"load_config_yaml: path_or_str is not valid YAML ({error})") from error
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ValueError(f"load_config_yaml: the document must be a mapping with keys {_TOP_KEYS}, got {data!r}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"load_config_yaml: unknown top-level keys {unknown}; expected a subset of {list(_TOP_KEYS)}")

    config = copy.deepcopy(DEFAULT_CONFIG)
    for key in ("n_centroids", "block_sizes"):
        if key in data:
            config[key] = normalize_param_config(data[key], key)
    if "layers_to_quantize" in data:
        stages = data["layers_to_quantize"]
        if isinstance(stages, str):
            stages = [stages]
        if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
            raise ValueError(f"layers_to_quantize must be a list of regex strings, got {stages!r}")
        config["layers_to_quantize"] = list(stages)
    if fix_double_escapes:
        config["layers_to_quantize"] = [_fix_double_escapes(s) for s in config["layers_to_quantize"]]
    for i, pattern in enumerate(config["layers_to_quantize"]):
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"layers_to_quantize[{i}] is not a valid regex: {pattern!r} ({error})") from error
    return config

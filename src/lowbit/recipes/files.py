"""Reading and writing recipe mappings as YAML or TOML, chosen by file suffix.

YAML needs PyYAML. TOML is read with the standard ``tomllib`` (Python 3.11+)
or its backport ``tomli``; it is written with ``tomli_w`` when installed and
otherwise with `toml_dumps`, a small emitter for the shapes recipes have:
scalars, lists, flat tables and arrays of tables. TOML has no null, so
recipes write float tensors as the word ``"none"`` and leave unset keys out.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from lowbit.recipes.spec import RecipeError

try:  # Python 3.11+
    import tomllib as _toml_reader
except ImportError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml_reader
    except ImportError:
        _toml_reader = None

try:
    import tomli_w as _toml_writer
except ImportError:
    _toml_writer = None

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would accept a trailing newline
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def file_kind(path: str | Path) -> str:
    """``"yaml"`` or ``"toml"`` from the suffix of ``path``.

    Example:
        >>> file_kind("recipe.yml")
        'yaml'
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise RecipeError(
            f"cannot tell the recipe format of {str(path)!r} from its suffix {suffix!r}; "
            f"use one of {sorted(SUFFIXES)}")
    return SUFFIXES[suffix]


def _yaml():
    try:
        import yaml
    except ImportError as err:
        raise RecipeError("YAML recipes need PyYAML; pip install pyyaml, or use .toml") from err
    return yaml


def dumps(data: dict[str, Any], kind: str) -> str:
    """Text of ``data`` as ``"yaml"`` or ``"toml"``."""
    if kind == "yaml":
        return _yaml().safe_dump(data, sort_keys=False, allow_unicode=True,
                                 default_flow_style=False)
    if _toml_writer is not None:
        return _toml_writer.dumps(data)
    return toml_dumps(data)


def loads(text: str, kind: str, source: str = "<string>") -> dict[str, Any]:
    """Parse recipe text; errors name ``source`` and say what to fix."""
    if kind == "yaml":
        yaml = _yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(
                f"{source} is not valid YAML ({err}); note that glob patterns starting with "
                "'*' must be quoted, e.g. pattern: \"*.query\"") from err
    else:
        if _toml_reader is None:
            raise RecipeError("reading TOML on Python 3.10 needs tomli; pip install tomli")
        try:
            data = _toml_reader.loads(text)
        except _toml_reader.TOMLDecodeError as err:
            raise RecipeError(f"{source} is not valid TOML ({err})") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must hold a mapping of recipe keys, got "
                          f"{'nothing' if data is None else type(data).__name__}")
    return data


def save_data(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` to ``path`` in the format its suffix names; returns the path."""
    path = Path(path)
    text = dumps(data, file_kind(path))
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"cannot write recipe file {str(path)!r}: {err}") from err
    return path


def load_data(path: str | Path) -> dict[str, Any]:
    """Read the mapping stored in a ``.yaml`` / ``.yml`` / ``.toml`` file."""
    path = Path(path)
    kind = file_kind(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read recipe file {str(path)!r}: {err}") from err
    return loads(text, kind, source=str(path))


# --- a small TOML emitter ---------------------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise RecipeError(f"string {text!r} holds a lone surrogate, which TOML cannot store")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # "1.5", "1e-05", "inf", "-inf": all valid TOML floats
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if value is None:
        raise RecipeError("TOML has no null; leave the key out or write 'none'")
    raise RecipeError(f"cannot write a {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, dict) for v in value)


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML text for a mapping of scalars, lists, flat tables and arrays of tables.

    Deeper mappings are written as inline tables. Keys of one level keep their
    order, except that plain values come before tables (TOML requires it).

    Example:
        >>> print(toml_dumps({"name": "x", "weight": {"format": "int8"}}), end="")
        name = "x"
        <BLANKLINE>
        [weight]
        format = "int8"
    """
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not _is_table_array(v)]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{_toml_key(key)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
    for key, value in data.items():
        if _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_toml_key(key)}]]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"

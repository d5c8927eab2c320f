"""Writing a service's TOML configuration: the one writer for every generated file.

`dumps` turns a nested dict into TOML text that `tomllib` reads back to the same dict:
top-level values first, then each table (`[api]`), then each array of tables
(`[[api.clients]]`), in the dict's order. Values are strings, integers, floats, booleans
and lists of those; a dict is a table and a list of dicts an array of tables. Strings are
TOML basic strings: UTF-8 as it is, but for JSON's escapes of the quote, the backslash and the
control characters (which TOML shares) and DEL (which TOML forbids raw). A
`None` value is left out, so an optional setting appears only when it is given.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(doc: Mapping[str, Any], *, header: str = "") -> str:
    """`doc` as TOML text; `header` (each line prefixed with `# `) goes first."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _table(doc, path=(), lines=lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(doc: Mapping[str, Any], *, path: tuple[str, ...], lines: list[str]) -> None:
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in doc.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        lines.extend(["", f"[{_dotted((*path, key))}]"])
        _table(table, path=(*path, key), lines=lines)
    for key, items in arrays:
        for item in items:
            lines.extend(["", f"[[{_dotted((*path, key))}]]"])
            _table(item, path=(*path, key), lines=lines)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(k) for k in path)


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a TOML key must be a string, not {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: every character raw (TOML has no surrogate pairs, so a character
    beyond the BMP cannot be escaped the way JSON does) but the quote, the backslash and the
    control characters, which get JSON's escapes, and DEL, which JSON leaves as it is."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError("a configuration string cannot hold a lone surrogate")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a configuration number must be finite")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        if any(isinstance(v, Mapping) for v in value):
            raise TypeError("a list mixes tables and values")
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} to TOML")

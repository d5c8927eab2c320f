"""Reading a service's TOML configuration strictly, the same way for every part.

A setting nobody reads is a mistake (a typo, or an option from another version): every table
is read through a `Table`, which remembers the keys it was asked for, and `Table.finish()`
refuses any other key, naming it. Relative paths are relative to the configuration file;
durations in days and `host:port` addresses are checked in one place.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration file is missing something or holds a wrong value."""


def load_toml(path: Path) -> dict[str, Any]:
    """The TOML document in `path`; ConfigError if it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def read_config(path: Path, read: Callable[[Table, Path], T]) -> T:
    """`read(table, folder)` of the TOML file `path`, strictly: a missing or malformed
    setting, or one nothing read (`Table.finish`), is a ConfigError prefixed with `path`."""
    table = Table(load_toml(path))
    try:
        value = read(table, path.parent)
        table.finish()
    except KeyError as e:
        raise ConfigError(f"{path}: missing setting {e}") from e
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"{path}: {e}") from e
    return value


class Table(dict[str, Any]):
    """A TOML table that remembers which of its keys were read; nested tables (and tables
    in arrays) are Tables too, named by their place (`api.clients`)."""

    def __init__(self, doc: dict[str, Any], *, where: str = "") -> None:
        super().__init__({k: _wrap(v, f"{where}{k}") for k, v in doc.items()})
        self.where = where
        self._read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self._read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self._read.add(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._read.update(super().keys())
        return super().__iter__()

    def items(self) -> Any:
        self._read.update(super().keys())
        return super().items()

    def table(self, key: str, *, required: bool = False) -> Table:
        """The table under `key` (an empty one if absent and not `required`); any other
        shape is a ConfigError naming it (`[key]` given as a string, an array...)."""
        if key not in self:
            if required:
                raise ConfigError(f"missing setting {self.where}{key!r}")
            return Table({}, where=f"{self.where}{key}.")
        value = self[key]
        if not isinstance(value, Table):
            raise ConfigError(f"{self.where}{key} must be a table ([{self.where}{key}])")
        return value

    def tables(self, key: str) -> list[Table]:
        """The array of tables under `key` (`[[key]]`; none if absent); any other shape, or
        an entry that is not a table, is a ConfigError naming it."""
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Table) for v in value):
            raise ConfigError(
                f"{self.where}{key} must be an array of tables ([[{self.where}{key}]])"
            )
        return value

    def allow(self, *keys: str) -> None:
        """Accept `keys` without reading them (documented, informative settings)."""
        self._read.update(keys)

    def finish(self) -> None:
        """Refuse every key of this table and the tables in it that nothing read."""
        for key in sorted(super().keys()):
            if key not in self._read:
                raise ConfigError(f"unknown setting {self.where}{key!r}")
            value = super().__getitem__(key)
            for table in value if isinstance(value, list) else [value]:
                if isinstance(table, Table):
                    table.finish()


def _wrap(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return Table(value, where=f"{where}.")
    if isinstance(value, list):
        return [Table(v, where=f"{where}.") if isinstance(v, dict) else v for v in value]
    return value


def path_in(value: Any, *, base: Path, key: str) -> Path:
    """A path setting: absolute, or relative to `base` (the configuration file's folder)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a path")
    p = Path(value)
    return p if p.is_absolute() else base / p


def bind_address(value: Any, *, key: str) -> tuple[str, int]:
    """`host:port` (host defaults to 127.0.0.1) as (host, port)."""
    host, _, port = str(value).rpartition(":")
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} must be host:port with a port from 0 to 65535")
    return host or "127.0.0.1", int(port)


def days(value: Any, *, key: str) -> int:
    """A non-negative number of days, as whole seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key} must be a non-negative number of days")
    return int(value * 86400)

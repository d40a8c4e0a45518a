"""What the typed run files share: reading a JSON file of the run directory, checking its
``schema_version``, and reading keys with a clear error when one is missing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfl.errors import ConfigError, DataError


def read_json(path: Path) -> Any:
    """The parsed JSON file at ``path``; ``ConfigError`` naming the file when it is missing
    or not JSON (the message names the file, never the folder it is in)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path.name} is missing from the run directory; is this a MedFL "
                          "run directory (outputs/<run>)?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path.name} in the run directory is not valid JSON") from None


def check_version(data: Any, *, file: str, understood: tuple[int, ...],
                  default: int | None = None) -> int:
    """The ``schema_version`` of ``data``, refused with ``DataError`` unless understood.

    ``default``: the version a file without the key is taken to be (files written before
    the key existed); None to refuse such files too.
    """
    if not isinstance(data, Mapping):
        raise DataError(f"{file}: schema_version {type(data)!r} is not supported; expected "
                        f"{_versions(understood)}")
    got = data.get("schema_version", default)
    if isinstance(got, bool) or got not in understood:
        raise DataError(f"{file}: schema_version {got!r} is not supported; expected "
                        f"{_versions(understood)}")
    return int(got)


def _versions(understood: tuple[int, ...]) -> str:
    return " or ".join(str(v) for v in understood)


def require(data: Mapping[str, Any], key: str, *, where: str) -> Any:
    """``data[key]``, or ``DataError`` naming the key and where it was expected."""
    if not isinstance(data, Mapping) or key not in data:
        raise DataError(f"{where}: the key {key!r} is missing")
    return data[key]


def section(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """An optional object of ``data``: None when absent, null or not an object."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else None


def records(data: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
    """An optional list of objects of ``data``: its object entries, [] when absent."""
    value = data.get(key) if data is not None else None
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def strings(data: Mapping[str, Any] | None, key: str) -> list[str]:
    """An optional list of texts of ``data`` ([] when absent or null)."""
    value = data.get(key) if data is not None else None
    return [str(v) for v in value] if isinstance(value, list) else []

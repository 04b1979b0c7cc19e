"""The versioned JSON files galvatron_hf writes and reads: plans, hardware profiles and model profiles.

Pure Python, importable by every part. :class:`VersionedJson` is the one base of the three file types, so
they follow the same rules:

* Writing: the identifying keys lead (``schema`` where the type has one, then ``version``), then the
  dataclass fields in order; the file is written to a temporary name and renamed, so a reader never sees
  half a file.
* Reading, the header first: a type with a ``schema`` refuses a file of another schema; every type refuses
  a ``version`` other than the ones it reads, saying how to write a current file. A type that reads older
  versions (``JSON_OLDER_VERSIONS``) turns their data into the current version's (``_upgrade``) first.
* Reading, every object (nested ones included) holds exactly the keys its dataclass declares: an unknown
  key is refused with its name, its place in the file and the known keys, and so is a missing required key
  (``JSON_REQUIRED`` names keys with a Python default that a file must still hold) and a value of the
  wrong type (``"tp": "2"``).
  A key this version does not know may change what the file means, so it is never dropped silently; a
  format that gains keys gets a new version.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="VersionedJson")


def ordered_dict(record: Any, first: tuple[str, ...]) -> dict[str, Any]:
    """``asdict(record)`` with the ``first`` keys (e.g. schema, version) leading, so a reader sees them at once."""
    data = asdict(record)
    ordered = {key: data.pop(key) for key in first}
    ordered.update(data)
    return ordered


def write_json_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def to_json(data: dict[str, Any], indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent)


class VersionedJson:
    """Base of a frozen dataclass stored as a versioned JSON file (see the module docstring for the rules).

    A subclass declares a ``version: int`` field (and a ``schema: str`` field when ``JSON_SCHEMA`` is set)
    and the class attributes below; nested dataclass fields (``X``, ``X | None``, ``list[X]``,
    ``dict[str, X]``) are read with the same rules.
    """

    JSON_KIND: ClassVar[str]  # how messages name the file and its top level: "plan", "hardware", ...
    JSON_SCHEMA: ClassVar[str | None] = None  # the "schema" value, for types whose files carry one
    JSON_VERSION: ClassVar[int]
    JSON_ERROR: ClassVar[type[ValueError]]
    JSON_WRITE_HINT: ClassVar[str]  # the command that writes a current file; "{path}" is the file's path
    JSON_OLDER_VERSIONS: ClassVar[tuple[int, ...]] = ()  # read too, through ``_upgrade``

    # ----- writing ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return ordered_dict(self, self._header_keys())

    def to_json(self, indent: int | None = 2) -> str:
        return to_json(self.to_dict(), indent)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    # ----- reading ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[T], data: Any) -> T:
        if not isinstance(data, dict):
            raise cls.JSON_ERROR(f"a {cls.JSON_KIND} file must hold a JSON object, got {type(data).__name__}")
        cls._check_header(data)
        if data.get("version") != cls.JSON_VERSION:
            data = cls._upgrade(data)
        return read_dataclass(cls, data, cls.JSON_KIND, cls.JSON_ERROR)

    @classmethod
    def from_json(cls: type[T], text: str, source: str | Path | None = None) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            where = f"{source}" if source is not None else cls.JSON_KIND
            raise cls.JSON_ERROR(f"{where} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            hint = cls.JSON_WRITE_HINT.format(path=path)
            raise cls.JSON_ERROR(f"no {cls.JSON_KIND} file at {path}; write one with {hint}")
        return cls.from_json(path.read_text(), source=path)

    @classmethod
    def _header_keys(cls) -> tuple[str, ...]:
        return ("schema", "version") if cls.JSON_SCHEMA is not None else ("version",)

    @classmethod
    def _check_header(cls, data: dict[str, Any]) -> None:
        if cls.JSON_SCHEMA is not None and data.get("schema") != cls.JSON_SCHEMA:
            raise cls.JSON_ERROR(
                f"not a galvatron-hf {cls.JSON_KIND} file (schema {data.get('schema')!r}, expected "
                f"{cls.JSON_SCHEMA!r})"
            )
        if data.get("version") != cls.JSON_VERSION and data.get("version") not in cls.JSON_OLDER_VERSIONS:
            hint = cls.JSON_WRITE_HINT.format(path="FILE")
            raise cls.JSON_ERROR(
                f"{cls.JSON_KIND} file has version {data.get('version')!r}; this galvatron_hf reads version "
                f"{cls.JSON_VERSION}: write a current file with {hint}"
            )


    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The data of an older version (one of ``JSON_OLDER_VERSIONS``) as the current version reads it."""
        raise NotImplementedError(f"{cls.__name__} lists older versions but does not say how to read them")


def read_dataclass(cls: type, data: Any, where: str, error: type[ValueError]) -> Any:
    """Build dataclass ``cls`` from JSON ``data``, refusing unknown and missing keys; ``where`` names the
    place in the file (``plan.layers[3]``) for the messages."""
    if not isinstance(data, dict):
        raise error(f"{where} must be an object, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{where} has unknown keys {unknown}; known keys are {sorted(known)}")
    required = set(getattr(cls, "JSON_REQUIRED", ()))  # keys with a default in Python that a file must hold
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in data and (f.name in required or (f.default is MISSING and f.default_factory is MISSING))
    ]
    if missing:
        raise error(f"{where} is missing required keys {missing}")
    hints = _field_types(cls)
    kwargs = {name: _read_value(hints[name], value, f"{where}.{name}", error) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise error(f"{where}: {err}") from err


def _read_value(annotation: Any, value: Any, where: str, error: type[ValueError]) -> Any:
    """Read the nested dataclasses of one field; plain values (numbers, strings, their lists) pass as they are."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return read_dataclass(annotation, value, where, error)
    if origin in (typing.Union, types.UnionType) and value is not None:
        inner = [arg for arg in args if arg is not type(None)]
        return _read_value(inner[0], value, where, error) if len(inner) == 1 else value
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise error(f"{where} must be a list, got {type(value).__name__}")
        return [read_dataclass(args[0], item, f"{where}[{i}]", error) for i, item in enumerate(value)]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise error(f"{where} must be an object, got {type(value).__name__}")
        return {key: read_dataclass(args[1], item, f"{where}[{key!r}]", error) for key, item in value.items()}
    _check_plain(annotation, value, where, error)
    return value


PLAIN_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_plain(annotation: Any, value: Any, where: str, error: type[ValueError]) -> None:
    """Refuse a value of the wrong JSON type (``"tp": "2"``), naming the key: plain fields are used as they are."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            raise error(f"{where} must be one of {list(args)}, got {value!r}")
    elif origin is list and args and args[0] in PLAIN_TYPES:
        if not isinstance(value, list):
            raise error(f"{where} must be a list, got {value!r}")
        for index, item in enumerate(value):
            _check_plain(args[0], item, f"{where}[{index}]", error)
    elif annotation in PLAIN_TYPES and not _is_instance(value, annotation):
        raise error(f"{where} must be {PLAIN_TYPES[annotation]}, got {value!r}")


def _is_instance(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool  # JSON true is not the number 1
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)

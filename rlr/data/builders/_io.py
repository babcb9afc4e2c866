"""Reading upstream files record by record, with errors that name the file and line.

Record parsers are small pure functions `parse(record: dict) -> dict` that raise
`RecordError` with what is wrong ("missing key 'answer'"); the readers here add where
("/data/gsm8k/train.jsonl, line 7: missing key 'answer'") and raise `DataFormatError`.
"""
from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
_TYPE_NAMES = {str: "str", int: "int", list: "list", dict: "object", type(None): "null"}


class DataFormatError(ValueError):
    """A record of an upstream file is malformed; the message names the file and line."""


class RecordError(ValueError):
    """A parsed record is malformed; the reader re-raises it as DataFormatError with file and line."""


def open_text(path: pathlib.Path) -> TextIO:
    """Opens `path` as UTF-8 text, through gzip when its name ends in `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def get_field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
    """Returns `record[key]`, checking it is present and an instance of `kind`.

    Raises RecordError naming the key (as `prefix + key`, e.g. "question.problem") when
    the key is missing or the value has another JSON type (a bool is not an int).
    """
    if not isinstance(record, Mapping):
        where = f" at {prefix.rstrip('.')!r}" if prefix else ""
        raise RecordError(f"expected a JSON object{where}, got {type(record).__name__}")
    if key not in record:
        raise RecordError(f"missing key {prefix + key!r}")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise RecordError(f"key {prefix + key!r}: expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def parse_jsonl(path: pathlib.Path, parse: Callable[[dict], T]) -> Iterator[tuple[int, T]]:
    """Yields `(line_number, parse(record))` for each non-blank line of a (gzipped) JSONL file.

    Line numbers start at 1. Bad JSON, a line that is not a JSON object, or a
    RecordError from `parse` raise DataFormatError naming `path` and the line number.
    """
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield number, _parse_record(record, parse, where)


def parse_json_file(path: pathlib.Path, parse: Callable[[dict], T]) -> T:
    """Returns `parse(record)` for a file holding one JSON object; errors name `path` (and line)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}, line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    return _parse_record(record, parse, str(path))


def _parse_record(record: Any, parse: Callable[[dict], T], where: str) -> T:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    try:
        return parse(record)
    except RecordError as e:
        raise DataFormatError(f"{where}: {e}") from None

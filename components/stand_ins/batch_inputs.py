"""Batch prediction inputs, read as Vertex AI reads them.

One or more files (paths or glob patterns), ``instances_format``

* ``jsonl``: each non-blank line's JSON value is sent as it is;
* ``csv``: the first non-blank line of each file is the header; every other non-blank row
  becomes an array of its values: double-quoted values stay strings (``""`` inside quotes is
  one quote), unquoted values become floats, and an empty unquoted value becomes ``null``
  (a local choice: Vertex does not document empty cells). Cells cannot hold newlines.

``key_field`` removes that field (column) from the instance sent and the output line carries
``"key"`` instead of ``"instance"``. ``included_fields`` / ``excluded_fields`` (one or the
other) keep or drop fields of jsonl objects or csv columns before sending; with
``included_fields`` the fields are sent in that order (Vertex also copies excluded fields into
the output line when there is no key field; this runner does not). Blank lines are skipped.
A line that cannot be sent (malformed JSON or CSV, a non-number unquoted CSV value, a row
whose length differs from the header, a missing key field) is never lost: it becomes an
error line naming the file and line.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from components.stand_ins.errors import BatchInputError

FORMATS = ("jsonl", "csv")


class Record(NamedTuple):
    """One input line: the instance to send, and how its output line starts (a named tuple:
    as immutable as a frozen dataclass, and a third of the cost per line to make)."""

    instance: Any
    """The value sent to the server (``None`` when ``error`` is set)."""
    opening: bytes
    """The output line up to its prediction or error: the label ``{"instance": <sent
    value>}``, ``{"key": <key>}`` or, for a line that cannot be sent, ``{"instance": <the
    line's text>}``, encoded without its closing brace (``opening``)."""
    error: str = ""
    """Why the line cannot be sent; empty when it can."""


def opening(label: Mapping[str, Any]) -> bytes:
    """``label`` as JSON, left open for one more member: ``{"key": 7}`` -> ``b'{"key":7,'``."""
    return orjson.dumps(label)[:-1] + b","


@dataclass(frozen=True)
class FieldSelection:
    """``key_field`` and ``included_fields`` / ``excluded_fields`` (Vertex's instanceConfig)."""

    key_field: str = ""
    included: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.included and self.excluded:
            raise BatchInputError("give included_fields or excluded_fields, not both")
        if self.key_field in self.included:
            raise BatchInputError(
                f"key_field {self.key_field!r} cannot also be in included_fields: it is never "
                "sent to the model"
            )

    def apply(self, fields: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The value to send (the selected fields, key removed) and the output label."""
        if self.included:
            missing = [name for name in self.included if name not in fields]
            if missing:
                raise ValueError(f"no field(s) {missing} to include")
            sent = {name: fields[name] for name in self.included}
        else:
            sent = {k: v for k, v in fields.items() if k not in self.excluded}
        if not self.key_field:
            return sent, {"instance": sent}
        if self.key_field not in fields:
            raise ValueError(f"no key field {self.key_field!r}")
        sent.pop(self.key_field, None)
        return sent, {"key": fields[self.key_field]}

    @property
    def active(self) -> bool:
        return bool(self.key_field or self.included or self.excluded)


def resolve_inputs(instances: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files named by paths and glob patterns, in the order given (each pattern's matches
    sorted), without repeats.

    Raises:
        BatchInputError: a path that is not a readable file, or a pattern matching no file.
    """
    given = [instances] if isinstance(instances, str | Path) else list(instances)
    if not given:
        raise BatchInputError("no instances files given")
    files: list[Path] = []
    for item in map(str, given):
        if glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise BatchInputError(f"no instances file matches {item!r}")
        elif not Path(item).is_file():
            raise BatchInputError(f"instances file {item} does not exist or is not a file")
        else:
            matches = [Path(item)]
        files += [path for path in matches if path not in files]
    for path in files:
        if not os.access(path, os.R_OK):
            raise BatchInputError(f"instances file {path} is not readable")
    return files


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's non-blank lines with their 1-based numbers, line ends removed."""
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
    except OSError as exc:
        raise BatchInputError(f"cannot read instances file {path}: {exc}") from exc


def count_records(path: Path, instances_format: str) -> int:
    """How many instances ``read_records`` yields for the file (its header excluded)."""
    lines = sum(1 for _ in _lines(path))
    return max(lines - 1, 0) if instances_format == "csv" else lines


def split_csv_row(text: str) -> list[tuple[str, bool]]:
    """Split one CSV row into ``(value, quoted)`` pairs (RFC 4180 quoting, no newlines).

    Raises:
        ValueError: an unterminated quote, text after a closing quote, or a quote inside an
            unquoted value.
    """
    fields: list[tuple[str, bool]] = []
    at = 0
    while True:
        if text.startswith('"', at):
            parts, start = [], at + 1
            while True:
                end = text.find('"', start)
                if end < 0:
                    raise ValueError(f"unterminated quoted value at column {at + 1}")
                parts.append(text[start:end])
                if not text.startswith('"', end + 1):
                    break
                parts.append('"')
                start = end + 2
            fields.append(("".join(parts), True))
            at = end + 1
            if at < len(text) and text[at] != ",":
                raise ValueError(f"unexpected text after a quoted value at column {at + 1}")
        else:
            end = text.find(",", at)
            end = len(text) if end < 0 else end
            value = text[at:end]
            if '"' in value:
                raise ValueError(f"a quote inside an unquoted value at column {at + 1}")
            fields.append((value, False))
            at = end
        if at >= len(text):
            return fields
        at += 1  # the comma


def csv_value(value: str, quoted: bool) -> str | float | None:
    """Vertex's conversion of a CSV cell: quoted -> string, unquoted -> float, empty -> null.

    Raises:
        ValueError: an unquoted value that is not a finite number.
    """
    if quoted:
        return value
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"unquoted value {text!r} is not a number; double-quote strings")
    return number


def check_format(instances_format: str) -> None:
    """Raise ``BatchInputError`` unless the format is one this runner reads."""
    if instances_format not in FORMATS:
        raise BatchInputError(
            f"instances_format {instances_format!r} is not supported here; use one of {FORMATS}"
        )


def read_records(
    files: Sequence[Path], instances_format: str, fields: FieldSelection | None = None
) -> Iterator[Record]:
    """Every instance of the files, in order, as ``Record``s (see the module docstring).

    Raises:
        BatchInputError: unknown format, unreadable file, or a csv header without the key or
            included fields.
    """
    check_format(instances_format)
    reader = _csv_records if instances_format == "csv" else _jsonl_records
    for path in files:
        yield from reader(path, fields or FieldSelection())


def _jsonl_records(path: Path, fields: FieldSelection) -> Iterator[Record]:
    active = fields.active
    for number, line in _lines(path):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            text = line.decode("utf-8", "replace")
            message = f"{path} line {number} is not valid JSON: {exc}"
            yield Record(None, opening({"instance": text}), message)
            continue
        if not active:
            # The line itself is the instance's JSON (it parsed): sent and written as it is,
            # never re-encoded (encoding the instance again was most of the cost of writing
            # its output line), and held as bytes rather than as the parsed value.
            yield Record(orjson.Fragment(line), b'{"instance":' + line + b",")
        elif not isinstance(value, dict):
            message = (
                f"{path} line {number} is not a JSON object, needed for key_field/included/excluded"
            )
            yield Record(None, opening({"instance": value}), message)
        else:
            try:
                sent, label = fields.apply(value)
            except ValueError as exc:
                yield Record(None, opening({"instance": value}), f"{path} line {number}: {exc}")
            else:
                yield Record(sent, opening(label))


def _csv_records(path: Path, fields: FieldSelection) -> Iterator[Record]:
    lines = _lines(path)
    header_line = next(lines, None)
    if header_line is None:
        return
    try:
        names = [name for name, _ in split_csv_row(header_line[1].decode("utf-8"))]
    except (UnicodeDecodeError, ValueError) as exc:
        raise BatchInputError(
            f"{path}: the header (line {header_line[0]}) is not CSV: {exc}"
        ) from exc
    unknown = [
        n for n in (fields.key_field, *fields.included, *fields.excluded) if n and n not in names
    ]
    if unknown:
        raise BatchInputError(f"{path}: no column(s) {unknown} in the header {names}")
    for number, line in lines:
        text = line.decode("utf-8", "replace")
        try:
            cells = split_csv_row(line.decode("utf-8"))
            if len(cells) != len(names):
                raise ValueError(f"{len(cells)} values for the header's {len(names)} columns")
            row = {name: csv_value(*cell) for name, cell in zip(names, cells, strict=True)}
        except (UnicodeDecodeError, ValueError) as exc:
            message = f"{path} line {number} is not usable CSV: {exc}"
            yield Record(None, opening({"instance": text}), message)
            continue
        sent, label = fields.apply(row)
        values = list(sent.values())  # Vertex sends a csv row as an array
        yield Record(values, opening(label if fields.key_field else {"instance": values}))

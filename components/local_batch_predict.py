"""Local batch prediction with Vertex AI's semantics: the stand-in for GCPC's ModelBatchPredictOp.

``kfp.local`` cannot run GCPC's container components, so ``compile.py run-local`` predicts a
file of instances here. The runner, ``run_batch``, works against any server URL; the
``local_batch_predict`` component starts a registered model version's serving container the
way Vertex does for a batch job and runs it against that (``shared/notes/vertex-contract.md``
§4).

Inputs (§4.2): one or more files (paths or glob patterns), ``instances_format``

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

Output (§4.4), in the output directory:

* ``prediction.results-NNNNN-of-MMMMM``: one ``{"instance": ..., "prediction": ...}`` line
  per predicted instance (``{"key": ..., "prediction": ...}`` with ``key_field``);
* ``prediction.errors_stats-NNNNN-of-MMMMM``: one ``{"instance"|"key": ..., "error":
  {"code": ..., "message": ...}}`` line (a ``google.rpc.Status``) per instance that failed;
  only written for a shard that has errors, since readers glob ``prediction.errors_stats-*``;
* ``summary.json``: the ``BatchSummary``; ``.batch-state.json``: the resume fingerprint.

Shard ``NNNNN`` holds input records ``[NNNNN * shard_size, (NNNNN + 1) * shard_size)``, in input
order within each file (Vertex promises no order; this runner keeps it). Error messages follow
what Vertex records for a container that answers non-OK: ``Non-OK result 400 (<body>)``,
prefixed with ``Exceeded retries (N attempts): `` when retries ran out.

Sending: requests of ``batch_size`` instances, ``{"instances": [...], "parameters": {...}}``,
from ``workers`` threads sharing one ``httpx.Client``. 429, 5xx, timeouts, connection resets
and a 200 whose ``predictions`` are missing or not one per instance are retried with
exponential backoff and jitter (honouring ``Retry-After``); a batch that still fails, or gets
any other 4xx, is split in halves recursively, so that the good instances still get
predictions and only the bad ones become error lines with the server's message. A server that
refuses connections after every retry stops the run: nothing is written for the unfinished
shards, and running again resumes.

Resuming (SIGKILL at any moment loses and duplicates nothing): the input is partitioned
deterministically into shards; a shard's lines are kept in memory until all of them are known,
then its errors file and then its results file are each written to a temporary file, fsynced
and renamed into place (the directory fsynced after each step). The results file is the
shard's commit mark: a shard whose results file exists is complete and is skipped on a re-run;
one without is redone from scratch (its stale errors file is replaced or removed first, and
temporary files are deleted). ``.batch-state.json`` holds a fingerprint of the inputs (path,
SHA-256 and record count of each file) and of every setting that changes what is written
(format, key and field selection, parameters, shard size); a re-run with a different
fingerprint is refused. Batch size, workers, timeouts and the server URL may change between
runs. The final counts are read back from the files, not from memory. One run at a time may
write to an output directory (``.batch.lock``, an flock the kernel releases when the process
dies).
"""

import contextlib
import fcntl
import glob
import hashlib
import itertools
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
from kfp.dsl import Artifact, Input, Output

# Imported from its module, not from kfp.dsl: inside a running component kfp.dsl stops
# exporting ``component``, yet the component body imports this module (see components/train.py).
from kfp.dsl.component_decorator import component

from components.images import COMPONENTS_IMAGE
from components.local_registry import (
    LOCATION,
    PROJECT,
    RegisteredVersion,
    get_version,
    new_resource_id,
    now_rfc3339,
    write_json_atomically,
)

FORMATS = ("jsonl", "csv")
RESULTS_PREFIX = "prediction.results"
ERRORS_PREFIX = "prediction.errors_stats"
STATE_FILE = ".batch-state.json"
LOCK_FILE = ".batch.lock"
SUMMARY_FILE = "summary.json"
TEMP_SUFFIX = ".partial"
JOBS_PREFIX = f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/"
JOB_LABEL = "io.train-to-serve.batch-prediction-job"
"""Container label holding the batch prediction job id."""

DEFAULT_BATCH_SIZE = 64
"""Vertex's ``manualBatchTuningParameters.batchSize`` default."""
DEFAULT_WORKERS = 4
DEFAULT_SHARD_SIZE = 10_000
"""Instances per output file (and per unit of resumable work)."""
DEFAULT_TIMEOUT_S = 60.0
"""Per request; Vertex's batch timeout is undocumented, its online one is 60 s."""
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_MESSAGE_CHARS = 1000

# google.rpc.Code values used in error lines.
CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 1, 3, 4, 5
PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED = 7, 8, 9, 10
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
_RPC_CODES = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    409: ABORTED,
    412: FAILED_PRECONDITION,
    429: RESOURCE_EXHAUSTED,
    499: CANCELLED,
    500: INTERNAL,
    501: UNIMPLEMENTED,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}
"""HTTP status -> google.rpc.Code, as Google's APIs map them."""


class BatchPredictError(RuntimeError):
    """The batch could not run or finish; the message says why and what to do."""


class BatchInputError(BatchPredictError):
    """The inputs or settings are unusable as given (missing file, unknown field, ...)."""


# --- reading inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One input line: the instance to send, and how its output line starts."""

    instance: Any
    """The value sent to the server (``None`` when ``error`` is set)."""
    label: dict[str, Any]
    """``{"instance": <sent value>}``, ``{"key": <key>}``, or, for a line that cannot be sent,
    ``{"instance": <the line's text>}``."""
    error: str = ""
    """Why the line cannot be sent; empty when it can."""


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
    for number, line in _lines(path):
        where = f"{path} line {number}"
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            text = line.decode("utf-8", "replace")
            yield Record(None, {"instance": text}, f"{where} is not valid JSON: {exc}")
            continue
        if not fields.active:
            yield Record(value, {"instance": value})
        elif not isinstance(value, dict):
            message = f"{where} is not a JSON object, needed for key_field/included/excluded"
            yield Record(None, {"instance": value}, message)
        else:
            try:
                yield Record(*fields.apply(value))
            except ValueError as exc:
                yield Record(None, {"instance": value}, f"{where}: {exc}")


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
            yield Record(None, {"instance": text}, f"{path} line {number} is not usable CSV: {exc}")
            continue
        sent, label = fields.apply(row)
        values = list(sent.values())  # Vertex sends a csv row as an array
        yield Record(values, label if fields.key_field else {"instance": values})


# --- sending -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard each request is tried before its batch is split."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    """First delay; doubles per retry up to ``MAX_BACKOFF_S``, each drawn in [d/2, d]."""

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        ceiling = min(MAX_BACKOFF_S, self.backoff_s * 2**retry)
        jittered = random.uniform(ceiling / 2, ceiling)
        return min(MAX_BACKOFF_S, max(jittered, retry_after or 0.0))


@dataclass(frozen=True)
class _Failure:
    """A request that got no usable answer."""

    code: int
    message: str
    retryable: bool
    retry_after: float | None = None
    refused: bool = False
    """The server refused the connection: it is down, not choking on these instances."""


class ServerUnreachableError(BatchPredictError):
    """The server refused connections on every retry."""


class _Stopped(Exception):
    """The run is being stopped; a worker gives up its batch without recording anything."""


class _Sender:
    """Sends batches to one predict URL; retries, splits, and counts what it did."""

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        parameters: Mapping[str, Any] | None,
        policy: RetryPolicy,
        stop: threading.Event,
    ) -> None:
        self.client, self.url, self.policy, self.stop = client, url, policy, stop
        self.parameters = None if parameters is None else dict(parameters)
        self.requests = self.retries = self.splits = 0
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def predict(self, records: Sequence[Record]) -> list[tuple[bool, bytes]]:
        """One output line per record, in order, as ``(is_error, line)``."""
        if self.stop.is_set():
            raise _Stopped
        outcome = self._send_with_retries([record.instance for record in records])
        if isinstance(outcome, list):
            return [
                (False, _line(record.label, prediction=prediction))
                for record, prediction in zip(records, outcome, strict=True)
            ]
        if len(records) == 1:
            error = {"code": outcome.code, "message": outcome.message}
            return [(True, _line(records[0].label, error=error))]
        self._count("splits")
        half = len(records) // 2
        return self.predict(records[:half]) + self.predict(records[half:])

    def _send_with_retries(self, instances: list[Any]) -> list[Any] | _Failure:
        retry = 0
        while True:
            outcome = self._send(instances)
            if isinstance(outcome, list) or not outcome.retryable:
                return outcome
            if self.stop.is_set():
                raise _Stopped
            if retry >= self.policy.max_retries:
                if outcome.refused:
                    raise ServerUnreachableError(outcome.message)
                message = f"Exceeded retries ({retry + 1} attempts): {outcome.message}"
                return _Failure(outcome.code, message, retryable=False)
            self._count("retries")
            self.stop.wait(self.policy.delay(retry, outcome.retry_after))
            retry += 1

    def _send(self, instances: list[Any]) -> list[Any] | _Failure:
        body: dict[str, Any] = {"instances": instances}
        if self.parameters is not None:
            body["parameters"] = self.parameters
        self._count("requests")
        timeout = self.policy.timeout_s
        try:
            response = self.client.post(
                self.url,
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
                timeout=timeout,
            )
        except httpx.ConnectError as exc:
            message = f"cannot connect to {self.url}: {exc}"
            return _Failure(UNAVAILABLE, message, retryable=True, refused=True)
        except httpx.TimeoutException:
            message = f"no answer from {self.url} within {timeout:g} s"
            return _Failure(DEADLINE_EXCEEDED, message, retryable=True)
        except httpx.TransportError as exc:
            message = f"connection to {self.url} failed: {type(exc).__name__}: {exc}"
            return _Failure(UNAVAILABLE, message, retryable=True)
        return _predictions(response, len(instances))


def _predictions(response: httpx.Response, count: int) -> list[Any] | _Failure:
    """The response's predictions, or why they cannot be used."""
    status, text = response.status_code, _excerpt(response.text)
    if status != 200:
        code = _RPC_CODES.get(status, INTERNAL if status >= 500 else INVALID_ARGUMENT)
        retry_after = response.headers.get("retry-after", "")
        return _Failure(
            code,
            f"Non-OK result {status} ({text})",
            retryable=status == 429 or status >= 500,
            retry_after=float(retry_after) if retry_after.isdigit() else None,
        )
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list):
        message = f'answered 200 without a JSON "predictions" list ({text})'
        return _Failure(INTERNAL, message, retryable=True)
    if len(predictions) != count:
        message = f"answered {len(predictions)} predictions for {count} instances"
        return _Failure(INTERNAL, message, retryable=True)
    return predictions


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def _line(label: Mapping[str, Any], **value: Any) -> bytes:
    return orjson.dumps({**label, **value})


# --- shards, resume and output files ---------------------------------------------------------


def shard_file(prefix: str, index: int, count: int) -> str:
    """``prediction.results-00003-of-00010``."""
    return f"{prefix}-{index:05d}-of-{count:05d}"


@dataclass(frozen=True)
class _Plan:
    """What the run writes: the inputs, the settings that shape the output, and the shards."""

    settings: dict[str, Any]
    input_count: int
    shard_size: int

    @property
    def shard_count(self) -> int:
        return math.ceil(self.input_count / self.shard_size)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(orjson.dumps(self.settings, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def shard_records(self, index: int) -> int:
        return min(self.shard_size, self.input_count - index * self.shard_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plan(
    files: Sequence[Path],
    instances_format: str,
    fields: FieldSelection,
    parameters: Mapping[str, Any] | None,
    shard_size: int,
) -> _Plan:
    counts = [count_records(path, instances_format) for path in files]
    inputs = [
        {"file": str(path.resolve()), "sha256": _sha256(path), "records": n}
        for path, n in zip(files, counts, strict=True)
    ]
    settings = {
        "inputs": inputs,
        "instances_format": instances_format,
        "key_field": fields.key_field,
        "included_fields": list(fields.included),
        "excluded_fields": list(fields.excluded),
        "parameters": None if parameters is None else dict(parameters),
        "shard_size": shard_size,
    }
    return _Plan(settings, sum(counts), shard_size)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_lines_atomically(path: Path, lines: Sequence[bytes]) -> None:
    """Write to ``.<name>.partial``, fsync, rename over ``path``, fsync the directory."""
    temporary = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    with temporary.open("wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _open_output_dir(out: Path, plan: _Plan) -> set[int]:
    """Create or check the output directory; return the shards already complete there.

    Raises:
        BatchPredictError: the directory holds another batch's output.
    """
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("fingerprint") != plan.fingerprint:
            before = state.get("settings", {})
            changed = sorted(k for k in plan.settings if before.get(k) != plan.settings[k])
            raise BatchPredictError(
                f"{out} holds the output of a different batch prediction (changed since: "
                f"{', '.join(changed) or 'the fingerprint'}); resuming would mix two batches. "
                "Use a new output directory, or delete this one to start over."
            )
    else:
        if any(out.glob("prediction.*")):
            raise BatchPredictError(
                f"{out} holds prediction files but no {STATE_FILE}, so they cannot be told "
                "apart from this batch's; use a new output directory."
            )
        state = {"fingerprint": plan.fingerprint, "settings": plan.settings}
        write_json_atomically(state_path, state)
        _fsync_dir(out)
    for temporary in out.glob(f".*{TEMP_SUFFIX}"):
        temporary.unlink()
    count = plan.shard_count
    return {k for k in range(count) if (out / shard_file(RESULTS_PREFIX, k, count)).is_file()}


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold the output directory's lock for the run, or refuse to start."""
    with (out / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchPredictError(
                f"another batch prediction is writing to {out}; wait for it to end, or use "
                "another output directory"
            ) from None
        yield


@dataclass
class _Shard:
    """One shard being predicted: its records and, as they arrive, their output lines."""

    index: int
    records: list[Record]
    lines: list[tuple[bool, bytes] | None]
    pending: int = 0
    """Batches sent and not answered yet."""
    submitted: bool = False

    @property
    def complete(self) -> bool:
        return self.submitted and self.pending == 0

    def write(self, out: Path, count: int) -> None:
        """Commit the complete shard: its errors file (or its removal), then its results
        file, the commit mark."""
        lines = [entry for entry in self.lines if entry is not None]
        assert len(lines) == len(self.records), f"shard {self.index} is not complete"
        errors = [text for failed, text in lines if failed]
        results = [text for failed, text in lines if not failed]
        errors_path = out / shard_file(ERRORS_PREFIX, self.index, count)
        if errors:
            _write_lines_atomically(errors_path, errors)
        elif errors_path.exists():  # left by an attempt killed before its results were written
            errors_path.unlink()
            _fsync_dir(out)
        _write_lines_atomically(out / shard_file(RESULTS_PREFIX, self.index, count), results)


def _shards(records: Iterator[Record], plan: _Plan, done: set[int]) -> Iterator[_Shard]:
    """The shards still to do, each with its records (input lines that cannot be sent get
    their error lines at once)."""
    for index in range(plan.shard_count):
        chunk = list(itertools.islice(records, plan.shard_records(index)))
        if len(chunk) < plan.shard_records(index):
            raise BatchInputError(
                "the instances files changed while they were being read; run again once "
                "they no longer change"
            )
        if index in done:
            continue
        lines: list[tuple[bool, bytes] | None] = [
            (True, _line(r.label, error={"code": INVALID_ARGUMENT, "message": r.error}))
            if r.error
            else None
            for r in chunk
        ]
        yield _Shard(index, chunk, lines)


def _batches(shard: _Shard, batch_size: int) -> Iterator[list[int]]:
    """Positions of the shard's sendable records, ``batch_size`` at a time."""
    sendable = [i for i, line in enumerate(shard.lines) if line is None]
    for start in range(0, len(sendable), batch_size):
        yield sendable[start : start + batch_size]


def _predict_shards(
    shards: Iterator[_Shard],
    sender: _Sender,
    *,
    out: Path,
    shard_count: int,
    batch_size: int,
    workers: int,
    advance: Callable[[int], None],
) -> None:
    """Send every shard's batches with ``workers`` threads; write each shard once complete."""
    in_flight: dict[Future[list[tuple[bool, bytes]]], tuple[_Shard, list[int]]] = {}

    def settle() -> None:
        """Take in the answers of the batches that finished (waiting for at least one)."""
        finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        for future in finished:
            shard, positions = in_flight.pop(future)
            for position, line in zip(positions, future.result(), strict=True):
                shard.lines[position] = line
            shard.pending -= 1
            advance(len(positions))
            if shard.complete:
                shard.write(out, shard_count)

    with ThreadPoolExecutor(workers, thread_name_prefix="batch-predict") as pool:
        try:
            for shard in shards:
                advance(len(shard.records) - sum(line is None for line in shard.lines))
                for positions in _batches(shard, batch_size):
                    while len(in_flight) >= 2 * workers:
                        settle()
                    records = [shard.records[i] for i in positions]
                    in_flight[pool.submit(sender.predict, records)] = (shard, positions)
                    shard.pending += 1
                shard.submitted = True
                if shard.complete:
                    shard.write(out, shard_count)
            while in_flight:
                settle()
        except BaseException:
            sender.stop.set()  # ends the other workers' retries at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSummary:
    """What a batch prediction produced, counted from its output files."""

    output_dir: str
    input_files: list[str]
    input_count: int
    prediction_count: int
    error_count: int
    reconciled: bool
    """``input_count == prediction_count + error_count``, shard by shard."""
    shard_count: int
    resumed_shards: int
    """Shards already complete in the output directory when this run started."""
    requests: int
    retries: int
    splits: int
    """Batches split in halves to isolate failing instances."""
    seconds: float
    mismatched_shards: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``1000 instances in = 995 predictions + 5 errors (reconciled)``."""
        verdict = "reconciled" if self.reconciled else "DO NOT RECONCILE"
        return (
            f"{self.input_count} instances in = {self.prediction_count} predictions + "
            f"{self.error_count} errors ({verdict}); {self.requests} requests, "
            f"{self.retries} retries, {self.splits} splits in {self.seconds:.1f} s; "
            f"{self.resumed_shards} of {self.shard_count} shards were already done"
        )


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def count_outputs(out: Path, plan: _Plan) -> tuple[int, int, list[int]]:
    """Prediction and error lines on disk, and the shards whose lines do not add up."""
    predictions = errors = 0
    mismatched = []
    count = plan.shard_count
    for index in range(count):
        results = _count_lines(out / shard_file(RESULTS_PREFIX, index, count))
        failed = _count_lines(out / shard_file(ERRORS_PREFIX, index, count))
        if results + failed != plan.shard_records(index):
            mismatched.append(index)
        predictions, errors = predictions + results, errors + failed
    return predictions, errors, mismatched


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr advanced by instances done (a no-op when disabled)."""
    if not enabled:
        yield lambda _: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("batch prediction"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("instances", total=total)
        yield lambda done: bar.advance(task, done)


def run_batch(
    predict_url: str,
    instances: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    *,
    instances_format: str = "jsonl",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    parameters: Mapping[str, Any] | None = None,
    key_field: str = "",
    included_fields: Sequence[str] = (),
    excluded_fields: Sequence[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> BatchSummary:
    """Predict every instance of the input files through ``predict_url`` into ``output_dir``,
    resuming whatever an earlier run with the same inputs and settings left there.

    Args:
        predict_url: the server's predict route (``http://host:port/...:predict``).
        instances: instances files: paths and/or glob patterns.
        output_dir: where the ``prediction.*`` files go (created when missing).
        instances_format: ``jsonl`` or ``csv`` (see the module docstring).
        batch_size: instances per request.
        workers: concurrent requests.
        parameters: sent as ``parameters`` with every request (none when None).
        key_field, included_fields, excluded_fields: Vertex's ``instanceConfig``.
        timeout_s, max_retries, backoff_s: per-request limit and retry schedule.
        shard_size: instances per output file; the unit of work that a re-run resumes.
        progress: show a progress bar and the final counts on stderr.

    Returns:
        The summary (also written to ``<output_dir>/summary.json``). Check ``reconciled``.

    Raises:
        BatchInputError: bad settings, missing or unreadable inputs, no instances.
        BatchPredictError: the output directory holds another batch; the server refused
            connections after every retry (run again to resume).
    """
    for name, value in (
        ("batch_size", batch_size),
        ("workers", workers),
        ("shard_size", shard_size),
    ):
        if value < 1:
            raise BatchInputError(f"{name} must be at least 1, got {value}")
    check_format(instances_format)
    fields = FieldSelection(key_field, tuple(included_fields), tuple(excluded_fields))
    files = resolve_inputs(instances)
    plan = _plan(files, instances_format, fields, parameters, shard_size)
    if plan.input_count == 0:
        raise BatchInputError(f"no instances in {', '.join(map(str, files))}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    policy = RetryPolicy(timeout_s, max_retries, backoff_s)
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    with (
        _exclusive(out),
        httpx.Client(limits=limits) as client,
        _progress_bar(progress, plan.input_count) as advance,
    ):
        done = _open_output_dir(out, plan)
        sender = _Sender(client, predict_url, parameters, policy, threading.Event())
        done_records = sum(plan.shard_records(index) for index in done)
        advance(done_records)
        try:
            _predict_shards(
                _shards(read_records(files, instances_format, fields), plan, done),
                sender,
                out=out,
                shard_count=plan.shard_count,
                batch_size=batch_size,
                workers=workers,
                advance=advance,
            )
        except ServerUnreachableError as exc:
            raise BatchPredictError(
                f"{exc} (after {max_retries} retries); the complete shards are kept in {out}: "
                "run again with the same output directory to resume"
            ) from exc
        predictions, errors, mismatched = count_outputs(out, plan)
        summary = BatchSummary(
            output_dir=str(out.resolve()),
            input_files=[str(path) for path in files],
            input_count=plan.input_count,
            prediction_count=predictions,
            error_count=errors,
            reconciled=not mismatched and predictions + errors == plan.input_count,
            shard_count=plan.shard_count,
            resumed_shards=len(done),
            requests=sender.requests,
            retries=sender.retries,
            splits=sender.splits,
            seconds=round(time.monotonic() - started, 3),
            mismatched_shards=mismatched,
        )
        write_json_atomically(out / SUMMARY_FILE, summary.to_json())
    if progress:
        from rich.console import Console

        Console(stderr=True).print(summary.describe(), highlight=False, soft_wrap=True)
    return summary


# --- a registered model version, served the way Vertex serves a batch job ---------------------


@contextlib.contextmanager
def serve_version(version: RegisteredVersion, job_id: str) -> Iterator[str]:
    """Run ``version``'s model server for batch job ``job_id`` and yield its predict URL; stop
    and remove it afterwards, whatever happens.

    Today the server is the version's serving container, started like an endpoint's
    (``local_endpoint.start_serving_container``: ``AIP_*`` variables, ``containerSpec``, the
    model mounted read-only), labelled ``io.train-to-serve.batch-prediction-job=<job_id>``.
    In process mode (``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``) ``detect_engine`` gives the
    ``ProcessEngine`` and the same server runs as a local process instead
    (``components/server_process.py``).

    Raises:
        EndpointError: the container did not start or never became healthy.
        EngineNotFoundError: no podman or docker works.
    """
    from components import container_engine as ce
    from components.local_endpoint import start_serving_container, stop_container, wait_until_ready

    served = start_serving_container(
        version,
        ce.detect_engine(),
        resource_id=job_id,
        deployed_model_id=job_id,
        name=f"tts-batch-{job_id}",
        label=f"{JOB_LABEL}={job_id}",
    )
    try:
        wait_until_ready(served, f"batch prediction job {job_id} of {version.resource_name}")
        yield served.url
    finally:
        with contextlib.suppress(ce.ContainerEngineError):
            stop_container(served.container)
        served.container.remove()


def results_directory_name(display_name: str, created: datetime) -> str:
    """``prediction-<model display name>-<create time>``, the time as Vertex writes it in
    output paths (``2026_01_31T12_00_00_123Z``)."""
    stamp = created.strftime("%Y_%m_%dT%H_%M_%S_") + f"{created.microsecond // 1000:03d}Z"
    return f"prediction-{display_name.replace('/', '_')}-{stamp}"


def batch_predict_version(
    model_resource: str,
    registry_dir: str | Path,
    instances: str | Sequence[str],
    output_dir: str | Path,
    *,
    instances_format: str = "jsonl",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    key_field: str = "",
    included_fields: Sequence[str] = (),
    excluded_fields: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    display_name: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Run a local batch prediction job of a registered model version, as Vertex runs one.

    Results go to ``<output_dir>/prediction-<model display name>-<create time>/``.

    Returns:
        The job as a Vertex ``BatchPredictionJob`` resource (camelCase; counts as integers).

    Raises:
        RegistryError: unknown model version.
        BatchInputError, BatchPredictError: see ``run_batch``; also when the counts do not
            reconcile.
        EndpointError: the serving container did not start or become healthy.
    """
    version = get_version(registry_dir, model_resource)
    job_id = new_resource_id()
    created = datetime.now(timezone.utc)
    results_dir = Path(output_dir) / results_directory_name(version.display_name, created)
    job: dict[str, Any] = {
        "name": JOBS_PREFIX + job_id,
        "displayName": display_name or f"{version.display_name}-batch-predict",
        "model": version.resource_name,
        "modelVersionId": version.version_id,
        "inputConfig": {
            "instancesFormat": instances_format,
            "gcsSource": {"uris": [instances] if isinstance(instances, str) else list(instances)},
        },
        "instanceConfig": {
            "keyField": key_field,
            "includedFields": list(included_fields),
            "excludedFields": list(excluded_fields),
        },
        "modelParameters": parameters,
        "manualBatchTuningParameters": {"batchSize": batch_size},
        "outputInfo": {"gcsOutputDirectory": str(results_dir)},
        "createTime": created.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }
    with serve_version(version, job_id) as url:
        job["startTime"] = now_rfc3339()
        summary = run_batch(
            url,
            instances,
            results_dir,
            instances_format=instances_format,
            batch_size=batch_size,
            workers=workers,
            parameters=parameters,
            key_field=key_field,
            included_fields=included_fields,
            excluded_fields=excluded_fields,
            progress=progress,
        )
    job["endTime"] = now_rfc3339()
    job["completionStats"] = {
        "successfulCount": summary.prediction_count,
        "failedCount": summary.error_count,
        "incompleteCount": summary.input_count - summary.prediction_count - summary.error_count,
    }
    job["state"] = "JOB_STATE_SUCCEEDED" if summary.reconciled else "JOB_STATE_FAILED"
    job["summary"] = summary.to_json()
    if not summary.reconciled:
        raise BatchPredictError(
            f"batch prediction job {job_id}: the output does not account for every input "
            f"({summary.describe()}; shards {summary.mismatched_shards}); see {results_dir}"
        )
    return job


# --- the component -------------------------------------------------------------------------


@component(base_image=COMPONENTS_IMAGE)
def local_batch_predict(
    model: Input[Artifact],
    registry_dir: str,
    instances: str,
    output_dir: str,
    batch_prediction_job: Output[Artifact],
    gcs_output_directory: Output[Artifact],
    instances_format: str = "jsonl",
    batch_size: int = 64,
    workers: int = 4,
    key_field: str = "",
    included_fields: list = [],  # noqa: B006 (KFP needs a literal default)
    excluded_fields: list = [],  # noqa: B006
    model_parameters: dict = {},  # noqa: B006
    job_display_name: str = "",
):
    """Runs a local batch prediction job of a model version from the local registry.

    The local stand-in for GCPC's ``ModelBatchPredictOp`` (which ``kfp.local`` cannot run):
    it starts the version's serving container the way Vertex AI does for a batch job
    (``AIP_*`` variables, ``containerSpec``, the model mounted read-only), waits until its
    health route answers 200, sends the instances in batches of ``batch_size`` from
    ``workers`` concurrent requests (retrying 429/5xx/timeouts with backoff, splitting
    failing batches to isolate bad instances), then stops and removes the container, whatever
    happened. See ``components/local_batch_predict.py``.

    As on Vertex, instances that fail become error lines and the job still succeeds; check
    ``completionStats.failedCount``. The task fails when the output does not account for
    every input line.

    Args:
        model: The ``local_model_upload`` output (its ``metadata.resourceName``,
            ``projects/local/locations/local/models/ID@VERSION``, is the version used).
        registry_dir: Directory of the local registry holding the model.
        instances: The instances file, or a glob pattern of files (``gcs_source_uris``).
        output_dir: Where the job's directory is created (``gcs_destination_output_uri_prefix``).
        instances_format: ``jsonl`` (each line's JSON value is an instance) or ``csv`` (header
            row; double-quoted values are strings, unquoted ones floats, empty ones null).
        batch_size: Instances per request to the server
            (``manual_batch_tuning_parameters_batch_size``).
        workers: Concurrent requests to the server.
        key_field: A field (column) removed from each instance and written as ``key`` in
            its output line instead of the instance.
        included_fields: Fields (columns) to send, in this order; the others are dropped.
        excluded_fields: Fields (columns) to drop; not together with ``included_fields``.
        model_parameters: Sent as ``parameters`` with every request (none when empty).
        job_display_name: The job's display name (default: ``<model>-batch-predict``).

    Returns:
        batch_prediction_job: The job. ``metadata`` mirrors Vertex's ``BatchPredictionJob``:
            ``resourceName`` (``projects/local/locations/local/batchPredictionJobs/ID``),
            ``outputInfo.gcsOutputDirectory``, ``completionStats`` (``successfulCount``,
            ``failedCount``, ``incompleteCount``), ``state``, times, and ``summary`` (the
            runner's counts, requests, retries and splits). ``uri`` is the results directory.
        gcs_output_directory: The results directory
            (``<output_dir>/prediction-<model display name>-<create time>/``), holding
            ``prediction.results-NNNNN-of-MMMMM`` and ``prediction.errors_stats-NNNNN-of-MMMMM``.
    """
    import logging

    from components.local_batch_predict import BatchInputError, batch_predict_version

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request
    resource = model.metadata.get("resourceName")
    if not resource:
        raise BatchInputError(
            f"model ({model.uri}) has no metadata.resourceName; pass local_model_upload's output"
        )
    job = batch_predict_version(
        resource,
        registry_dir,
        instances,
        output_dir,
        instances_format=instances_format,
        batch_size=batch_size,
        workers=workers,
        key_field=key_field,
        included_fields=included_fields,
        excluded_fields=excluded_fields,
        parameters=model_parameters or None,
        display_name=job_display_name,
    )
    results_dir = job["outputInfo"]["gcsOutputDirectory"]
    batch_prediction_job.uri = results_dir
    batch_prediction_job.metadata.update(
        {"resourceName": job.pop("name"), "gcsOutputDirectory": results_dir, **job}
    )
    gcs_output_directory.uri = results_dir
    stats = job["completionStats"]
    print(
        f"batch prediction {batch_prediction_job.metadata['resourceName']} of {resource}: "
        f"{stats['successfulCount']} predictions, {stats['failedCount']} errors in {results_dir}"
    )

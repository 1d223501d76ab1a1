"""The batch prediction runner: every instance of the input files, through any server's URL.

Output, in the output directory:

* ``prediction.results-NNNNN-of-MMMMM``: one ``{"instance": ..., "prediction": ...}`` line
  per predicted instance (``{"key": ..., "prediction": ...}`` with ``key_field``); a jsonl
  line sent whole is copied into ``"instance"`` as written (same JSON, its own spacing);
* ``prediction.errors_stats-NNNNN-of-MMMMM``: one ``{"instance"|"key": ..., "error":
  {"code": ..., "message": ...}}`` line (a ``google.rpc.Status``) per instance that failed;
  only written for a shard that has errors, since readers glob ``prediction.errors_stats-*``;
* ``summary.json``: the ``BatchSummary``; ``.batch-state.json``: the resume fingerprint.

Shard ``NNNNN`` holds input records ``[NNNNN * shard_size, (NNNNN + 1) * shard_size)``, in input
order within each file (Vertex promises no order; this runner keeps it). Inputs are read by
``batch_inputs`` and sent by ``sender``. A server that refuses connections after every retry
stops the run: nothing is written for the unfinished shards, and running again resumes.

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

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from components.files import TEMP_SUFFIX, fsync_dir, write_bytes_atomically, write_json_atomically
from components.stand_ins.batch_inputs import (
    FieldSelection,
    Record,
    check_format,
    count_records,
    read_records,
    resolve_inputs,
)
from components.stand_ins.errors import BatchInputError, BatchPredictError
from components.stand_ins.sender import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    INVALID_ARGUMENT,
    RetryPolicy,
    Sender,
    ServerUnreachableError,
    output_line,
)
from serving_image.server import artifact

RESULTS_PREFIX = "prediction.results"
ERRORS_PREFIX = "prediction.errors_stats"
STATE_FILE = ".batch-state.json"
LOCK_FILE = ".batch.lock"
SUMMARY_FILE = "summary.json"
DEFAULT_BATCH_SIZE = 64
"""Vertex's ``manualBatchTuningParameters.batchSize`` default."""
DEFAULT_WORKERS = 4
DEFAULT_SHARD_SIZE = 10_000
"""Instances per output file (and per unit of resumable work)."""


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


def _plan(
    files: Sequence[Path],
    instances_format: str,
    fields: FieldSelection,
    parameters: Mapping[str, Any] | None,
    shard_size: int,
) -> _Plan:
    counts = [count_records(path, instances_format) for path in files]
    inputs = [
        {"file": str(path.resolve()), "sha256": artifact.sha256_file(path), "records": n}
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


def _write_lines(path: Path, lines: Sequence[bytes]) -> None:
    """Write a shard file in one durable step, the directory entry included."""
    write_bytes_atomically(path, b"\n".join(lines) + b"\n" if lines else b"", sync_dir=True)


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
        fsync_dir(out)
    for temporary in out.glob(f".*{TEMP_SUFFIX}"):  # left by a writer that was killed
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


YOUNG_COLLECTION_THRESHOLD = 50_000
"""Allocations between two collections of the youngest generation during a run (Python's
default is 700)."""


@contextlib.contextmanager
def _rarer_collections() -> Iterator[None]:
    """Collect the youngest generation every ``YOUNG_COLLECTION_THRESHOLD`` allocations
    while the run lasts: it allocates a few objects per instance, none in a cycle, and
    Python's default collections took a sixth of a 100k-instance run to free almost nothing
    (bench/batch_predict.py). The threshold is restored afterwards, never lowered."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(YOUNG_COLLECTION_THRESHOLD, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


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
            _write_lines(errors_path, errors)
        elif errors_path.exists():  # left by an attempt killed before its results were written
            errors_path.unlink()
            fsync_dir(out)
        _write_lines(out / shard_file(RESULTS_PREFIX, self.index, count), results)


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
            (True, output_line(r.opening, error={"code": INVALID_ARGUMENT, "message": r.error}))
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
    sender: Sender,
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
        _rarer_collections(),
        httpx.Client(limits=limits) as client,
        _progress_bar(progress, plan.input_count) as advance,
    ):
        done = _open_output_dir(out, plan)
        sender = Sender(client, predict_url, parameters, policy, threading.Event())
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

"""Benchmark local batch prediction against in-process prediction of the same rows.

Run from the repository root (about two minutes with the defaults on 2 cores):

    .venv/bin/python bench/batch_predict.py                     # 100k instances
    .venv/bin/python bench/batch_predict.py --instances 20000 --batch-sizes 64 500

What it does:

1. trains the penguins model with ``train_and_export`` (or uses ``--model-dir``);
2. builds ``--instances`` instances by repeating ``instances_sample.jsonl`` and writes them as
   one jsonl file;
3. in-process reference: the server's own predictor, on each path (the compiled graph and
   the scikit-learn pipeline), predicts the same rows (validated columns in, the server's
   label-and-probabilities answers out), once in one call over all rows and once
   ``--batch-sizes`` rows per call;
4. starts the model server as a local process exactly as the image runs it
   (``python -m serving_image.server`` with ``AIP_*`` variables, ``SERVING_WORKERS``; it serves
   the compiled graph, verified at export) and runs ``compile.py batch-predict`` against it
   for each batch size, in its own process as a user runs it, checking that every line
   reconciles and that the predictions equal the in-process ones of the path served;
5. prints one Markdown table (each cell the fastest of ``--repeats`` runs) and the goal line:
   the best batch run reaches at least half of one in-process scikit-learn call over all
   rows (the model as trained; the compiled call's share is printed beside it).

Measured with 100k instances on a quiet 2-CPU machine, 4 client workers,
``SERVING_WORKERS=2`` (the README has the table): one scikit-learn call over all rows ~220k/s,
one compiled call ~250k/s; through the server ~163k/s at batch 5000 (74 % and 65 %). Client
and server share the two CPUs; the client's reading, JSON and output writing are the wall.
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components.runners import free_local_port  # noqa: E402
from components.stand_ins import RESULTS_PREFIX  # noqa: E402
from components.stand_ins.batch_runner import SUMMARY_FILE  # noqa: E402
from serving_image.server import artifact  # noqa: E402
from serving_image.server.compiled import COMPILED, SCIKIT_LEARN  # noqa: E402
from serving_image.server.predictions import (  # noqa: E402
    SELF_CHECK_ABS_TOL,
    SELF_CHECK_REL_TOL,
    json_difference,
)
from serving_image.server.predictor import load_predictor  # noqa: E402
from serving_image.server.validation import parse_predict_request  # noqa: E402


@dataclass
class Row:
    """One measured way of predicting every instance."""

    method: str
    batch: int | None
    seconds: float
    instances: int

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def make_instances(model_dir: Path, count: int, path: Path) -> list[Any]:
    """``count`` instances, the model's sample repeated; written to ``path`` as jsonl."""
    sample = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    rows = [sample[i % len(sample)] for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def in_process(
    model_dir: Path, rows: list[Any], batch: int | None, choice: str, repeats: int
) -> tuple[Row, list[Any]]:
    """The server's own predictor on ``choice``'s path (``SERVING_PREDICTOR``: the compiled
    graph or the scikit-learn pipeline) over ``batch`` rows per call (all in one call when
    None): columns to features, predict, answers shaped as the server's. The requests are
    decoded and validated beforehand, untimed: this is the model call a server cannot avoid.
    The fastest of ``repeats`` passes counts."""
    predictor, _ = load_predictor(model_dir, choice)
    size = batch or len(rows)
    requests = [
        parse_predict_request(
            orjson.dumps({"instances": rows[start : start + size]}), predictor.schema
        )
        for start in range(0, len(rows), size)
    ]
    seconds = float("inf")
    for _ in range(repeats):
        answers: list[Any] = []
        started = time.perf_counter()
        for request in requests:
            answers += predictor(request)
        seconds = min(seconds, time.perf_counter() - started)
    return Row(f"in-process, {choice}", batch, seconds, len(rows)), answers


def start_server(
    model_dir: Path, workers: int, log: Path
) -> tuple[subprocess.Popen[bytes], str, str]:
    """``python -m serving_image.server`` on a free port; returns it, its predict URL and the
    path it serves (``SERVING_PREDICTOR=auto``: the compiled graph when verified)."""
    port = free_local_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    env.update(
        AIP_HTTP_PORT=str(port),
        AIP_STORAGE_URI=str(model_dir),
        AIP_HEALTH_ROUTE="/health",
        AIP_PREDICT_ROUTE="/predict",
        SERVING_WORKERS=str(workers),
        PYTHONPATH=str(REPO_ROOT),
    )
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving_image.server"],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process, f"http://127.0.0.1:{port}/predict", _serving(log)
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server was not healthy within 120 s; see {log}")


def _serving(log: Path, timeout: float = 10.0) -> str:
    """The path the server says it serves (its ``predictor`` log field; the line may reach
    the log just after health turns 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                if predictor := json.loads(line).get("predictor"):
                    return str(predictor)
        time.sleep(0.05)
    raise RuntimeError(f"the server did not say which predictor serves; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def batch_run(
    url: str, instances: Path, out: Path, batch: int, workers: int, expected: list[Any]
) -> Row:
    """``compile.py batch-predict`` through the server, in its own process as a user runs it
    (not in this one, whose reference rows and answers would weigh on the runner's garbage
    collections); the run's own time from its ``summary.json``. Checks the counts, and the
    predictions against the in-process ones of the path it serves (within the server's
    self-check tolerance)."""
    command = [
        sys.executable,
        str(REPO_ROOT / "compile.py"),
        "batch-predict",
        f"--url={url}",
        f"--instances={instances}",
        f"--output-dir={out}",
        f"--batch-size={batch}",
        f"--workers={workers}",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"batch of {batch}: exit {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    if not summary["reconciled"] or summary["error_count"]:
        raise RuntimeError(f"batch of {batch}: {summary}")
    got = [
        json.loads(line)["prediction"]
        for path in sorted(out.glob(f"{RESULTS_PREFIX}-*"))
        for line in path.read_text().splitlines()
    ]
    difference = json_difference(
        expected, got, rel_tol=SELF_CHECK_REL_TOL, abs_tol=SELF_CHECK_ABS_TOL
    )
    if difference:
        raise RuntimeError(f"batch of {batch}: predictions differ from in-process: {difference}")
    return Row(
        f"batch-predict -> server ({workers} client workers)", batch, summary["seconds"], len(got)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 500, 2000, 5000])
    parser.add_argument("--workers", type=int, default=4, help="concurrent client requests")
    parser.add_argument("--server-workers", type=int, default=2, help="SERVING_WORKERS")
    parser.add_argument("--model-dir", type=Path, help="a trained model (default: train one)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each cell; the fastest counts"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: run each cell at least once")

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from components.training import train_and_export

            model_dir = work / "model"
            train_and_export("penguins", model_dir)
        rows = make_instances(model_dir, args.instances, work / "instances.jsonl")

        results: list[Row] = []
        answers: dict[str, list[Any]] = {}
        for choice in PATHS:
            whole, answers[choice] = in_process(model_dir, rows, None, choice, args.repeats)
            results += [whole] + [
                in_process(model_dir, rows, batch, choice, args.repeats)[0]
                for batch in args.batch_sizes
            ]
        process, url, serving = start_server(model_dir, args.server_workers, work / "server.log")
        try:
            for batch in args.batch_sizes:
                runs = [
                    batch_run(
                        url,
                        work / "instances.jsonl",
                        work / f"out-{batch}-{attempt}",
                        batch,
                        args.workers,
                        answers[serving],
                    )
                    for attempt in range(args.repeats)
                ]
                results.append(min(runs, key=lambda row: row.seconds))
        finally:
            stop_server(process)
    print_table(results, serving, args)


PATHS = (COMPILED, SCIKIT_LEARN)
"""The server's two predictors, measured in-process each."""
GOAL_SHARE = 0.5
"""The goal: the best batch run reaches this share of one in-process call over all rows."""


def print_table(rows: list[Row], serving: str, args: argparse.Namespace) -> None:
    whole = {row.method: row.rate for row in rows if row.batch is None}
    same_batch = {(row.method, row.batch): row.rate for row in rows}
    columns = " | ".join(f"vs in-process {choice}, same batch" for choice in PATHS)
    alls = " | ".join(f"vs one {choice} call over all rows" for choice in PATHS)
    print(
        f"\n{args.instances} penguins instances, {os.cpu_count()} CPUs, server "
        f"SERVING_WORKERS={args.server_workers}, serving the {serving} path\n"
    )
    print(f"| method | batch | seconds | instances/s | {columns} | {alls} |")
    print("|---|---|---|---|" + "---|" * 2 * len(PATHS))
    for row in rows:
        same = [
            f"{row.rate / same_batch[(f'in-process, {c}', row.batch)]:.0%}"
            if row.batch is not None and not row.method.startswith("in-process")
            else ""
            for c in PATHS
        ]
        shares = [f"{row.rate / whole[f'in-process, {c}']:.0%}" for c in PATHS]
        print(
            f"| {row.method} | {row.batch or 'all'} | {row.seconds:.2f} | {row.rate:,.0f} | "
            f"{' | '.join(same)} | {' | '.join(shares)} |"
        )
    best = max(
        (row for row in rows if not row.method.startswith("in-process")), key=lambda r: r.rate
    )
    reference = whole[f"in-process, {SCIKIT_LEARN}"]
    share = best.rate / reference
    print(
        f"\nGoal (local batch over {args.instances:,} rows >= {GOAL_SHARE:.0%} of one in-process "
        f"{SCIKIT_LEARN} call over all rows, the model as trained): "
        f"{'met' if share >= GOAL_SHARE else 'NOT met'}; best batch {best.batch}: "
        f"{best.rate:,.0f} instances/s = {share:.0%} of {reference:,.0f}/s "
        f"({best.rate / whole[f'in-process, {COMPILED}']:.0%} of one compiled call)"
    )


if __name__ == "__main__":
    main()

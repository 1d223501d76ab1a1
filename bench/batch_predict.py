"""Benchmark local batch prediction against in-process prediction of the same rows.

Run from the repository root (about a minute with the defaults on 2 cores):

    .venv/bin/python bench/batch_predict.py                     # 100k instances
    .venv/bin/python bench/batch_predict.py --instances 20000 --batch-sizes 64 500

What it does:

1. trains the penguins model with ``train_and_export`` (or uses ``--model-dir``);
2. builds ``--instances`` instances by repeating ``instances_sample.jsonl`` and writes them as
   one jsonl file;
3. in-process reference: the loaded scikit-learn pipeline predicts the same rows (a DataFrame,
   the preprocessing once, then the estimator's ``predict`` + ``predict_proba``: the
   server's label-and-probabilities answer, computed the fastest way), once on all rows at
   once and once ``--batch-sizes`` rows at a time;
4. starts the model server as a local process exactly as the image runs it
   (``python -m serving_image.server`` with ``AIP_*`` variables, ``SERVING_WORKERS``) and runs
   ``run_batch`` against it for each batch size, checking that every line reconciles and
   that the predictions equal the in-process ones;
5. prints one Markdown table: instances per second, and each row as a share of the
   in-process rate at the same batch size and of the all-at-once rate.

Measured with 100k instances on a quiet 2-CPU machine, 4 client workers,
``SERVING_WORKERS=2`` (the README has the table): in-process all at once ~150k/s; through the
server 11.2k/s at batch 64 (197 % of in-process at that batch: the server merges concurrent
requests into one model call), 39.7k/s at 500 (138 %), 53.8k/s at 2000 (70 %; 36 % of all at
once). Client and server share the two CPUs; past a few hundred instances per request JSON
encoding and decoding on both sides dominate.
"""

import argparse
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

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components.runners import free_local_port  # noqa: E402
from components.stand_ins import RESULTS_PREFIX, run_batch  # noqa: E402
from serving_image.server import artifact  # noqa: E402
from serving_image.server.predictions import json_difference  # noqa: E402


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


def in_process(model_dir: Path, rows: list[Any], batch: int | None) -> tuple[Row, list[Any]]:
    """The pipeline on DataFrames of ``batch`` rows (all at once when None): preprocessing
    once, then the estimator's ``predict`` and ``predict_proba``; answers shaped like the
    server's."""
    import joblib
    import pandas as pd

    model = joblib.load(model_dir / artifact.MODEL_FILE)
    classes = [str(c) for c in model.classes_]
    size = batch or len(rows)
    answers: list[Any] = []
    started = time.perf_counter()
    for start in range(0, len(rows), size):
        features = model[:-1].transform(pd.DataFrame(rows[start : start + size]))
        labels = model[-1].predict(features).tolist()
        probabilities = model[-1].predict_proba(features).tolist()
        answers += [
            {"label": label, "probabilities": dict(zip(classes, p, strict=True))}
            for label, p in zip(labels, probabilities, strict=True)
        ]
    seconds = time.perf_counter() - started
    name = "in-process pipeline, all rows at once" if batch is None else "in-process pipeline"
    return Row(name, batch, seconds, len(rows)), answers


def start_server(model_dir: Path, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m serving_image.server`` on a free port; returns it and its predict URL."""
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
                    return process, f"http://127.0.0.1:{port}/predict"
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server was not healthy within 120 s; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def batch_run(
    url: str, instances: Path, out: Path, batch: int, workers: int, expected: list[Any]
) -> Row:
    """``run_batch`` through the server; checks the counts and the predictions."""
    summary = run_batch(url, instances, out, batch_size=batch, workers=workers, progress=False)
    if not summary.reconciled or summary.error_count:
        raise RuntimeError(f"batch of {batch}: {summary.describe()}")
    got = [
        json.loads(line)["prediction"]
        for path in sorted(out.glob(f"{RESULTS_PREFIX}-*"))
        for line in path.read_text().splitlines()
    ]
    difference = json_difference(expected, got)
    if difference:
        raise RuntimeError(f"batch of {batch}: predictions differ from in-process: {difference}")
    return Row(
        f"run_batch -> server process ({workers} client workers)", batch, summary.seconds, len(got)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 500, 2000])
    parser.add_argument("--workers", type=int, default=4, help="concurrent client requests")
    parser.add_argument("--server-workers", type=int, default=2, help="SERVING_WORKERS")
    parser.add_argument("--model-dir", type=Path, help="a trained model (default: train one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from components.training import train_and_export

            model_dir = work / "model"
            train_and_export("penguins", model_dir)
        rows = make_instances(model_dir, args.instances, work / "instances.jsonl")

        whole, expected = in_process(model_dir, rows, None)
        results = [whole] + [in_process(model_dir, rows, batch)[0] for batch in args.batch_sizes]
        process, url = start_server(model_dir, args.server_workers, work / "server.log")
        try:
            for batch in args.batch_sizes:
                out = work / f"out-{batch}"
                results.append(
                    batch_run(url, work / "instances.jsonl", out, batch, args.workers, expected)
                )
        finally:
            stop_server(process)
    print_table(results, args)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    whole = rows[0].rate
    same_batch = {row.batch: row.rate for row in rows if row.method == "in-process pipeline"}
    print(
        f"\n{args.instances} penguins instances, {os.cpu_count()} CPUs, server "
        f"SERVING_WORKERS={args.server_workers}\n"
    )
    print("| method | batch | seconds | instances/s | vs in-process, same batch | vs all at once |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row.rate / same_batch[row.batch]:.0%}" if row.batch in same_batch else ""
        print(
            f"| {row.method} | {row.batch or 'all'} | {row.seconds:.2f} | {row.rate:,.0f} | "
            f"{ratio} | {row.rate / whole:.0%} |"
        )


if __name__ == "__main__":
    main()

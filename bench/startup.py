"""Where the serving image's start-up time goes, from ``podman run`` to the first health 200.

Run from the repository root (about two minutes; the image build is cached after the first):

    .venv/bin/python bench/startup.py                 # 7 starts, the penguins model baked in
    .venv/bin/python bench/startup.py --runs 15 --workers 1

What it does:

1. trains the penguins model (``train_and_export``) and builds the serving image with it
   baked in, as the build-image component does (``build_serving_image``);
2. for each path (``SERVING_PREDICTOR=auto``, the compiled graph the export verified, and
   ``scikit-learn``), ``--runs`` times: notes the wall clock, starts the image with the
   engine's ``run`` (the way Vertex runs it: no init, the ``AIP_*`` variables, the port
   published), polls the health route every 5 ms until 200, then reads the server's JSON log
   lines (each has a millisecond timestamp) and stops the container;
3. prints, per phase, the median and the spread over the runs, and the total.

The phases, from the log lines the server writes anyway:

* container start, interpreter, server imports: ``run`` called to "starting model server"
  (the engine creating the container, Python starting, gunicorn and uvicorn imported);
* gunicorn binds: to "Listening at";
* scientific stack imported by the master: to "imported before forking the workers"
  (numpy, pandas, scikit-learn, once, before the fork; ``predictor.preimport``);
* fork and worker start: to the first worker's "Application startup complete";
* model load (file checksum, unpickling) and self-check (the exported sample predicted and
  compared): the first "model loaded" line's ``load_seconds`` and ``self_check_seconds``;
* health seen: the first 200 answer to the poller after that line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components.imaging import build_serving_image  # noqa: E402
from components.runners import ServerSpec, detect_engine, start_server  # noqa: E402

TAG = "localhost/train-to-serve-bench-startup:latest"
PHASES = (
    ("container start, interpreter, server imports", "starting model server"),
    ("gunicorn binds the port", "Listening at"),
    (
        "scientific stack imported (master, once; nothing when the graph serves)",
        "imported before forking the workers",
    ),
    ("fork, worker start", "Application startup complete"),
)
"""(phase, the log message that ends it), in order."""
PREDICTORS = {"auto": "compiled graph (auto)", "scikit-learn": "scikit-learn pipeline"}
"""``SERVING_PREDICTOR`` values measured, and their column titles."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="starts to time (%(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="SERVING_WORKERS (%(default)s)")
    parser.add_argument("--model-dir", type=Path, help="a trained model (default: penguins)")
    return parser.parse_args()


def log_time(entry: dict[str, Any]) -> float:
    """The wall-clock seconds of a JSON log line's ``time`` (``...T14:56:20.022Z``)."""
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def first(entries: list[dict[str, Any]], message: str) -> dict[str, Any] | None:
    """The first log line that starts with ``message``, if any."""
    for entry in entries:
        if entry.get("message", "").startswith(message):
            return entry
    return None


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def one_start(engine: Any, workers: int, predictor: str) -> dict[str, float]:
    """Start the image once with ``SERVING_PREDICTOR=predictor``; each phase's seconds."""
    env = {
        "SERVING_PREDICTOR": predictor,
        "AIP_HTTP_PORT": "8080",
        "AIP_HEALTH_ROUTE": "/health",
        "AIP_PREDICT_ROUTE": "/predict",
        "AIP_STORAGE_URI": "",
        "SERVING_WORKERS": str(workers),
    }
    started = time.time()
    with start_server(engine, ServerSpec(TAG, env=env)) as server:
        deadline = time.monotonic() + 60
        while not healthy(f"{server.url}/health"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no health 200 within 60 s:\n{server.logs()}")
            time.sleep(0.005)
        health_at = time.time()
        entries = [json.loads(line) for line in server.logs().splitlines() if line[:1] == "{"]
    phases: dict[str, float] = {}
    previous = started
    for phase, message in PHASES:
        entry = first(entries, message)
        if entry is None:  # no pre-import (another framework): the worker's load imports
            phases[phase] = 0.0
            continue
        phases[phase] = log_time(entry) - previous
        previous = log_time(entry)
    loaded = first(entries, "model loaded")
    if loaded is None:
        raise RuntimeError(f"health answered 200 before 'model loaded' was logged:\n{entries}")
    load_s, check_s = loaded["load_seconds"], loaded["self_check_seconds"]
    phases["model load (checksum, unpickle, imports if not done)"] = load_s - check_s
    phases["self-check of the exported sample"] = check_s
    # The rest: the load thread's start, log lines, the poller's 5 ms.
    phases["health seen by the poller"] = health_at - previous - load_s
    phases["total: run to health 200"] = health_at - started
    return phases


def main() -> int:
    args = parse_args()
    engine = detect_engine()
    model_dir = args.model_dir
    if model_dir is None:
        from components.training import train_and_export

        model_dir = Path(tempfile.mkdtemp()) / "penguins"
        train_and_export("penguins", model_dir)
    print(f"building {TAG} with {model_dir} baked in ...", file=sys.stderr)
    build_serving_image(engine, TAG, model_dir, on_line=lambda _: None)
    runs: dict[str, list[dict[str, float]]] = {}
    for predictor in PREDICTORS:
        one_start(engine, args.workers, predictor)  # warm the page cache, as a pulled image
        runs[predictor] = [one_start(engine, args.workers, predictor) for _ in range(args.runs)]
    print(
        f"\nStart-up of the scikit-learn serving image (penguins), {engine.name} "
        f"{engine.version}, {args.workers} workers, {args.runs} starts per path "
        "(median, min-max in seconds):\n"
    )
    print(f"| phase | {' | '.join(PREDICTORS.values())} |")
    print("|---|" + "---|" * len(PREDICTORS))
    for phase in runs[next(iter(PREDICTORS))][0]:
        cells = []
        for predictor in PREDICTORS:
            values = [run[phase] for run in runs[predictor]]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {phase} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

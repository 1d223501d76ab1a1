"""Benchmark serving a TensorFlow model beside the scikit-learn one, on CPU, with our server.

Run from the repository root (about 1.5 minutes with the defaults; needs ``hey`` and the
project's tensorflow extra):

    .venv/bin/python bench/serving_tensorflow.py [--duration 5] [--concurrency 4] [--workers 1]

For each framework it trains the penguins classifier (``train_and_export``), then:

1. start-up: a fresh ``python -c`` process times importing the framework and
   ``load_predictor`` (verify sha256, load, self-check), ``--startups`` times;
2. the server as the image runs it (``python -m serving_image.server``, ``AIP_*`` variables,
   ``--workers`` workers): process start to the first health 200;
3. throughput: ``hey`` at 1 and 100 instances per request (the sample instances, repeated),
   ``--concurrency`` connections, after a 1 s warm-up;

and prints one Markdown table. Image start-up (container start to health 200) is measured by
``tests/test_image_tensorflow.py`` (``pytest -m container -s`` prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from serving import Server, run_hey  # noqa: E402

from components.runners import free_local_port  # noqa: E402
from serving_image.server import artifact  # noqa: E402

FRAMEWORK_MODULES = {"scikit-learn": "sklearn", "tensorflow": "tensorflow"}
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    started = time.perf_counter()
    import numpy, {module}
    imported = time.perf_counter()
    from serving_image.server.predictor import load_predictor
    load_predictor(Path(sys.argv[1]))
    print(json.dumps({{"import": imported - started, "load": time.perf_counter() - imported}}))
    """
)


def load_times(framework: str, model_dir: Path, runs: int) -> tuple[float, float]:
    """Median seconds to import the framework, and to load + self-check the model."""
    script = LOAD_SCRIPT.format(module=FRAMEWORK_MODULES[framework])
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", script, str(model_dir)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return (
        statistics.median(s["import"] for s in samples),
        statistics.median(s["load"] for s in samples),
    )


def request_bodies(model_dir: Path, work: Path) -> dict[int, Path]:
    """``{"instances": [...]}`` files of 1 and 100 sample instances."""
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    bodies = {}
    for count in (1, 100):
        rows = (instances * (count // len(instances) + 1))[:count]
        path = work / f"body-{model_dir.name}-{count}.json"
        path.write_text(json.dumps({"instances": rows}))
        bodies[count] = path
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per hey run")
    parser.add_argument("--concurrency", type=int, default=4, help="hey connections")
    parser.add_argument("--workers", type=int, default=1, help="server workers")
    parser.add_argument("--startups", type=int, default=2, help="fresh load-time processes")
    args = parser.parse_args()

    from components.training import train_and_export

    rows = []
    with tempfile.TemporaryDirectory(prefix="tts-bench-tf-") as scratch:
        work = Path(scratch)
        for framework in FRAMEWORK_MODULES:
            model_dir = work / framework
            train_and_export("penguins", model_dir, framework=framework)
            imported, loaded = load_times(framework, model_dir, args.startups)
            port = free_local_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))},
                "AIP_HTTP_PORT": str(port),
                "AIP_STORAGE_URI": str(model_dir),
                "SERVING_WORKERS": str(args.workers),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": str(REPO_ROOT),
            }
            server = Server(
                f"server-{framework}",
                [sys.executable, "-m", "serving_image.server"],
                work,
                env,
                port,
            )
            try:
                ready = server.wait_healthy()
                for count, body in request_bodies(model_dir, work).items():
                    run_hey(server.url("/predict"), body, 1.0, args.concurrency)
                    result = run_hey(server.url("/predict"), body, args.duration, args.concurrency)
                    rows.append((framework, count, imported, loaded, ready, result))
            finally:
                server.stop()

    print(
        f"\n{os.cpu_count()} CPUs; {args.workers} worker(s); hey -c {args.concurrency}, "
        f"{args.duration:g} s per cell\n"
    )
    print(
        "| framework | instances/request | req/s | p50 ms | p99 ms | errors "
        "| import s | load+self-check s | server start to health 200 s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for framework, count, imported, loaded, ready, r in rows:
        print(
            f"| {framework} | {count} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['errors']} | {imported:.2f} | {loaded:.2f} | {ready:.2f} |"
        )


if __name__ == "__main__":
    main()

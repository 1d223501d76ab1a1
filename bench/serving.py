"""Benchmark the model server against Vertex AI's CPR model server on the same model.

Run from the repository root (about 3 minutes with the defaults, CPR already installed):

    .venv/bin/python bench/serving.py                     # everything, 10 s per cell
    # our server under the image's dependency set (serving_image/requirements.txt):
    python3 -m venv /tmp/venv-image
    /tmp/venv-image/bin/pip install -r serving_image/requirements.txt
    .venv/bin/python bench/serving.py --python /tmp/venv-image/bin/python

What it does, all on loopback with bounded durations:

1. trains the penguins model with ``train_and_export`` (or uses ``--model-dir``);
2. measures the in-process limit: orjson decode + validation + predict + orjson encode of the
   same request bodies, no HTTP;
3. starts our server as the image runs it (the package copied to ``<tmp>/app/server``,
   ``python -m server`` in ``<tmp>/app``, ``AIP_*`` variables) and measures start to the
   first health 200 (``--startups`` times, fresh process each); it is load-tested as
   configured and once more with ``SERVING_MAX_BATCH_INSTANCES=1`` (no merging of
   concurrent requests), to show what each design choice contributes;
4. installs Vertex CPR (``google-cloud-aiplatform[prediction]``) into ``--cpr-venv`` unless it
   is there, and serves the same model with a small CPR ``Predictor`` (as CPR's guide has it): a
   DataFrame from the instances, then ``predict`` + ``predict_proba`` for the same answer as
   ours (label and probabilities), and once more answering labels only (one pipeline pass,
   CPR's own ``SklearnPredictor`` behaviour) as the strongest CPR baseline;
5. drives each server with ``hey`` (``apt-get install hey``) at 1 and 100 instances per
   request, ``--concurrency`` connections, after a warm-up, and reads the CPU time of the
   server's whole process tree from ``/proc`` before and after each run;
6. prints one Markdown table.

If CPR cannot be installed or started, it says why and still prints our rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components.runners import free_local_port  # noqa: E402
from serving_image.server import artifact  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CPR_PACKAGES = ("google-cloud-aiplatform[prediction]", "scikit-learn", "pandas", "numpy", "joblib")

CPR_PREDICTOR = '''
"""A small CPR predictor for a train-to-serve model directory (benchmark only)."""
import json
import os

import joblib
import pandas as pd
from google.cloud.aiplatform.prediction.predictor import Predictor
from google.cloud.aiplatform.utils import prediction_utils

LABELS_ONLY = os.environ.get("BENCH_CPR_OUTPUT") == "label"


class TrainToServePredictor(Predictor):
    def load(self, artifacts_uri):
        prediction_utils.download_model_artifacts(artifacts_uri)
        self._model = joblib.load("model.joblib")
        manifest = json.load(open("model_manifest.json"))
        self._features = [f["name"] for f in manifest["features"]]
        self._categorical = [f["name"] for f in manifest["features"] if f["kind"] != "numeric"]
        self._classes = [str(c) for c in self._model.classes_]

    def preprocess(self, prediction_input):
        frame = pd.DataFrame(prediction_input["instances"], columns=self._features)
        return frame.astype({name: object for name in self._categorical})

    def predict(self, instances):
        labels = self._model.predict(instances).tolist()
        if LABELS_ONLY:
            return labels, None
        return labels, self._model.predict_proba(instances).tolist()

    def postprocess(self, prediction_results):
        labels, probabilities = prediction_results
        if probabilities is None:
            return {"predictions": labels}
        return {"predictions": [
            {"label": label, "probabilities": dict(zip(self._classes, row))}
            for label, row in zip(labels, probabilities)
        ]}
'''


@dataclass
class Cell:
    """One load-test result."""

    server: str
    batch: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    cpu_ms_per_request: float


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree (live processes only), in seconds."""
    ticks = 0
    for member in descendants(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def post_json(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Server:
    """A server process started in its own session, so that its whole tree can be stopped."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str], port: int):
        self.name, self.port = name, port
        self.log = open(cwd / f"{name.replace(' ', '_')}.log", "w")  # noqa: SIM115
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_healthy(self, timeout: float = 120.0) -> float:
        """Seconds from process start to the first health 200."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            if http_status(self.url("/health")) == 200:
                return time.monotonic() - self.started
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not healthy after {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def run_hey(url: str, body_file: Path, seconds: float, concurrency: int) -> dict[str, float]:
    """One ``hey`` run; returns req/s, p50/p99 (ms), 200s and other answers."""
    command = [
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body_file),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    _, _, error_section = out.partition("Error distribution:")
    failed = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", error_section, re.MULTILINE))
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50": number(r"50%+ in ([\d.]+) secs") * 1000,
        "p99": number(r"99%+ in ([\d.]+) secs") * 1000,
        "ok": codes.get(200, 0),
        "errors": sum(n for c, n in codes.items() if c != 200) + failed,
    }


def load_test(
    server: Server, name: str, bodies: dict[int, Path], args: argparse.Namespace, predict_path: str
) -> list[Cell]:
    cells = []
    for batch, body_file in bodies.items():
        run_hey(server.url(predict_path), body_file, args.warmup, args.concurrency)
        before = cpu_seconds(server.process.pid)
        result = run_hey(server.url(predict_path), body_file, args.duration, args.concurrency)
        used = cpu_seconds(server.process.pid) - before
        requests = result["ok"] + result["errors"]
        cells.append(
            Cell(
                name,
                batch,
                result["rps"],
                result["p50"],
                result["p99"],
                int(result["ok"]),
                int(result["errors"]),
                used * 1000 / requests if requests else float("nan"),
            )
        )
        print(f"  {name} batch {batch}: {result['rps']:.0f} req/s", file=sys.stderr)
    return cells


def in_process_limit(model_dir: Path, bodies: dict[int, bytes], seconds: float) -> list[Cell]:
    """orjson decode + validation + predict + orjson encode, no HTTP, one thread."""
    from serving_image.server.predictor import load_predictor
    from serving_image.server.validation import parse_predict_request

    predictor, _ = load_predictor(model_dir)
    cells = []
    for batch, body in bodies.items():
        durations: list[float] = []
        cpu_before, deadline = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            request = parse_predict_request(body, predictor.schema)
            orjson.dumps({"predictions": predictor(request)})
            durations.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu_before
        quantiles = statistics.quantiles(durations, n=100)
        cells.append(
            Cell(
                "in-process limit (1 thread, no HTTP)",
                batch,
                len(durations) / seconds,
                quantiles[49] * 1000,
                quantiles[98] * 1000,
                len(durations),
                0,
                cpu * 1000 / len(durations),
            )
        )
    return cells


def ensure_cpr_venv(venv: Path) -> str | None:
    """Create the CPR virtualenv if needed; return None if usable, else the reason."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import google.cloud.aiplatform.prediction.model_server, sklearn"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    import joblib
    import numpy
    import pandas
    import sklearn

    pins = {
        "scikit-learn": sklearn.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
    }
    packages = [f"{p}=={pins[p]}" if p in pins else p for p in CPR_PACKAGES]
    print(f"installing CPR into {venv}: {' '.join(packages)}", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *packages],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            return f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout)[-500:]}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return "CPR installed but google.cloud.aiplatform.prediction does not import"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    parser.add_argument("--concurrency", type=int, default=8, help="hey connections")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", default="1,100", help="instances per request")
    parser.add_argument("--startups", type=int, default=3, help="start-time measurements")
    parser.add_argument("--model-dir", type=Path, help="model directory (default: train one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for our server")
    parser.add_argument(
        "--package",
        type=Path,
        default=REPO_ROOT / "serving_image" / "server",
        help="server package to run (default: this checkout's)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for our server (repeatable), e.g. SERVING_MAX_BATCH_INSTANCES=1",
    )
    parser.add_argument("--cpr-venv", type=Path, default=Path("/tmp/venv-cpr"))
    parser.add_argument("--no-cpr", action="store_true", help="skip the CPR server")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey not found: apt-get install -y hey")

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    model_dir = args.model_dir
    if model_dir is None:
        from components.training import train_and_export

        model_dir = work / "model"
        train_and_export("penguins", model_dir)
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    batches = [int(b) for b in args.batches.split(",")]
    raw = {
        b: orjson.dumps({"instances": (instances * (b // len(instances) + 1))[:b]}) for b in batches
    }
    bodies = {}
    for batch, body in raw.items():
        bodies[batch] = work / f"request_{batch}.json"
        bodies[batch].write_bytes(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    cells: list[Cell] = []
    notes: list[str] = []

    print("in-process limit ...", file=sys.stderr)
    cells += in_process_limit(model_dir, raw, min(args.duration, 5.0))

    app = work / "app"
    shutil.copytree(args.package, app / "server", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([args.python, "-m", "compileall", "-q", str(app / "server")], check=True)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)

    def ours(name: str = "ours", extra_env: dict[str, str] | None = None) -> Server:
        port = free_local_port()
        server_env = {
            **env,
            "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": "/health",
            "AIP_PREDICT_ROUTE": "/predict",
            "AIP_STORAGE_URI": str(model_dir),
            "SERVING_WORKERS": str(args.workers),
            **dict(item.split("=", 1) for item in args.server_env),
            **(extra_env or {}),
        }
        return Server(name, [args.python, "-m", "server"], app, server_env, port)

    startups = []
    for _ in range(args.startups):
        server = ours()
        try:
            startups.append(server.wait_healthy())
        finally:
            server.stop()
    notes.append(
        f"our server, start to first health 200 ({args.workers} workers, {args.startups} fresh "
        f"starts): median {statistics.median(startups):.2f} s "
        f"(all: {', '.join(f'{s:.2f}' for s in startups)})"
    )
    # The second configuration shows what merging concurrent requests contributes.
    for name, extra_env in (
        ("ours", {}),
        ("ours, no request merging", {"SERVING_MAX_BATCH_INSTANCES": "1"}),
    ):
        server = ours(name, extra_env)
        try:
            server.wait_healthy()
            time.sleep(1)  # every worker loads on its own; let the last one finish
            answer = post_json(server.url("/predict"), orjson.dumps({"instances": instances}))
            assert answer == {"predictions": expected}, f"{name}: answers differ"
            print(f"{name} ...", file=sys.stderr)
            cells += load_test(server, name, bodies, args, "/predict")
        finally:
            server.stop()

    reason = "skipped (--no-cpr)" if args.no_cpr else ensure_cpr_venv(args.cpr_venv)
    if reason is None:
        cells += run_cpr(args, work, model_dir, env, bodies, expected, instances, notes)
    else:
        notes.append(f"Vertex CPR not measured: {reason}")
    print_table(cells, notes, args)


def run_cpr(
    args: argparse.Namespace,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
    bodies: dict[int, Path],
    expected: list[Any],
    instances: list[Any],
    notes: list[str],
) -> list[Cell]:
    """Serve the model with CPR twice (label + probabilities, then labels only)."""
    cells: list[Cell] = []
    (work / "cpr_predictor.py").write_text(textwrap.dedent(CPR_PREDICTOR))
    for output, name in (("both", "Vertex CPR"), ("label", "Vertex CPR, labels only")):
        cwd = work / f"cpr-{output}"  # CPR downloads the artifacts into its working directory
        cwd.mkdir()
        port = free_local_port()
        cpr_env = {
            **env,
            "PYTHONPATH": str(work),
            "BENCH_CPR_OUTPUT": output,
            "HANDLER_MODULE": "google.cloud.aiplatform.prediction.handler",
            "HANDLER_CLASS": "PredictionHandler",
            "PREDICTOR_MODULE": "cpr_predictor",
            "PREDICTOR_CLASS": "TrainToServePredictor",
            "AIP_STORAGE_URI": str(model_dir),
            "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": "/health",
            "AIP_PREDICT_ROUTE": "/predict",
            "VERTEX_CPR_WEB_CONCURRENCY": str(args.workers),
        }
        command = [
            str(args.cpr_venv / "bin" / "python"),
            "-m",
            "google.cloud.aiplatform.prediction.model_server",
        ]
        server = Server(name, command, cwd, cpr_env, port)
        try:
            started = server.wait_healthy()
            # Every worker loads on its own; give them all time before measuring.
            time.sleep(2)
            answer = post_json(server.url("/predict"), orjson.dumps({"instances": instances}))
            want = expected if output == "both" else [e["label"] for e in expected]
            same = _close(answer["predictions"], want)
            notes.append(
                f"{name}: start to first health 200 {started:.2f} s; answers equal ours: {same}"
            )
            print(f"{name} ...", file=sys.stderr)
            cells += load_test(server, name, bodies, args, "/predict")
        except (RuntimeError, OSError) as exc:
            notes.append(f"{name} failed: {exc} (log: {server.log.name})")
        finally:
            server.stop()
    return cells


def _close(got: Any, want: Any) -> bool:
    if isinstance(want, float):
        return abs(got - want) <= 1e-9 * max(1.0, abs(want))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(map(_close, got, want))
    return got == want


def print_table(cells: list[Cell], notes: list[str], args: argparse.Namespace) -> None:
    print(
        f"\n{os.cpu_count()} CPUs; {args.workers} server workers; hey -c {args.concurrency}, "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up; loopback.\n"
    )
    print(
        "| server | inst/req | req/s | inst/s | p50 ms | p99 ms | server CPU ms/req | "
        "ours vs this (req/s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ours = {c.batch: c.requests_per_s for c in cells if c.server == "ours"}
    order = ["ours", "ours, no request merging", "Vertex CPR", "Vertex CPR, labels only"]
    for cell in sorted(cells, key=lambda c: (c.batch, [*order, c.server].index(c.server))):
        ratio = ours.get(cell.batch, float("nan")) / cell.requests_per_s
        shown_ratio = "" if cell.server.startswith(("ours", "in-process")) else f"{ratio:.2f}x"
        errors = f" ({cell.errors} non-200)" if cell.errors else ""
        print(
            f"| {cell.server}{errors} | {cell.batch} | {cell.requests_per_s:,.0f} | "
            f"{cell.requests_per_s * cell.batch:,.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | "
            f"{cell.cpu_ms_per_request:.2f} | {shown_ratio} |"
        )
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()

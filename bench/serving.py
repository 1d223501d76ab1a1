"""Benchmark the model server against its peers (Vertex CPR, KServe, MLServer) on the same model.

Run from the repository root (about 5 minutes with the defaults, the peers already installed):

    .venv/bin/python bench/serving.py                     # everything, 10 s per cell
    .venv/bin/python bench/serving.py --peers kserve      # ours and one peer
    # our server under the image's dependency set (serving_image/requirements.txt):
    python3 -m venv /tmp/venv-image
    /tmp/venv-image/bin/pip install -r serving_image/requirements.txt
    .venv/bin/python bench/serving.py --python /tmp/venv-image/bin/python

What it does, all on loopback with bounded durations:

1. trains the penguins model with ``train_and_export`` (or uses ``--model-dir``);
2. measures the in-process limit on each path (the compiled graph, the scikit-learn
   pipeline): orjson decode + validation + predict + orjson encode of the same request
   bodies, no HTTP, per call;
3. starts our server as the image runs it (the package copied to ``<tmp>/app/server``,
   ``python -m server`` in ``<tmp>/app``, ``AIP_*`` variables) and measures start to the
   first health 200 (``--startups`` times, fresh process each); it is load-tested as
   configured (the compiled graph serving), once with ``SERVING_MAX_BATCH_INSTANCES=1`` (no
   merging of concurrent requests) and once with ``SERVING_PREDICTOR=scikit-learn`` (the
   pipeline serving), to show what each design choice contributes;
4. serves the same model directory with each peer (``PEERS``), each installed into its own
   venv under ``--venvs`` unless it is there, with scikit-learn, pandas, numpy and joblib
   pinned to ours where the peer allows: a peer is data (its packages, how it starts on the
   model directory with ``--workers`` workers, its request body, how its answers read) plus
   a small serving shim in ``bench/peers/`` where its own sklearn server cannot serve the
   pipeline. Each peer's answers to the exported sample are compared with
   ``expected_predictions.jsonl`` before it is load-tested, and a mismatch is reported:
   * Vertex CPR (``google-cloud-aiplatform[prediction]``): a small ``Predictor``
     (``cpr_predictor.py``), once answering like ours (label and probabilities) and once
     labels only (one pipeline pass, CPR's own ``SklearnPredictor`` behaviour);
   * KServe (``kserve``): a ``kserve.Model`` subclass (``kserve_model.py``, which says why
     not KServe's ``sklearnserver``), v1 protocol, label and probabilities;
   * MLServer (``mlserver``, ``mlserver-sklearn``): its own ``SKLearnModel`` on
     ``model.joblib``, V2 protocol over REST, one input per feature decoded as one DataFrame
     (pandas codec), outputs ``predict`` and ``predict_proba``;
5. drives each server with ``hey`` (``apt-get install hey``) at 1 and 100 instances per
   request, ``--concurrency`` connections, after a warm-up, and reads the CPU time of the
   server's whole process tree from ``/proc`` before and after each run;
6. prints one Markdown table and two goal lines (met or not): ours at least 2x the best
   peer's requests/s at each request size, at no more than half its server CPU per request;
   and the compiled path's CPU per request: at most 0.4 ms served at 1 instance, 0.6 ms at
   100, and 0.1 ms per in-process call at 1 instance.

A peer that cannot be installed or started is reported with the reason; the other rows are
still printed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components.runners import free_local_port  # noqa: E402
from serving_image.server import artifact  # noqa: E402
from serving_image.server.compiled import COMPILED, SCIKIT_LEARN  # noqa: E402
from serving_image.server.predictions import (  # noqa: E402
    SELF_CHECK_ABS_TOL,
    SELF_CHECK_REL_TOL,
    json_difference,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PEERS_DIR = Path(__file__).resolve().parent / "peers"
STACK = ("scikit-learn", "pandas", "numpy", "joblib")
"""Installed into each peer's venv at our versions, unless the peer's requirements exclude them."""
MODEL_NAME = "penguins"
"""The model's name where a peer's routes name it (KServe, MLServer)."""
OURS = {
    "ours": {},
    "ours, no request merging": {"SERVING_MAX_BATCH_INSTANCES": "1"},
    "ours, scikit-learn path": {"SERVING_PREDICTOR": SCIKIT_LEARN},
}
"""Our server's configurations: as shipped, then each without one of its design choices."""
IN_PROCESS = "in-process (1 thread, no HTTP)"
"""The in-process rows' name, followed by the path measured."""


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


def answer_difference(expected: Any, actual: Any) -> str | None:
    """None when ``actual`` is ``expected`` within the server's self-check tolerance."""
    return json_difference(expected, actual, rel_tol=SELF_CHECK_REL_TOL, abs_tol=SELF_CHECK_ABS_TOL)


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
    """CPU seconds of a process tree: each live member's utime + stime, plus cutime + cstime
    (its children that exited and were reaped), so that a worker restarted by its server
    during a run does not take its CPU time out of the total."""
    ticks = 0
    for member in descendants(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])
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

    def __init__(
        self,
        name: str,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        port: int,
        health_path: str = "/health",
    ):
        self.name, self.port, self.health_path = name, port, health_path
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
        """Seconds from process start to the first 200 from its health (or readiness) route."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            if http_status(self.url(self.health_path)) == 200:
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


def in_process_limit(
    model_dir: Path, bodies: dict[int, bytes], seconds: float, choice: str
) -> list[Cell]:
    """orjson decode + validation + predict + orjson encode, no HTTP, one thread, on the
    path ``choice`` names (``SERVING_PREDICTOR``)."""
    from serving_image.server.predictor import load_predictor
    from serving_image.server.validation import parse_predict_request

    predictor, _ = load_predictor(model_dir, choice)
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
                f"{IN_PROCESS}, {choice}",
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


@dataclass(frozen=True)
class Sample:
    """The model directory and what the request bodies and answer checks need from it."""

    model_dir: Path
    instances: list[dict[str, Any]]
    expected: list[Any]
    features: list[dict[str, Any]]
    classes: list[str]
    kinds: list[str]
    """Each instance's kind (``evaluation``, ``missing:island``, ...), to name a mismatch."""


def read_sample(model_dir: Path) -> Sample:
    manifest = artifact.read_manifest(model_dir)
    return Sample(
        model_dir,
        artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE),
        artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE),
        manifest["features"],
        [str(c) for c in manifest["target_classes"]],
        manifest.get("sample_kinds") or [],
    )


def repeat(instances: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` instances: the sample repeated and cut."""
    return (instances * (count // len(instances) + 1))[:count]


Body = Callable[[list[dict[str, Any]], list[dict[str, Any]]], bytes]
"""A request body from instances and the manifest's features."""


def v1_body(instances: list[dict[str, Any]], features: list[dict[str, Any]]) -> bytes:
    """Vertex's and KServe's v1 protocol (ours too): ``{"instances": [...]}``."""
    return orjson.dumps({"instances": instances})


def v2_pandas_body(instances: list[dict[str, Any]], features: list[dict[str, Any]]) -> bytes:
    """The V2 protocol: one input per feature (FP64 or BYTES, nulls kept), decoded as one
    DataFrame (``content_type: pd``), asking for labels and probabilities."""
    inputs = [
        {
            "name": feature["name"],
            "shape": [len(instances)],
            "datatype": "FP64" if feature["kind"] == "numeric" else "BYTES",
            "data": [instance[feature["name"]] for instance in instances],
        }
        for feature in features
    ]
    outputs = [{"name": "predict"}, {"name": "predict_proba"}]
    return orjson.dumps(
        {"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": outputs}
    )


def v1_answers(response: Any, classes: list[str]) -> list[Any]:
    return response["predictions"]


def v2_answers(response: Any, classes: list[str]) -> list[Any]:
    """The ``predict`` and ``predict_proba`` output tensors as our predictions."""
    data = {output["name"]: output["data"] for output in response["outputs"]}
    flat, width = data["predict_proba"], len(classes)
    rows = [flat[start : start + width] for start in range(0, len(flat), width)]
    return [
        {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(data["predict"], rows, strict=True)
    ]


@dataclass(frozen=True)
class Site:
    """Where one peer server runs: its venv's interpreter, the model, a fresh working
    directory (for its logs and any settings files), its port and worker count."""

    python: Path
    model_dir: Path
    cwd: Path
    port: int
    workers: int


Launch = Callable[[Site], tuple[list[str], dict[str, str]]]
"""A peer's start: the command and the environment it adds, given its site."""


@dataclass(frozen=True)
class Peer:
    """A peer model server: how to install it, serve the model directory, ask it, read it."""

    name: str
    venv: str
    """The venv's directory name under ``--venvs``."""
    packages: tuple[str, ...]
    """What to install besides ``STACK``; the first names the server (and its version)."""
    probe: str
    """A module whose import proves the install."""
    serves: str
    """How it serves the model, one line for the notes."""
    launch: Launch
    health_path: str
    predict_path: str
    body: Body
    answers: Callable[[Any, list[str]], list[Any]]
    """Its response to the sample as a list of predictions in our shape."""
    stack: Mapping[str, str] = field(default_factory=dict)
    """Requirements replacing ``STACK``'s pins where the peer's own exclude ours."""
    output: str = "both"
    """``both`` (label and probabilities, as ours) or ``label`` (``BENCH_PEER_OUTPUT``)."""


def launch_cpr(site: Site) -> tuple[list[str], dict[str, str]]:
    """CPR's model server with ``cpr_predictor.TrainToServePredictor``, as Vertex starts it."""
    command = [str(site.python), "-m", "google.cloud.aiplatform.prediction.model_server"]
    return command, {
        "HANDLER_MODULE": "google.cloud.aiplatform.prediction.handler",
        "HANDLER_CLASS": "PredictionHandler",
        "PREDICTOR_MODULE": "cpr_predictor",
        "PREDICTOR_CLASS": "TrainToServePredictor",
        "AIP_STORAGE_URI": str(site.model_dir),
        "AIP_HTTP_PORT": str(site.port),
        "AIP_HEALTH_ROUTE": "/health",
        "AIP_PREDICT_ROUTE": "/predict",
        "VERTEX_CPR_WEB_CONCURRENCY": str(site.workers),
    }


def launch_kserve(site: Site) -> tuple[list[str], dict[str, str]]:
    """``kserve_model.py`` with KServe's own options: ``--workers`` uvicorn processes, no gRPC."""
    options = {
        "--model_dir": str(site.model_dir),
        "--model_name": MODEL_NAME,
        "--http_port": str(site.port),
        "--workers": str(site.workers),
        "--enable_grpc": "false",
    }
    return [str(site.python), str(PEERS_DIR / "kserve_model.py"), *_flatten(options)], {}


def launch_mlserver(site: Site) -> tuple[list[str], dict[str, str]]:
    """``mlserver start`` on settings written to the site: its ``SKLearnModel`` on
    ``model.joblib`` in ``parallel_workers`` inference processes behind one HTTP process
    (MLServer's only multi-process mode); its gRPC port cannot be turned off, metrics can."""
    settings = {
        "http_port": site.port,
        "grpc_port": free_local_port(),
        "metrics_endpoint": None,
        "parallel_workers": site.workers,
        "debug": False,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(site.model_dir / artifact.MODEL_FILE)},
    }
    (site.cwd / "settings.json").write_bytes(orjson.dumps(settings))
    (site.cwd / "model-settings.json").write_bytes(orjson.dumps(model_settings))
    return [str(site.python.parent / "mlserver"), "start", str(site.cwd)], {}


def _flatten(options: dict[str, str]) -> list[str]:
    return [item for pair in options.items() for item in pair]


CPR = Peer(
    name="Vertex CPR",
    venv="venv-cpr",
    packages=("google-cloud-aiplatform[prediction]",),
    probe="google.cloud.aiplatform.prediction.model_server",
    serves="a CPR Predictor (bench/peers/cpr_predictor.py), DataFrame from the v1 instances",
    launch=launch_cpr,
    health_path="/health",
    predict_path="/predict",
    body=v1_body,
    answers=v1_answers,
)
PEERS: dict[str, tuple[Peer, ...]] = {
    "cpr": (CPR, replace(CPR, name="Vertex CPR, labels only", output="label")),
    "kserve": (
        Peer(
            name="KServe",
            venv="venv-kserve",
            packages=("kserve",),
            probe="kserve",
            serves=(
                "a kserve.Model subclass (bench/peers/kserve_model.py: why not sklearnserver), "
                "DataFrame from the v1 instances"
            ),
            launch=launch_kserve,
            health_path=f"/v1/models/{MODEL_NAME}",
            predict_path=f"/v1/models/{MODEL_NAME}:predict",
            body=v1_body,
            answers=v1_answers,
            stack={"pandas": "pandas<3"},  # kserve requires pandas<3
        ),
    ),
    "mlserver": (
        Peer(
            name="MLServer",
            venv="venv-mlserver",
            # uvloop 0.22 breaks MLServer 1.7's parallel workers (SeldonIO/MLServer#2286).
            packages=("mlserver", "mlserver-sklearn", "uvloop<0.22"),
            probe="mlserver_sklearn",
            serves=(
                "its own mlserver_sklearn.SKLearnModel, V2 REST, pandas codec, outputs "
                "predict + predict_proba"
            ),
            launch=launch_mlserver,
            health_path=f"/v2/models/{MODEL_NAME}/ready",
            predict_path=f"/v2/models/{MODEL_NAME}/infer",
            body=v2_pandas_body,
            answers=v2_answers,
        ),
    ),
}
PEER_NAMES = [peer.name for group in PEERS.values() for peer in group]


def stack_requirements(overrides: Mapping[str, str]) -> list[str]:
    """``STACK`` pinned to the versions installed here, except where a peer overrides."""
    return [overrides.get(name, f"{name}=={importlib.metadata.version(name)}") for name in STACK]


def ensure_venv(peer: Peer, venvs: Path) -> str | None:
    """Create the peer's virtualenv if needed; return None if usable, else the reason."""
    python = venvs / peer.venv / "bin" / "python"
    probe = [str(python), "-c", f"import {peer.probe}, sklearn"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    packages = [*peer.packages, *stack_requirements(peer.stack)]
    print(
        f"installing {peer.name} into {python.parent.parent}: {' '.join(packages)}", file=sys.stderr
    )
    steps = [
        [sys.executable, "-m", "venv", str(python.parent.parent)],
        [str(python), "-m", "pip", "install", "-q", *packages],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            return f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout)[-500:]}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return f"installed, but {peer.probe} does not import"
    return None


def versions(python: Path, names: list[str]) -> str:
    """``name version`` of each distribution installed in a venv."""
    script = (
        "import importlib.metadata as m, sys\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    )
    done = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True)
    return done.stdout.strip() or "versions unknown"


def write_bodies(folder: Path, encode: Body, sample: Sample, batches: list[int]) -> dict[int, Path]:
    """One request body file per batch size, ``encode``d from the repeated sample."""
    bodies = {}
    for batch in batches:
        bodies[batch] = folder / f"request_{batch}.json"
        bodies[batch].write_bytes(encode(repeat(sample.instances, batch), sample.features))
    return bodies


def run_peer(
    peer: Peer, args: argparse.Namespace, work: Path, sample: Sample, env: dict[str, str]
) -> tuple[list[Cell], str]:
    """Start the peer on the model, check its answers to the sample, load-test it; the cells
    and a note (or only a note saying why not)."""
    python = args.venvs / peer.venv / "bin" / "python"
    cwd = work / f"{peer.venv}-{peer.output}"
    cwd.mkdir()
    site = Site(python, sample.model_dir, cwd, free_local_port(), args.workers)
    command, launch_env = peer.launch(site)
    peer_env = {**env, "PYTHONPATH": str(PEERS_DIR), "BENCH_PEER_OUTPUT": peer.output, **launch_env}
    server = Server(peer.name, command, cwd, peer_env, site.port, peer.health_path)
    try:
        started = server.wait_healthy()
        time.sleep(2)  # where every worker loads on its own, let the last one finish
        response = post_json(
            server.url(peer.predict_path), peer.body(sample.instances, sample.features)
        )
        same = answers_match(peer.answers(response, sample.classes), sample, peer.output)
        note = (
            f"{peer.name} ({versions(python, [_distribution(peer), 'scikit-learn', 'pandas'])}): "
            f"{peer.serves}; start to first health 200 {started:.2f} s; answers {same}"
        )
        print(f"{peer.name} ...", file=sys.stderr)
        bodies = write_bodies(cwd, peer.body, sample, args.batch_sizes)
        return load_test(server, peer.name, bodies, args, peer.predict_path), note
    except (RuntimeError, OSError, KeyError, TypeError, ValueError) as exc:
        return [], f"{peer.name} failed: {exc!r}; its log ends: {log_tail(server)}"
    finally:
        server.stop()


def _distribution(peer: Peer) -> str:
    return peer.packages[0].split("[")[0]


def answers_match(got: list[Any], sample: Sample, output: str) -> str:
    """``equal ours``, or which sample instances differ (by kind) from the expected ones."""
    want = sample.expected if output == "both" else [e["label"] for e in sample.expected]
    if len(got) != len(want):
        return f"DIFFER: {len(got)} predictions for {len(want)} instances"
    differ = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not _close(g, w)]
    if not differ:
        return "equal ours"
    named = ", ".join(sample.kinds[i] if i < len(sample.kinds) else f"#{i}" for i in differ)
    return f"DIFFER from ours on {len(differ)} of {len(want)} ({named})"


def log_tail(server: Server, lines: int = 3) -> str:
    """The last non-empty lines of a server's log, joined."""
    server.log.flush()
    text = Path(server.log.name).read_text(errors="replace")
    return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])


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
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"peers to measure, comma-separated, of {', '.join(PEERS)} ('' for none)",
    )
    parser.add_argument(
        "--venvs", type=Path, default=Path("/tmp"), help="where each peer's venv is (venv-<peer>)"
    )
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    unknown = set(filter(None, args.peers.split(","))) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
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
    sample = read_sample(model_dir)
    bodies = write_bodies(work, v1_body, sample, args.batch_sizes)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    cells: list[Cell] = []
    notes: list[str] = []

    print("in-process limit ...", file=sys.stderr)
    raw = {batch: path.read_bytes() for batch, path in bodies.items()}
    for choice in (COMPILED, SCIKIT_LEARN):
        cells += in_process_limit(model_dir, raw, min(args.duration, 5.0), choice)

    app = work / "app"
    shutil.copytree(args.package, app / "server", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([args.python, "-m", "compileall", "-q", str(app / "server")], check=True)

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
    # The other configurations show what merging concurrent requests and the compiled graph
    # contribute (ours serves the graph: the export verified it).
    for name, extra_env in OURS.items():
        server = ours(name, extra_env)
        try:
            server.wait_healthy()
            time.sleep(1)  # every worker loads on its own; let the last one finish
            answer = post_json(server.url("/predict"), v1_body(sample.instances, sample.features))
            # The compiled graph answers within the server's self-check tolerance, not bit for bit.
            difference = answer_difference(sample.expected, answer.get("predictions"))
            assert difference is None, f"{name}: answers differ: {difference}"
            print(f"{name} ...", file=sys.stderr)
            cells += load_test(server, name, bodies, args, "/predict")
        finally:
            server.stop()

    for key in filter(None, args.peers.split(",")):
        reason = ensure_venv(PEERS[key][0], args.venvs)
        for peer in PEERS[key]:
            if reason is not None:
                notes.append(f"{peer.name} not measured: {reason}")
                continue
            peer_cells, note = run_peer(peer, args, work, sample, env)
            cells += peer_cells
            notes.append(note)
    print_table(cells, notes, args)


def _close(got: Any, want: Any) -> bool:
    if isinstance(want, float):
        return isinstance(got, float) and abs(got - want) <= 1e-9 * max(1.0, abs(want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_close(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_close, got, want))
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
    ours = {c.batch: c for c in cells if c.server == "ours"}
    order = [*OURS, *PEER_NAMES]
    for cell in sorted(cells, key=lambda c: (c.batch, [*order, c.server].index(c.server))):
        shown_ratio = f"{_ratio(ours.get(cell.batch), cell):.2f}x" if is_peer(cell) else ""
        errors = f" ({cell.errors} non-200)" if cell.errors else ""
        print(
            f"| {cell.server}{errors} | {cell.batch} | {cell.requests_per_s:,.0f} | "
            f"{cell.requests_per_s * cell.batch:,.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | "
            f"{cell.cpu_ms_per_request:.2f} | {shown_ratio} |"
        )
    print(f"\n{goal_line(cells, args.batch_sizes)}")
    print(f"{fast_path_goal_line(cells)}\n")
    for note in notes:
        print(f"- {note}")


def is_peer(cell: Cell) -> bool:
    return cell.server in PEER_NAMES


def _ratio(ours: Cell | None, peer: Cell) -> float:
    """Our requests/s over the peer's, NaN without both."""
    if ours is None or not peer.requests_per_s:
        return float("nan")
    return ours.requests_per_s / peer.requests_per_s


FAST_PATH_GOALS = {
    ("ours", 1): 0.4,
    ("ours", 100): 0.6,
    (f"{IN_PROCESS}, {COMPILED}", 1): 0.1,
}
"""The compiled path's goals: CPU ms per request (served) or per call (in-process) at most,
by row and instances per request."""


def fast_path_goal_line(cells: list[Cell]) -> str:
    """``FAST_PATH_GOALS``: met, NOT met, or not checked, with the figures."""
    found = {(c.server, c.batch): c for c in cells}
    oks, texts = [], []
    for (server, batch), limit in FAST_PATH_GOALS.items():
        cell = found.get((server, batch))
        oks.append(None if cell is None else cell.cpu_ms_per_request <= limit)
        figure = "not measured" if cell is None else f"{cell.cpu_ms_per_request:.3f}"
        texts.append(f"{server} at {batch} inst/req: {figure} (goal <= {limit})")
    state = "NOT met" if False in oks else "not checked" if None in oks else "met"
    return f"Goal (compiled path, CPU ms per request): {state}; " + "; ".join(texts)


GOAL = "ours >= 2x the best peer's req/s at <= half its server CPU per request"


def goal_line(cells: list[Cell], batches: list[int]) -> str:
    """``GOAL`` at every request size: met, NOT met, or not checked, with the numbers."""
    verdicts = [goal_at(cells, batch) for batch in batches]
    oks = [ok for ok, _ in verdicts]
    state = "NOT met" if False in oks else "not checked" if None in oks else "met"
    return f"Goal ({GOAL}): {state}; " + "; ".join(text for _, text in verdicts)


def goal_at(cells: list[Cell], batch: int) -> tuple[bool | None, str]:
    """Whether ours meets ``GOAL`` against the fastest peer at one request size (None: no
    row to compare), and the figures."""
    ours = next((c for c in cells if c.server == "ours" and c.batch == batch), None)
    peers = [c for c in cells if is_peer(c) and c.batch == batch]
    if ours is None or not peers:
        return None, f"{batch} inst/req: no {'peer' if ours else 'ours'} row"
    best = max(peers, key=lambda c: c.requests_per_s)
    speed = _ratio(ours, best)
    cpu = ours.cpu_ms_per_request / best.cpu_ms_per_request
    return speed >= 2 and cpu <= 0.5, (
        f"{batch} inst/req: ours {ours.requests_per_s:,.0f} req/s at "
        f"{ours.cpu_ms_per_request:.2f} CPU ms/req, best peer {best.server} "
        f"{best.requests_per_s:,.0f} req/s at {best.cpu_ms_per_request:.2f} CPU ms/req: "
        f"{speed:.2f}x its req/s at {cpu:.2f}x its CPU"
    )


if __name__ == "__main__":
    main()

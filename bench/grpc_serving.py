"""Benchmark the serving image's gRPC route against its HTTP route, same container and model.

Run from the repository root (about 2 minutes with the defaults; the image build is cached
after the first):

    .venv/bin/python bench/grpc_serving.py                 # penguins, 10 s per cell
    .venv/bin/python bench/grpc_serving.py --duration 5 --batches 100

What it does, all on loopback with bounded durations:

1. trains the penguins model (``train_and_export``, or ``--model-dir``) and builds the serving
   image with it baked in (``build_serving_image``, as ``bench/startup.py``);
2. starts one container with ``SERVING_GRPC_PORT`` set and ``--workers`` workers (both routes
   share the workers and their batcher), and checks that both routes answer the exported
   sample as ``expected_predictions.jsonl`` says;
3. at each instances-per-request size, drives the HTTP route with ``hey`` and the gRPC route
   (``inference.GRPCInferenceService/ModelInfer``) with a ``grpc.aio`` client, one after the
   other, after a warm-up each. The gRPC client mirrors ``hey -c``: ``--concurrency`` callers,
   each on its own channel and TCP connection (the server's workers share the port with
   ``SO_REUSEPORT``, so connections are what spreads load over them), one call in flight
   each; the request is built once (``tensors.request_from_instances``) and serialized once,
   answers are not parsed, and any status but OK counts as an error;
4. reads the CPU time of the container's process tree from ``/proc`` before and after each
   run (``bench/serving.py``'s ``cpu_seconds``), the load generator's own CPU time, and the
   machine's busy time, so that other work on a shared machine shows;
5. prints one Markdown table, whether gRPC is at least as fast as HTTP at the largest size,
   and, in this process, each route's message handling (decode, validation, encode; no model,
   no transport) and one model call: a server CPU per request near the model call's cost
   means requests did not share model calls (``batching``).

Like ``bench/serving.py``, nothing is pinned or limited: the load generator shares the
machine's cores with the server, so its CPU per request is printed beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from serving import (  # noqa: E402
    CLK_TCK,
    Cell,
    answer_difference,
    cpu_seconds,
    post_json,
    run_hey,
)

from components.imaging import build_serving_image  # noqa: E402
from components.runners import ServerSpec, detect_engine, start_server  # noqa: E402
from components.runners.engine import Container  # noqa: E402
from serving_image.server import artifact  # noqa: E402
from serving_image.server.predictor import Predictor, load_predictor  # noqa: E402
from serving_image.server.protos import grpc_predict_v2_pb2 as pb  # noqa: E402
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402
from serving_image.server.tensors import (  # noqa: E402
    infer_request,
    infer_response,
    predictions_from_response,
    request_from_instances,
)
from serving_image.server.validation import parse_predict_request  # noqa: E402

TAG = "localhost/train-to-serve-bench-grpc:latest"
HTTP_PORT, GRPC_PORT = 8080, 8081
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
"""The server's limit both ways (``SERVING_MAX_BODY_BYTES``' default)."""
DISTURBED_CORES = 0.25
"""Other work above this many cores during a compared cell makes its verdict doubtful."""
IN_PROCESS_S, IN_PROCESS_REPEATS = 0.2, 5
"""Each in-process cost: the best of this many timings of this many seconds."""
CHANNEL_OPTIONS = [
    # Each channel its own connection: gRPC otherwise shares one among equal channels.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    parser.add_argument("--concurrency", type=int, default=8, help="connections (hey -c)")
    parser.add_argument("--workers", type=int, default=2, help="SERVING_WORKERS (%(default)s)")
    parser.add_argument("--batches", default="1,100", help="instances per request")
    parser.add_argument("--model-dir", type=Path, help="a trained model (default: penguins)")
    return parser.parse_args()


async def grpc_load(target: str, body: bytes, seconds: float, concurrency: int) -> dict[str, float]:
    """``concurrency`` callers send ``body`` (a serialized ``ModelInferRequest``) back to back
    for ``seconds``; returns what ``run_hey`` returns: req/s, p50/p99 (ms), OK and other
    answers."""
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(concurrency)
    ]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    latencies: list[float] = []
    errors = 0

    async def caller(channel: grpc.aio.Channel, deadline: float) -> None:
        nonlocal errors
        infer = channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes both ways
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await infer(body, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(caller(channel, started + seconds) for channel in channels))
    elapsed = time.monotonic() - started
    await asyncio.gather(*(channel.close() for channel in channels))
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "p50": quantiles[49] * 1000,
        "p99": quantiles[98] * 1000,
        "ok": len(latencies) - errors,
        "errors": errors,
    }


def client_cpu_seconds() -> float:
    """CPU time of this process and its finished children (``hey``)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (``/proc/stat``), in seconds."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Row:
    """One measured cell, what the load generator used, and what else ran meanwhile."""

    cell: Cell
    client_ms_per_request: float
    others_cores: float
    """CPU used by neither the server nor the load generator, in cores: other work on a
    shared machine, which takes cores from both."""


def measure(
    protocol: str,
    batch: int,
    server_pid: int,
    run: Callable[[float], dict[str, float]],
    args: argparse.Namespace,
) -> Row:
    """One cell after a warm-up."""
    run(args.warmup)
    server_before, client_before = cpu_seconds(server_pid), client_cpu_seconds()
    busy_before, started = busy_cpu_seconds(), time.monotonic()
    result = run(args.duration)
    server_used = cpu_seconds(server_pid) - server_before
    client_used = client_cpu_seconds() - client_before
    others = busy_cpu_seconds() - busy_before - server_used - client_used
    requests = result["ok"] + result["errors"]
    per_request = 1000 / requests if requests else float("nan")
    print(f"  {protocol} batch {batch}: {result['rps']:.0f} req/s", file=sys.stderr)
    cell = Cell(
        protocol,
        batch,
        result["rps"],
        result["p50"],
        result["p99"],
        int(result["ok"]),
        int(result["errors"]),
        server_used * per_request,
    )
    return Row(cell, client_used * per_request, max(others, 0.0) / (time.monotonic() - started))


def container_pid(server: Container) -> int:
    """The host PID of the container's first process (the gunicorn master)."""
    out = server.runner.command("inspect", "--format", "{{.State.Pid}}", server.id).stdout
    return int(out.strip())


def in_process_costs(
    predictor: Predictor, instances: list[Any], features: list[Any]
) -> dict[str, float]:
    """µs per request, in this process (the repository's server code and venv), of each
    route's message handling (decode + validate + encode the answer; no model, no transport)
    and of one model call: server CPU per request near the latter means no merging."""
    body = orjson.dumps({"instances": instances})
    message = request_from_instances(instances, features).SerializeToString()
    request = parse_predict_request(body, predictor.schema)
    predictions = predictor(request)

    def http() -> None:
        parse_predict_request(body, predictor.schema)
        orjson.dumps({"predictions": predictions})

    def grpc_route() -> None:
        infer_request(pb.ModelInferRequest.FromString(message), predictor.schema)
        answer = infer_response(predictions, task=predictor.task, model_name="")
        answer.SerializeToString()

    costs = {}
    for name, handle in (
        ("HTTP", http),
        ("gRPC", grpc_route),
        ("model", lambda: predictor(request)),
    ):
        per_call = []
        for _ in range(IN_PROCESS_REPEATS):  # the best repeat: the least disturbed by others
            rounds, started = 0, time.perf_counter()
            while time.perf_counter() - started < IN_PROCESS_S:
                handle()
                rounds += 1
            per_call.append((time.perf_counter() - started) / rounds * 1e6)
        costs[name] = min(per_call)
    return costs


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as work:
        run(args, Path(work))
    return 0


def run(args: argparse.Namespace, work: Path) -> None:
    engine = detect_engine()
    model_dir = args.model_dir
    if model_dir is None:
        from components.training import train_and_export

        model_dir = work / "penguins"
        train_and_export("penguins", model_dir)
    print(f"building {TAG} with {model_dir} baked in ...", file=sys.stderr)
    build_serving_image(engine, TAG, model_dir, on_line=lambda _: None)
    sample = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    features = artifact.read_manifest(model_dir)["features"]
    predictor, _ = load_predictor(model_dir)
    env = {
        "AIP_HTTP_PORT": str(HTTP_PORT),
        "AIP_HEALTH_ROUTE": "/health",
        "AIP_PREDICT_ROUTE": "/predict",
        "AIP_STORAGE_URI": "",
        "SERVING_WORKERS": str(args.workers),
        "SERVING_GRPC_PORT": str(GRPC_PORT),
    }
    spec = ServerSpec(TAG, port=HTTP_PORT, grpc_port=GRPC_PORT, env=env)
    rows: list[Row] = []
    notes: list[str] = []
    with start_server(engine, spec) as server:
        server.wait_until_serving("/health")
        time.sleep(1)  # every worker loads on its own; let the last one finish
        check_answers(server, sample, features, expected)
        pid = container_pid(server)
        for batch in (int(b) for b in args.batches.split(",")):
            instances = (sample * (batch // len(sample) + 1))[:batch]
            body_file = work / f"request_{batch}.json"
            body_file.write_bytes(orjson.dumps({"instances": instances}))
            message = request_from_instances(instances, features).SerializeToString()

            def http(seconds: float, body_file: Path = body_file) -> dict[str, float]:
                return run_hey(f"{server.url}/predict", body_file, seconds, args.concurrency)

            def grpc_run(seconds: float, message: bytes = message) -> dict[str, float]:
                load = grpc_load(server.grpc_target, message, seconds, args.concurrency)
                return asyncio.run(load)

            rows.append(measure("HTTP", batch, pid, http, args))
            rows.append(measure("gRPC", batch, pid, grpc_run, args))
            costs = in_process_costs(predictor, instances, features)
            notes.append(
                f"in-process at {batch} instances/request, µs/request: message handling "
                f"(decode, validate, encode; no model, no transport) HTTP {costs['HTTP']:.0f}, "
                f"gRPC {costs['gRPC']:.0f}; one model call {costs['model']:.0f}"
            )
    print_table(rows, notes, args, engine.name)


def check_answers(
    server: Container, sample: list[Any], features: list[Any], expected: list[Any]
) -> None:
    """Both routes answer the exported sample as expected (else the figures mean nothing)."""

    answer = post_json(f"{server.url}/predict", orjson.dumps({"instances": sample}))
    assert answer_difference(expected, answer.get("predictions")) is None, (
        "HTTP answers differ from expected"
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request_from_instances(sample, features), timeout=30)
    assert answer_difference(expected, predictions_from_response(response)) is None, (
        "gRPC answers differ from expected"
    )


def print_table(rows: list[Row], notes: list[str], args: argparse.Namespace, engine: str) -> None:
    print(
        f"\nThe serving image in {engine}, penguins model, {args.workers} workers, both routes "
        f"in the same container; {args.concurrency} connections (hey -c / gRPC channels), "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up; loopback, nothing "
        "pinned.\n"
    )
    print(
        "| protocol | inst/req | req/s | inst/s | p50 ms | p99 ms | server CPU ms/req | "
        "load generator CPU ms/req | other work, cores |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cell = row.cell
        errors = f" ({cell.errors} errors)" if cell.errors else ""
        print(
            f"| {cell.server}{errors} | {cell.batch} | {cell.requests_per_s:,.0f} | "
            f"{cell.requests_per_s * cell.batch:,.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | "
            f"{cell.cpu_ms_per_request:.2f} | {row.client_ms_per_request:.2f} | "
            f"{row.others_cores:.2f} |"
        )
    largest = max(row.cell.batch for row in rows)
    compared = {row.cell.server: row for row in rows if row.cell.batch == largest}
    rate = {protocol: row.cell.requests_per_s for protocol, row in compared.items()}
    met = rate["gRPC"] >= rate["HTTP"]
    disturbed = max(row.others_cores for row in compared.values()) > DISTURBED_CORES
    print(
        f"\nGoal, gRPC at least as fast as HTTP at {largest} instances/request: "
        f"{'met' if met else 'NOT met'} (gRPC {rate['gRPC']:,.0f} req/s, "
        f"HTTP {rate['HTTP']:,.0f} req/s, {rate['gRPC'] / rate['HTTP']:.2f}x)"
        + (
            f"; other work used over {DISTURBED_CORES:g} cores during these cells: "
            "rerun on a quiet machine before trusting the verdict"
            if disturbed
            else ""
        )
        + "\n"
    )
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    sys.exit(main())

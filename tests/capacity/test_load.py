"""The load generator against real server processes.

A toy aiohttp server in its own process has routes whose capacity is known by construction:
``/sleepy`` answers after 20 ms, any number at once; ``/serial`` answers one request at a time
after 10 ms (100 requests/s at most); ``/fail`` answers 500; ``/count`` says how many requests
it got. Against it the step figures must be what physics allows (Little's law, the count the
server saw) and each rule of ``stepped`` must be what ends a run. Against the real penguins
server (``python -m serving_image.server``) a step gets plausible, error-free figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from components.capacity import load
from components.capacity.load import StepResult, percentile, run_step, stepped
from components.runners import free_local_port
from serving_image.server import artifact
from tests.support.servers import LaunchedServer, StartupTimeline

SLEEP_S = 0.020
SERIAL_S = 0.010
TOY_SERVER = f"""
import asyncio, sys
from aiohttp import web

seen = 0
one_at_a_time = asyncio.Lock()

async def counted(request):
    global seen
    seen += 1
    await request.read()

async def sleepy(request):
    await counted(request)
    await asyncio.sleep({SLEEP_S})
    return web.json_response({{"predictions": [0]}})

async def serial(request):
    await counted(request)
    async with one_at_a_time:
        await asyncio.sleep({SERIAL_S})
    return web.json_response({{"predictions": [0]}})

async def fail(request):
    await counted(request)
    return web.Response(status=500, text="model exploded")

async def count(request):
    return web.json_response({{"seen": seen}})

app = web.Application()
app.add_routes([web.post("/sleepy", sleepy), web.post("/serial", serial),
                web.post("/fail", fail), web.get("/count", count)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""
BODY = json.dumps({"instances": [[1.0, 2.0]] * 3}).encode()


class Toy:
    """The toy server's base URL and its request count."""

    def __init__(self, url: str) -> None:
        self.url = url

    def seen(self) -> int:
        return int(httpx.get(f"{self.url}/count", timeout=5).json()["seen"])


@pytest.fixture(scope="module")
def toy() -> Iterator[Toy]:
    port = free_local_port()
    process = subprocess.Popen(
        [sys.executable, "-c", TOY_SERVER, str(port)], stderr=subprocess.PIPE, text=True
    )
    server = Toy(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                server.seen()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the toy server did not start"
                time.sleep(0.05)
        yield server
    finally:
        process.kill()
        process.wait(10)


def test_a_step_counts_what_the_server_answered_and_obeys_littles_law(toy: Toy) -> None:
    before = toy.seen()
    step = run_step(f"{toy.url}/sleepy", BODY, 4, 1.0, instances_per_request=3)
    assert toy.seen() - before == step.requests  # every request sent was answered and counted
    assert (step.concurrency, step.errors, step.first_error) == (4, 0, "")
    assert 1.0 <= step.seconds < 1.0 + 0.2  # in-flight requests finish after the time is up
    assert step.requests_per_s * step.seconds == pytest.approx(step.requests)
    assert step.instances_per_s == pytest.approx(3 * step.requests_per_s)
    assert step.p50_ms is not None and step.p99_ms is not None and step.max_ms is not None
    assert SLEEP_S * 1000 <= step.p50_ms <= step.p99_ms <= step.max_ms
    # Little's law: in flight = throughput x latency; 4 workers never beat 4 / 20 ms.
    assert step.requests_per_s <= 4 / SLEEP_S
    assert step.requests_per_s == pytest.approx(4 / (step.p50_ms / 1000), rel=0.25)
    assert step.within and step.within_slo(step.p99_ms) and not step.within_slo(step.p99_ms - 1)


def test_errors_are_counted_with_the_first_ones_text(toy: Toy) -> None:
    before = toy.seen()
    step = run_step(f"{toy.url}/fail", BODY, 2, 0.5)
    assert step.errors == toy.seen() - before > 0
    assert step.first_error.startswith("HTTP 500 Internal Server Error: b'model exploded'")
    assert (step.requests, step.requests_per_s, step.p50_ms, step.p99_ms) == (0, 0.0, None, None)
    assert not step.within

    nobody = f"http://127.0.0.1:{free_local_port()}/predict"
    refused = run_step(nobody, BODY, 2, 0.3)
    assert refused.errors > 0 and refused.requests == 0
    assert "Cannot connect to host" in refused.first_error
    # A dead server is not hammered in a busy loop: each worker pauses after a failure.
    assert refused.errors <= 2 * 0.3 / load.ERROR_PAUSE_S + 2


def test_stepped_climbs_to_the_cap_while_throughput_grows(toy: Toy) -> None:
    steps = stepped(
        f"{toy.url}/sleepy",
        BODY,
        3,
        latency_slo_ms=1000,
        budget_seconds=30,
        max_concurrency=6,
        step_seconds=0.5,
    )
    assert [s.concurrency for s in steps] == [1, 2, 4, 6]  # the cap itself is the last step
    assert [s.ended_by for s in steps] == ["", "", "", load.ENDED_BY_MAX_CONCURRENCY]
    rates = [s.instances_per_s for s in steps]
    assert rates == sorted(rates) and rates[-1] > 4 * rates[0]
    assert all(s.errors == 0 and s.server_cpu_seconds is None for s in steps)


def test_stepped_stops_when_throughput_stops_growing(toy: Toy) -> None:
    steps = stepped(
        f"{toy.url}/serial", BODY, 3, latency_slo_ms=1000, budget_seconds=30, step_seconds=0.5
    )
    last = steps[-1]
    assert last.ended_by == load.ENDED_BY_SATURATION
    assert last.concurrency <= 8, [s.requests_per_s for s in steps]
    assert last.requests_per_s <= 1 / SERIAL_S * 1.05  # one at a time: 100 requests/s at most
    # The last SATURATION_STEPS steps each gained nothing over the best before them.
    for end in range(len(steps) - load.SATURATION_STEPS, len(steps)):
        best = max(s.instances_per_s for s in steps[:end])
        assert steps[end].instances_per_s < best * (1 + load.MIN_GAIN), end
    assert [s.ended_by for s in steps[:-1]] == [""] * (len(steps) - 1)
    assert last.p50_ms is not None and steps[0].p50_ms is not None
    assert last.p50_ms > 1.5 * steps[0].p50_ms  # more concurrency only queued


def test_stepped_stops_at_the_latency_objective_errors_and_budget(toy: Toy) -> None:
    slow = stepped(
        f"{toy.url}/sleepy", BODY, 1, latency_slo_ms=15, budget_seconds=30, step_seconds=0.3
    )
    assert [(s.concurrency, s.ended_by) for s in slow] == [(1, load.ENDED_BY_LATENCY)]
    assert slow[0].p99_ms is not None and slow[0].p99_ms > 15

    failing = stepped(
        f"{toy.url}/fail", BODY, 1, latency_slo_ms=1000, budget_seconds=30, step_seconds=0.3
    )
    assert [(s.concurrency, s.ended_by) for s in failing] == [(1, load.ENDED_BY_ERRORS)]

    started = time.monotonic()
    budgeted = stepped(
        f"{toy.url}/sleepy", BODY, 1, latency_slo_ms=1000, budget_seconds=1.7, step_seconds=0.5
    )
    took = time.monotonic() - started
    assert [s.concurrency for s in budgeted] == [1, 2, 4]  # a fourth would end after 2.0 s
    assert budgeted[-1].ended_by == load.ENDED_BY_BUDGET
    assert took < 1.7 + 0.15  # over by the last requests in flight at most


def test_settings_that_measure_nothing_are_refused(toy: Toy) -> None:
    with pytest.raises(ValueError, match="concurrency=0: it must be above 0"):
        run_step(f"{toy.url}/sleepy", BODY, 0, 1.0)
    with pytest.raises(ValueError, match="shorter than one step"):
        stepped(f"{toy.url}/sleepy", BODY, 1, latency_slo_ms=100, budget_seconds=1, step_seconds=2)


def test_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_a_step_on_the_real_penguins_server(
    penguins_server: tuple[LaunchedServer, StartupTimeline],
) -> None:
    server, _ = penguins_server
    instances = artifact.read_sample(server.env["AIP_STORAGE_URI"])[0]
    body = json.dumps({"instances": instances[:5]}).encode()
    step: StepResult = run_step(
        server.url(server.predict_route), body, 2, 1.0, instances_per_request=5
    )
    assert (step.errors, step.first_error) == (0, "")
    assert step.requests > 10, step
    assert step.p50_ms is not None and step.p99_ms is not None
    assert 0 < step.p50_ms <= step.p99_ms < 1000
    assert step.instances_per_s == pytest.approx(5 * step.requests_per_s)

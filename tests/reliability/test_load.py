"""The server under load on loopback: no errors, a killed worker costs only its own requests,
SIGTERM lets the requests in flight finish, and a request on an idle keep-alive connection at
the instant of SIGTERM is answered.

The load comes from ``CLIENTS`` asyncio tasks in this process, each with one keep-alive
connection sending the same pre-encoded POST as soon as the previous answer is in. The
client is a few lines over ``asyncio`` streams rather than httpx so that the load generator
costs little of the two CPUs it shares with the server. Every answer is checked: status 200
and the exported labels, in order (concurrent requests are merged into one model call, so
this also checks that merged answers go back to the right requests).

``RELIABILITY_LOAD_S`` sets the length of each load phase (default 60 s).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from serving_image.server import artifact
from tests.support.servers import launch_server

if TYPE_CHECKING:
    from tests.reliability.figures import Figures
    from tests.support.servers import LaunchedServer

    StartServer = Callable[..., LaunchedServer]

pytestmark = pytest.mark.reliability

CLIENTS = 8
LOAD_S = float(os.environ.get("RELIABILITY_LOAD_S", "60"))
KILL_PHASE_S = 12.0
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


@dataclass
class Workload:
    """One request body, sent again and again, and the labels it must be answered with."""

    request: bytes
    labels: list[Any]

    @classmethod
    def from_model(cls, model_dir: Path, route: str, instances: int) -> Workload:
        sample = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
        expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
        rows = [index % len(sample) for index in range(instances)]
        body = orjson.dumps({"instances": [sample[i] for i in rows]})
        head = (
            f"POST {route} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return cls(head.encode() + body, [expected[i]["label"] for i in rows])


@dataclass
class LoadResult:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per answered request."""
    statuses: Counter[int] = field(default_factory=Counter)
    wrong_answers: int = 0
    failed: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, exception name) of requests sent that got no complete answer."""
    refused: int = 0
    """Connection attempts refused (or reset while connecting)."""
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.answered,
            "requests/s": round(self.answered / self.seconds),
            "p50 ms": self.percentile_ms(0.50),
            "p99 ms": self.percentile_ms(0.99),
            "status codes": dict(self.statuses),
            "wrong answers": self.wrong_answers,
            "failed requests": len(self.failed),
        }


class Client:
    """One keep-alive connection; ``in_flight`` is true from sending a request to its answer."""

    def __init__(self, port: int, workload: Workload, result: LoadResult) -> None:
        self.port = port
        self.workload = workload
        self.result = result
        self.in_flight = False
        self.connected_at: list[float] = []
        """When (monotonic) each of its connections was opened."""
        self.outcomes: list[str] = []
        """Per request sent: "200", another status, or the exception that ended it."""

    async def run(self, until: float) -> None:
        """Send requests until ``until`` (monotonic) or until a connection is refused."""
        reader = writer = None
        while time.monotonic() < until:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    self.connected_at.append(time.monotonic())
                except (ConnectionRefusedError, ConnectionResetError):
                    # Reset: accepted by the kernel as the workers closed the listening
                    # socket at the end of their drain; refused either way.
                    self.result.refused += 1
                    return
            assert reader is not None
            self.in_flight = True
            started = time.perf_counter()
            try:
                writer.write(self.workload.request)
                head = await reader.readuntil(b"\r\n\r\n")
                match = CONTENT_LENGTH.search(head)
                assert match, head
                body = await reader.readexactly(int(match[1]))
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.result.failed.append((time.monotonic(), type(exc).__name__))
                self.outcomes.append(type(exc).__name__)
                writer.close()
                writer = None
                continue
            finally:
                self.in_flight = False
            self.result.latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            self.result.statuses[status] += 1
            self.outcomes.append(str(status))
            if status != 200 or self._labels(body) != self.workload.labels:
                self.result.wrong_answers += 1
            if b"\r\nconnection: close" in head.lower():
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    @staticmethod
    def _labels(body: bytes) -> list[Any]:
        return [prediction["label"] for prediction in orjson.loads(body)["predictions"]]


def run_load(
    server: LaunchedServer,
    workload: Workload,
    seconds: float,
    during: Callable[[list[Client]], Awaitable[None]] | None = None,
) -> LoadResult:
    """``CLIENTS`` clients for ``seconds``; ``during`` runs alongside them (fault injection)."""
    result = LoadResult()
    clients = [Client(server.port, workload, result) for _ in range(CLIENTS)]

    async def main() -> None:
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(client.run(until)) for client in clients]
        if during is not None:
            await during(clients)
        await asyncio.gather(*tasks)

    started = time.monotonic()
    asyncio.run(main())
    result.seconds = time.monotonic() - started
    return result


def server_connections(pid: int, port: int) -> int:
    """Established TCP connections on ``port`` held by process ``pid`` (from ``/proc``)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in sockets:  # 01: ESTABLISHED
            count += 1
    return count


@pytest.fixture(scope="module")
def load_server(penguins_model_dir: Path) -> Iterator[LaunchedServer]:
    """The penguins model behind two workers (the machine has two CPUs), default settings."""
    server = launch_server(penguins_model_dir, {"SERVING_WORKERS": "2"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize("instances", [1, 100])
def test_eight_clients_for_a_minute_get_only_correct_answers(
    load_server: LaunchedServer, penguins_model_dir: Path, figures: Figures, instances: int
) -> None:
    workload = Workload.from_model(penguins_model_dir, load_server.predict_route, instances)
    workers = load_server.worker_pids()
    result = run_load(load_server, workload, LOAD_S)
    figures[f"load: {CLIENTS} clients, {instances} instance(s)/request, {LOAD_S:.0f} s"].update(
        result.summary()
    )
    assert result.failed == [] and result.refused == 0
    assert result.statuses == {200: result.answered} and result.wrong_answers == 0
    assert result.answered > 0
    assert load_server.worker_pids() == workers
    assert not [e for e in load_server.logs() if e["severity"] in ("ERROR", "CRITICAL")]


def test_a_worker_killed_under_load_is_replaced_and_only_its_requests_fail(
    load_server: LaunchedServer, penguins_model_dir: Path, figures: Figures
) -> None:
    """SIGKILL one worker mid-load: the requests on its connections (one in flight per
    connection, at most) fail; everything else, and everything after, is answered."""
    workload = Workload.from_model(penguins_model_dir, load_server.predict_route, 1)
    workers = load_server.worker_pids()
    killed: dict[str, float] = {}

    async def kill_a_worker(clients: list[Client]) -> None:
        await asyncio.sleep(KILL_PHASE_S / 3)
        # The kernel may hand every keep-alive connection to one worker: kill a busy one.
        held = {pid: server_connections(pid, load_server.port) for pid in workers}
        killed["victim"] = max(held, key=held.__getitem__)
        killed["connections"] = held[killed["victim"]]
        killed["in flight"] = sum(client.in_flight for client in clients)
        os.kill(killed["victim"], signal.SIGKILL)
        killed["at"] = time.monotonic()

    result = run_load(load_server, workload, KILL_PHASE_S, during=kill_a_worker)
    replacement = load_server.wait_for_log(
        lambda e: e["message"].startswith("model loaded") and e["pid"] not in workers
    )
    figures["worker SIGKILLed under load (1 instance/request)"].update(
        {
            "requests": result.answered,
            "victim's connections at the kill": killed["connections"],
            "requests in flight (all clients) at the kill": killed["in flight"],
            "failed requests": len(result.failed),
            "wrong answers": result.wrong_answers,
        }
    )
    assert 0 < killed["connections"] <= CLIENTS
    assert len(result.failed) <= killed["connections"], result.failed
    assert all(at - killed["at"] < 1.0 for at, _ in result.failed), result.failed
    assert result.statuses == {200: result.answered} and result.wrong_answers == 0
    assert load_server.worker_pids() == (workers - {killed["victim"]}) | {replacement["pid"]}
    assert load_server.health().status_code == 200


def test_sigterm_under_load_finishes_the_requests_in_flight_then_refuses_and_exits_0(
    start_server: StartServer, penguins_model_dir: Path, figures: Figures
) -> None:
    """Requests in flight at SIGTERM are answered 200, new connections are refused, and the
    server exits 0 well within its grace period."""
    grace_s = 10
    server = start_server(
        penguins_model_dir, {"SERVING_WORKERS": "2", "SERVING_GRACE_PERIOD_S": str(grace_s)}
    )
    server.wait_ready()
    workload = Workload.from_model(penguins_model_dir, server.predict_route, 100)
    at_sigterm: dict[str, Any] = {}

    async def terminate(clients: list[Client]) -> None:
        at_sigterm["clients"] = clients
        await asyncio.sleep(3)
        at_sigterm["in flight"] = [(c, len(c.outcomes)) for c in clients if c.in_flight]
        server.process.send_signal(signal.SIGTERM)
        at_sigterm["at"] = time.monotonic()
        exit_status = await asyncio.to_thread(server.process.wait, grace_s + 5)
        at_sigterm["exit"] = (exit_status, time.monotonic() - at_sigterm["at"])

    result = run_load(server, workload, 30, during=terminate)
    in_flight = [client.outcomes[index] for client, index in at_sigterm["in flight"]]
    exit_status, exit_s = at_sigterm["exit"]
    opened_after = sum(
        t > at_sigterm["at"] for client in at_sigterm["clients"] for t in client.connected_at
    )
    figures["SIGTERM under load (100 instances/request)"].update(
        {
            "requests in flight at SIGTERM": len(in_flight),
            "their outcomes": dict(Counter(in_flight)),
            "requests sent after SIGTERM that failed": len(result.failed),
            "connections refused after SIGTERM": result.refused,
            "connections accepted after SIGTERM, then closed": opened_after,
            "exit status, seconds after SIGTERM": f"{exit_status}, {exit_s:.2f}",
        }
    )
    assert in_flight and in_flight == ["200"] * len(in_flight)
    assert exit_status == 0 and exit_s < grace_s
    assert result.statuses == {200: result.answered} and result.wrong_answers == 0
    # After the drain, a request sent on a kept-alive connection before the worker closed
    # that connection is never read: the connection closes unanswered (safe to retry), at
    # most one per connection. Those are the clients' open connections, plus any a client
    # opened in the instant before the workers closed their copies of the listening socket;
    # the next connection is refused.
    # Requests lost are those of the drain's end (SERVING_DRAIN_S, 1 s): until then every
    # request is answered, with "Connection: close" on the kept-alive ones.
    assert len(result.failed) <= CLIENTS + opened_after
    assert all(at - at_sigterm["at"] > 0.9 for at, _ in result.failed), result.failed
    assert result.refused == CLIENTS, "every client ends on a refused connection"
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(asyncio.open_connection("127.0.0.1", server.port))


def test_a_request_on_an_idle_keep_alive_connection_at_sigterm_is_answered(
    start_server: StartServer, penguins_model_dir: Path, figures: Figures
) -> None:
    """Clients holding idle keep-alive connections (a load balancer's pool) send at the
    instant of SIGTERM: every request is answered 200, with ``Connection: close`` once the
    worker drains."""
    server = start_server(penguins_model_dir, {"SERVING_WORKERS": "2"})
    server.wait_ready()
    body = orjson.dumps(
        {"instances": artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)[:5]}
    )
    headers = {"Content-Type": "application/json"}
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(16)
    ]
    for connection in connections:  # one request each: then they sit idle, kept alive
        connection.request("POST", server.predict_route, body, headers)
        answer = connection.getresponse()
        assert answer.status == 200 and answer.getheader("connection") != "close"
        answer.read()

    server.process.send_signal(signal.SIGTERM)
    outcomes = []
    for connection in connections:
        try:
            connection.request("POST", server.predict_route, body, headers)
            answer = connection.getresponse()
            answer.read()
            outcomes.append(f"{answer.status} connection: {answer.getheader('connection')}")
        except (OSError, http.client.HTTPException) as exc:
            outcomes.append(type(exc).__name__)
    exit_status = server.process.wait(30)

    figures["idle keep-alive connections at SIGTERM"].update(
        {"connections": len(connections), "outcomes": dict(Counter(outcomes))}
    )
    assert all(outcome.startswith("200 ") for outcome in outcomes), outcomes
    # A request the worker answers before SIGTERM reaches it (the master passes it on) keeps
    # its connection; from the drain on, every answer closes it.
    closing = [outcome.endswith("close") for outcome in outcomes]
    assert closing[-1] and closing == sorted(closing), outcomes
    assert exit_status == 0

"""The local endpoint's router: a real router process (``get_or_create_endpoint`` starts it)
in front of real model server processes (``id_server.py``, which answer with their own name).

The endpoint records name those servers as deployed models (what ``deploy`` would write for
containers); the splits are set with ``set_traffic`` and read by the router from the record
on the next request. No container engine is needed.
"""

import http.client
import inspect
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from components import stand_ins, traffic, vertex
from components.files import write_json_atomically
from components.runners import send
from components.stand_ins import endpoints as le
from components.stand_ins.resources import MODELS_PREFIX, now_rfc3339
from components.stand_ins.router import SmoothWeightedRoundRobin
from tests.support.stand_ins import process_alive

ID_SERVER = Path(__file__).resolve().parent / "id_server.py"
A, B, C = "1000000000000000001", "1000000000000000002", "1000000000000000003"
"""Deployed model ids; each one's server answers with the id as its name."""
MODEL = f"{MODELS_PREFIX}4000000000000000004"


@dataclass
class Upstream:
    name: str
    process: subprocess.Popen[str]
    base_url: str


@pytest.fixture
def upstream() -> Iterator[Callable[[str], Upstream]]:
    """Factory: start ``id_server.py --name NAME``; every one is killed after the test."""
    started: list[Upstream] = []

    def start(name: str) -> Upstream:
        process = subprocess.Popen(
            [sys.executable, str(ID_SERVER), "--name", name], stdout=subprocess.PIPE, text=True
        )
        port = int(process.stdout.readline().split()[-1])
        started.append(Upstream(name, process, f"http://127.0.0.1:{port}"))
        return started[-1]

    yield start
    for server in started:
        server.process.kill()
        server.process.wait()
        server.process.stdout.close()


@pytest.fixture
def endpoints_dir(tmp_path: Path) -> Iterator[Path]:
    """The test's endpoints; each is undeployed after it, and its router must be gone."""
    directory = tmp_path / "endpoints"
    yield directory
    for endpoint in stand_ins.list_endpoints(directory) if directory.exists() else []:
        endpoint = stand_ins.get_endpoint(endpoint.endpoint_id, directory)
        stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=directory)
        assert not process_alive(endpoint.router_pid)


def deployed(upstream: Upstream, version: str = "1") -> stand_ins.LocalDeployedModel:
    """A deployed model record for a server ``deploy`` did not start (no container)."""
    return stand_ins.LocalDeployedModel(
        id=upstream.name,
        model=f"{MODEL}@{version}",
        model_display_name="ids",
        base_url=upstream.base_url,
        predict_route="/predict",
        health_route="/health",
        container_id=f"none-{upstream.name}",
        container_name=f"id-server-{upstream.name}",
        image="none",
        engine="process",
        create_time=now_rfc3339(),
        startup_seconds=0.1,
    )


def endpoint_with(
    endpoints_dir: Path, models: list[stand_ins.LocalDeployedModel], split: dict[str, int]
) -> stand_ins.LocalEndpoint:
    """An endpoint with a running router, whose record names ``models`` with ``split``."""
    endpoint, created = stand_ins.get_or_create_endpoint("router-test", endpoints_dir)
    assert created
    endpoint = replace(endpoint, deployed_models=tuple(models), traffic_split=split)
    write_json_atomically(endpoints_dir / f"{endpoint.endpoint_id}.json", endpoint.to_json())
    return endpoint


class Client:
    """One keep-alive connection to the router, as a client library would hold it."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, route: str, payload: Any) -> tuple[int, dict[str, str], Any]:
        self.connection.request(
            "POST", route, json.dumps(payload), {"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, json.loads(body)

    def close(self) -> None:
        self.connection.close()


def answered_by(endpoint: stand_ins.LocalEndpoint, count: int) -> Counter[str]:
    """Send ``count`` predicts; which deployed model answered each (all must be 200)."""
    client = Client(endpoint.base_url)
    seen: Counter[str] = Counter()
    try:
        for _ in range(count):
            status, headers, answer = client.post(
                le.predict_path(endpoint.endpoint_id), {"instances": [1]}
            )
            assert status == 200, answer
            assert answer["deployedModelId"] == headers["x-vertex-ai-deployed-model-id"]
            assert answer["server"] == answer["deployedModelId"]
            seen[answer["deployedModelId"]] += 1
    finally:
        client.close()
    return seen


# --- the choice by the split -----------------------------------------------------------------


def test_smooth_weighted_round_robin_is_exact_over_every_hundred_and_spreads_out() -> None:
    chooser = SmoothWeightedRoundRobin({A: 90, B: 10, C: 0})
    picks = [chooser.pick() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert Counter(picks[start : start + 100]) == {A: 90, B: 10}
    gaps = [i for i, pick in enumerate(picks) if pick == B]
    assert max(b - a for a, b in itertools.pairwise(gaps)) == 10  # never bunched
    assert SmoothWeightedRoundRobin({A: 0}).pick() is None


def test_a_90_10_split_is_honoured_over_2000_requests_with_vertex_fields_and_headers(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    endpoint = endpoint_with(
        endpoints_dir, [deployed(upstream(A), "1"), deployed(upstream(B), "2")], {A: 90, B: 10}
    )
    started = time.monotonic()
    seen = answered_by(endpoint, 2000)
    elapsed = time.monotonic() - started
    print(f"\n  2000 predicts through the router: {elapsed:.2f} s")
    assert abs(seen[A] - 1800) <= 100 and abs(seen[B] - 200) <= 100
    assert seen == {A: 1800, B: 200}  # smooth weighted round-robin: exact

    client = Client(endpoint.base_url)
    status, headers, answer = client.post(le.predict_path(endpoint.endpoint_id), {"instances": [1]})
    client.close()
    assert status == 200
    assert answer["predictions"] == [answer["server"]]
    assert answer["model"] == MODEL  # without @version
    assert answer["modelVersionId"] == {A: "1", B: "2"}[answer["deployedModelId"]]
    assert answer["modelDisplayName"] == "ids"
    assert headers["x-vertex-ai-endpoint-id"] == endpoint.endpoint_id
    assert headers["x-vertex-ai-model"] == MODEL
    assert headers["x-vertex-ai-model-version-id"] == answer["modelVersionId"]


def test_a_new_split_applies_from_the_next_request_without_a_restart(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    endpoint = endpoint_with(
        endpoints_dir, [deployed(upstream(A)), deployed(upstream(B))], {A: 100, B: 0}
    )
    assert answered_by(endpoint, 20) == {A: 20}

    changed = stand_ins.set_traffic(
        endpoint.endpoint_id, {A: 0, B: 100}, endpoints_dir=endpoints_dir
    )
    assert changed.previous_traffic_split == {A: 100, B: 0}
    assert answered_by(endpoint, 20) == {B: 20}
    stand_ins.set_traffic(endpoint.endpoint_id, {A: 50, B: 50}, endpoints_dir=endpoints_dir)
    assert answered_by(endpoint, 100) == {A: 50, B: 50}
    stand_ins.rollback_traffic(endpoint.endpoint_id, endpoints_dir=endpoints_dir)
    assert answered_by(endpoint, 20) == {B: 20}

    now = stand_ins.get_endpoint(endpoint.endpoint_id, endpoints_dir)
    assert now.router_pid == endpoint.router_pid  # the same router process throughout
    log = (endpoints_dir / f"{endpoint.endpoint_id}.router.log").read_text()
    assert log.count("starting on 127.0.0.1") == 1
    assert "reloaded: " in log and f"split {B}=100,{A}=0" in log

    with pytest.raises(traffic.TrafficSplitError, match="adds up to 90%"):
        stand_ins.set_traffic(endpoint.endpoint_id, {A: 90}, endpoints_dir=endpoints_dir)
    with pytest.raises(traffic.TrafficSplitError, match="not deployed on the endpoint"):
        stand_ins.set_traffic(endpoint.endpoint_id, {C: 100}, endpoints_dir=endpoints_dir)


def test_the_one_model_route_reaches_a_model_at_0_percent_and_raw_predict_is_as_is(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    endpoint = endpoint_with(
        endpoints_dir, [deployed(upstream(A)), deployed(upstream(B))], {A: 100, B: 0}
    )
    body = json.dumps({"instances": [1, 2]}).encode()
    for _ in range(3):
        exchange = stand_ins.raw_predict(
            endpoint.endpoint_id, body, deployed_model_id=B, endpoints_dir=endpoints_dir
        )
        assert exchange.status == 200
        assert exchange.json() == {"predictions": [B, B], "server": B, "path": "/predict"}
        assert exchange.headers["x-vertex-ai-deployed-model-id"] == B
    exchange = stand_ins.raw_predict(endpoint.endpoint_id, body, endpoints_dir=endpoints_dir)
    assert exchange.json() == {"predictions": [A, A], "server": A, "path": "/predict"}
    assert exchange.headers["x-vertex-ai-deployed-model-id"] == A
    assert exchange.headers["content-type"].startswith("application/json")

    with pytest.raises(stand_ins.EndpointInputError, match=f"no deployed model '{C}'"):
        stand_ins.raw_predict(
            endpoint.endpoint_id, body, deployed_model_id=C, endpoints_dir=endpoints_dir
        )


# --- failures --------------------------------------------------------------------------------


def test_a_model_killed_under_load_fails_no_request(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    servers = [upstream(A), upstream(B)]
    endpoint = endpoint_with(endpoints_dir, [deployed(s) for s in servers], {A: 50, B: 50})
    answers: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        client = Client(endpoint.base_url)
        try:
            while not stop.is_set():
                status, _, answer = client.post(
                    le.predict_path(endpoint.endpoint_id), {"instances": [1]}
                )
                with lock:
                    answers.append((time.monotonic(), status, answer.get("server", answer)))
        finally:
            client.close()

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(answers) < 300:
        time.sleep(0.01)
    servers[1].process.send_signal(signal.SIGKILL)
    servers[1].process.wait()
    killed = time.monotonic()
    while len(answers) < 1200:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()

    assert [a for a in answers if a[1] != 200] == []
    assert {a[2] for a in answers if a[0] < killed} == {A, B}
    assert {a[2] for a in answers if a[0] > killed + 0.1} == {A}
    log = (endpoints_dir / f"{endpoint.endpoint_id}.router.log").read_text()
    assert f"sent again to deployed model {A}" in log


def test_no_model_with_traffic_unknown_models_and_model_errors_are_answered_clearly(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    endpoint = endpoint_with(endpoints_dir, [deployed(upstream(A))], {})
    client = Client(endpoint.base_url)
    route = le.predict_path(endpoint.endpoint_id)
    try:
        status, headers, answer = client.post(route, {"instances": [1]})
        assert status == 503
        assert (
            f"endpoint {endpoint.endpoint_id} has no deployed model with traffic"
            in (answer["error"])
        )
        assert "deploy a model or set the split" in answer["error"]
        assert headers["x-vertex-ai-endpoint-id"] == endpoint.endpoint_id
        assert headers["x-local-router-error"] == "no-traffic"
        with pytest.raises(stand_ins.EndpointError, match="no deployed model with traffic"):
            stand_ins.predict(endpoint.endpoint_id, [1], endpoints_dir=endpoints_dir)

        stand_ins.set_traffic(endpoint.endpoint_id, {A: 100}, endpoints_dir=endpoints_dir)
        status, headers, answer = client.post(
            le.raw_predict_path(endpoint.endpoint_id, C), {"instances": [1]}
        )
        assert status == 404
        assert answer["error"] == (
            f"endpoint {endpoint.endpoint_id} has no deployed model {C} (deployed: {A})"
        )
        status, _, answer = client.post(le.predict_path("123"), {"instances": [1]})
        assert (
            status == 404
            and f"serves endpoint {endpoint.endpoint_id}, not 123" in (answer["error"])
        )

        # A model's own error passes through unchanged, with the headers.
        for path in (route, le.raw_predict_path(endpoint.endpoint_id)):
            status, headers, answer = client.post(path, {"status": 418})
            assert (status, answer) == (418, {"error": "asked for 418", "server": A})
            assert headers["x-vertex-ai-deployed-model-id"] == A
            assert "x-local-router-error" not in headers
        with pytest.raises(stand_ins.EndpointError, match=f"deployed model {A}.*answered 418"):
            stand_ins.predict(
                endpoint.endpoint_id, [1], {"status": 418}, endpoints_dir=endpoints_dir, timeout_s=5
            )
    finally:
        client.close()

    too_large = b'{"instances": ["' + b"x" * vertex.MAX_FORWARDED_BODY_BYTES + b'"]}'
    exchange = stand_ins.raw_predict(endpoint.endpoint_id, too_large, endpoints_dir=endpoints_dir)
    assert exchange.status == 413 and "send fewer instances" in exchange.json()["error"]


def test_a_model_that_does_not_answer_is_named_with_its_state(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    gone = upstream(A)
    endpoint = endpoint_with(endpoints_dir, [deployed(gone)], {A: 100})
    gone.process.kill()
    gone.process.wait()
    exchange = stand_ins.raw_predict(endpoint.endpoint_id, b"{}", endpoints_dir=endpoints_dir)
    assert exchange.status == 502
    assert exchange.headers["x-local-router-error"] == "unreachable"
    assert exchange.headers["x-vertex-ai-deployed-model-id"] == A
    with pytest.raises(stand_ins.EndpointError, match=f"deployed model {A} at") as caught:
        stand_ins.predict(endpoint.endpoint_id, [1], endpoints_dir=endpoints_dir)
    assert (
        f"no longer exists.\nUndeploy it (compile.py endpoints undeploy {endpoint.endpoint_id}"
        in (str(caught.value))
    )


# --- the router process ----------------------------------------------------------------------


def test_the_router_is_restarted_on_its_port_and_stops_with_its_endpoint(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    endpoint = endpoint_with(endpoints_dir, [deployed(upstream(A))], {A: 100})
    assert stand_ins.router_status(endpoint, endpoints_dir) == "running"
    again, created = stand_ins.get_or_create_endpoint("router-test", endpoints_dir)
    assert not created and again.router_pid == endpoint.router_pid

    os.kill(endpoint.router_pid, signal.SIGKILL)
    while process_alive(endpoint.router_pid):
        time.sleep(0.01)
    assert stand_ins.router_status(endpoint, endpoints_dir) == "stopped"
    assert send(endpoint.base_url, "GET", "/healthz", 1).status is None
    answer = stand_ins.predict(endpoint.endpoint_id, [1], endpoints_dir=endpoints_dir)  # restarts
    assert answer["deployedModelId"] == A
    restarted = stand_ins.get_endpoint(endpoint.endpoint_id, endpoints_dir)
    assert restarted.router_port == endpoint.router_port
    assert restarted.router_pid != endpoint.router_pid
    assert stand_ins.router_status(restarted, endpoints_dir) == "running"

    # A record removed behind the router's back: it stops by itself.
    (endpoints_dir / f"{endpoint.endpoint_id}.json").unlink()
    deadline = time.monotonic() + 10
    while process_alive(restarted.router_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(restarted.router_pid)


def test_the_router_refuses_a_record_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text("{not json")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            le.ROUTER_MODULE,
            "--record",
            str(tmp_path / "1.json"),
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot start: endpoint record" in result.stderr and "is unreadable" in result.stderr


# --- the rollout's view ----------------------------------------------------------------------


def test_the_rollout_view_lists_splits_undeploys_and_reaches_one_model(
    upstream: Callable[[str], Upstream], endpoints_dir: Path
) -> None:
    models = [deployed(upstream(A), "1"), deployed(upstream(B), "2"), deployed(upstream(C), "3")]
    endpoint = endpoint_with(endpoints_dir, models, {A: 60, B: 40, C: 0})
    ops = stand_ins.LocalEndpointOps(endpoint.resource_name, endpoints_dir)
    assert ops.resource_name == endpoint.resource_name
    listed = ops.deployed_models()
    assert [(d.id, d.model, d.version_id) for d in listed] == [
        (A, MODEL, "1"),
        (B, MODEL, "2"),
        (C, MODEL, "3"),
    ]
    assert listed[2].version_name == f"{MODEL}@3"
    assert ops.traffic_split() == {A: 60, B: 40, C: 0}
    exchange = ops.raw_predict(C, b'{"instances": [0]}', 5)
    assert exchange.headers["x-vertex-ai-deployed-model-id"] == C

    ops.undeploy(B)  # its 40% back to the others in proportion
    assert ops.traffic_split() == {A: 100, C: 0}
    assert [d.id for d in ops.deployed_models()] == [A, C]
    with pytest.raises(stand_ins.EndpointInputError, match="serves 100% of endpoint"):
        ops.undeploy(A)
    ops.set_traffic({A: 0, C: 100})
    ops.undeploy(A)
    ops.undeploy(C)
    assert ops.traffic_split() == {} and ops.deployed_models() == []


def test_the_local_endpoint_and_registry_have_the_rollout_interfaces() -> None:
    """``rollout.steps.Endpoint`` and ``Registry`` are satisfied structurally (stand_ins does
    not import rollout): every method, with the same parameters."""
    from components.rollout import steps

    pairs = [
        (steps.Endpoint, stand_ins.LocalEndpointOps),
        (steps.Registry, stand_ins.LocalRegistryOps),
    ]
    for protocol, local in pairs:
        methods = [n for n, m in vars(protocol).items() if callable(m) and not n.startswith("_")]
        assert methods, protocol
        for name in methods:
            expected = list(inspect.signature(getattr(protocol, name)).parameters)
            assert list(inspect.signature(getattr(local, name)).parameters) == expected, name
    assert steps.DeployedModel is vertex.DeployedModel  # one definition, below both

"""The model server's HTTP contract, against a real server process serving a real model."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from serving_image.server import artifact
from tests.server.answers import answer_difference

if TYPE_CHECKING:
    from tests.support.servers import LaunchedServer, StartupTimeline


@pytest.fixture(scope="module")
def server(penguins_server: tuple[LaunchedServer, StartupTimeline]) -> LaunchedServer:
    return penguins_server[0]


@pytest.fixture(scope="module")
def sample(penguins_model_dir: Path) -> tuple[list[dict[str, Any]], list[Any], list[str]]:
    """The exported instances, their expected predictions and the feature order."""
    instances = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    names = [f["name"] for f in artifact.read_manifest(penguins_model_dir)["features"]]
    return instances, expected, names


def test_port_accepts_before_health_turns_200_and_health_is_503_until_loaded(
    penguins_server: tuple[LaunchedServer, StartupTimeline],
) -> None:
    timeline = penguins_server[1]
    codes = [code for _, code in timeline.health_codes]
    assert codes[0] == 503 and codes[-1] == 200 and set(codes) == {200, 503}
    assert timeline.tcp_accepted_s < timeline.first_ready_s


def test_health_answers_json(server: LaunchedServer) -> None:
    response = server.health()
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
    assert httpx.head(server.url(server.health_route)).status_code == 200


def test_object_instances_give_the_exported_predictions(server, sample) -> None:
    instances, expected, _ = sample
    response = server.predict({"instances": instances})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert answer_difference({"predictions": expected}, response.json()) is None


def test_list_instances_in_manifest_order_give_the_same_predictions(server, sample) -> None:
    instances, expected, names = sample
    rows = [[instance[name] for name in names] for instance in instances]
    assert (
        answer_difference({"predictions": expected}, server.predict({"instances": rows}).json())
        is None
    )


def test_one_request_is_one_ordered_batch(server, sample) -> None:
    instances, expected, _ = sample
    reordered = instances[::-1] * 10
    predictions = server.predict({"instances": reordered}).json()["predictions"]
    assert len(predictions) == len(instances) * 10
    assert [p["label"] for p in predictions] == [e["label"] for e in expected[::-1] * 10]
    for got, want in zip(predictions, expected[::-1] * 10, strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], rel=1e-12)


@pytest.mark.parametrize("output", ["label", "probabilities", "both"])
def test_output_parameter(server, sample, output: str) -> None:
    instances, expected, _ = sample
    response = server.predict({"instances": instances, "parameters": {"output": output}})
    predictions = response.json()["predictions"]
    if output == "label":
        assert predictions == [e["label"] for e in expected]
    elif output == "probabilities":
        assert answer_difference([e["probabilities"] for e in expected], predictions) is None
    else:
        assert answer_difference(expected, predictions) is None


def test_nulls_are_imputed_by_the_model(server, sample) -> None:
    names = sample[2]
    as_objects = server.predict({"instances": [dict.fromkeys(names)], "parameters": None})
    as_lists = server.predict({"instances": [[None] * len(names)]})
    assert as_objects.status_code == as_lists.status_code == 200
    assert as_objects.json() == as_lists.json()
    (prediction,) = as_objects.json()["predictions"]
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


GOOD = {
    "island": "Dream",
    "bill_length_mm": 41.5,
    "bill_depth_mm": 18.5,
    "flipper_length_mm": 201.0,
    "body_mass_g": 4000.0,
    "sex": "male",
    "year": 2009,
}
AS_LIST = list(GOOD.values())
DEEP: list[Any] = []
for _ in range(300):  # deeper than orjson writes back (254 levels)
    DEEP = [DEEP]


def with_(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


CLIENT_ERRORS = [
    # (body: bytes or JSON-able, status, message fragment, offending instance index)
    (b'{"instances": [', 400, "not valid JSON", None),
    (b'{"instances": [{"bill_length_mm": NaN}]}', 400, "NaN and Infinity are not JSON", None),
    (b'{"instances": [[Infinity]]}', 400, "not valid JSON", None),
    (b'{"instances": [[1e400]]}', 400, "not valid JSON", None),
    ([GOOD], 400, "must be a JSON object", None),
    ({"instance": [GOOD]}, 400, "no 'instances' list", None),
    ({"instances": GOOD}, 400, "'instances' must be a list, got object", None),
    ({"instances": []}, 400, "'instances' is empty", None),
    ({"instances": [GOOD, {**GOOD, "wings": 2}]}, 400, "unknown feature(s) ['wings']", 1),
    ({"instances": [GOOD, GOOD, {k: v for k, v in GOOD.items() if k != "sex"}]}, 400,
     "missing feature(s) ['sex']", 2),
    ({"instances": [with_(bill_length_mm="41.5")]}, 400,
     "feature 'bill_length_mm' expects a number or null, got string \"41.5\"", 0),
    ({"instances": [GOOD, with_(body_mass_g=True)]}, 400,
     "feature 'body_mass_g' expects a number or null, got boolean true", 1),
    ({"instances": [with_(year=[2009])]}, 400,
     "feature 'year' expects a number or null, got array", 0),
    ({"instances": [with_(sex={"v": "male"})]}, 400,
     "feature 'sex' expects a string or null, got object", 0),
    ({"instances": [with_(island=3)]}, 400,
     "feature 'island' expects a string or null, got number", 0),
    ({"instances": [AS_LIST, AS_LIST[:-1]]}, 400, "instances[1] has 6 values; expected 7", 1),
    ({"instances": [AS_LIST, [*AS_LIST[:1], "x", *AS_LIST[2:]]]}, 400,
     "feature 'bill_length_mm' expects a number or null, got string", 1),
    ({"instances": [GOOD, AS_LIST]}, 400, "instances[1] is array but instances[0] is object", 1),
    ({"instances": [5]}, 400, "instances[0] is number; each instance must be an object", 0),
    ({"instances": [GOOD], "parameters": ["both"]}, 400,
     "'parameters' must be an object, got array", None),
    ({"instances": [GOOD], "parameters": {"output": "scores"}}, 400,
     "parameters.output must be one of ['both', 'label', 'probabilities'], got \"scores\"", None),
    ({"instances": [GOOD], "parameters": {"outptu": "label"}}, 400,
     "unknown parameter(s) ['outptu']", None),
    # Found by the fuzzing in tests/reliability/test_fuzz.py; each was a 500 before.
    ({"instances": [GOOD, with_(body_mass_g=-1.7e308)]}, 400,
     "feature 'body_mass_g' is -1.7e+308; numbers must lie between -1e+30 and 1e+30", 1),
    ({"instances": [with_(island=DEEP)]}, 400,
     "feature 'island' expects a string or null, got array (a deeply nested array)", 0),
    ({"instances": [GOOD], "parameters": {"output": DEEP}}, 400,
     "parameters.output must be one of", None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "fragment", "index"), CLIENT_ERRORS)
def test_client_mistakes_get_4xx_naming_the_fault(
    server: LaunchedServer, body: Any, status: int, fragment: str, index: int | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        server.url(server.predict_route),
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()
    assert fragment in error["error"]
    assert error.get("instance") == index


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(server: LaunchedServer, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        server.url(server.predict_route),
        content=json.dumps({"instances": [GOOD]}).encode(),
        headers=headers,
    )
    assert response.status_code == 415
    assert "Content-Type must be application/json" in response.json()["error"]


def test_json_content_type_with_charset_is_accepted(server: LaunchedServer) -> None:
    response = httpx.post(
        server.url(server.predict_route),
        content=json.dumps({"instances": [GOOD]}).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


def _chunks(body: bytes, size: int = 16384):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_oversized_body_is_413_by_content_length(server: LaunchedServer) -> None:
    body = json.dumps({"instances": [GOOD] * 1500}).encode()  # ~250 kB > 200 kB limit
    assert len(body) > 200_000
    response = httpx.post(
        server.url(server.predict_route), content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "exceeds 200000 bytes" in response.json()["error"]


def test_oversized_streamed_body_is_413_while_reading(server: LaunchedServer) -> None:
    body = json.dumps({"instances": [GOOD] * 1500}).encode()
    response = httpx.post(
        server.url(server.predict_route),
        content=_chunks(body),  # a generator: chunked transfer encoding, no Content-Length
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


@pytest.mark.parametrize(("route", "status"), [("predict", 413), ("/v1/models", 404)])
def test_a_client_that_sends_the_whole_body_first_reads_the_answer_not_a_reset(
    server: LaunchedServer, route: str, status: int
) -> None:
    """urllib sends ``Connection: close`` and the whole body before it reads: the server reads
    and drops the refused body first, so the client gets the answer (before: ECONNRESET or
    BrokenPipeError, since closing a socket with unread data makes the kernel reset it)."""
    path = server.predict_route if route == "predict" else route
    body = b'{"instances": [' + b"[1, 2]," * 600_000 + b"[1, 2]]}"  # 4.2 MB
    request = urllib.request.Request(
        server.url(path), data=body, headers={"Content-Type": "application/json"}
    )
    for _ in range(20):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == status
        assert json.loads(refused.value.read())["error"]


def test_streamed_body_within_the_limit_is_served(server: LaunchedServer, sample) -> None:
    instances = sample[0][:10]
    body = json.dumps({"instances": instances * 50}).encode()
    response = httpx.post(
        server.url(server.predict_route),
        content=_chunks(body, 1024),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == len(instances) * 50


def test_unknown_route_is_404_json(server: LaunchedServer) -> None:
    response = httpx.get(server.url("/v1/models"))
    assert response.status_code == 404
    assert server.predict_route in response.json()["error"]


@pytest.mark.parametrize(("method", "route", "allow"), [
    ("GET", "predict", "POST"),
    ("PUT", "predict", "POST"),
    ("POST", "health", "GET, HEAD"),
])  # fmt: skip
def test_wrong_method_is_405_json(server: LaunchedServer, method: str, route: str, allow: str):
    path = server.predict_route if route == "predict" else server.health_route
    response = httpx.request(method, server.url(path))
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert f"method {method} not allowed" in response.json()["error"]


def test_logs_are_json_lines_with_severity_and_no_access_log(server: LaunchedServer) -> None:
    server.predict({"instances": [GOOD]})
    entries = server.logs()  # raises if a stdout line is not JSON
    assert entries and server.stderr == []
    for entry in entries:
        assert entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert entry["message"] and entry["time"].endswith("Z")
    assert not [e for e in entries if e["logger"] in ("uvicorn.access", "gunicorn.access")]
    assert not [e for e in entries if e["severity"] in ("WARNING", "ERROR", "CRITICAL")]


def test_the_master_binds_first_then_imports_the_ml_stack_once_for_its_workers(
    start_server: Callable[..., LaunchedServer], penguins_model_dir: Path
) -> None:
    """The port is bound before numpy/pandas/scikit-learn are imported (liveness never waits
    for them); the master imports them once and the workers share them (bench/startup.py:
    1.27 s instead of 1.38 s from ``podman run`` to health 200 with two workers). Where
    scikit-learn serves, that is: a compiled graph needs none of it (test_compiled)."""
    server = start_server(
        penguins_model_dir, {"SERVING_WORKERS": "2", "SERVING_PREDICTOR": "scikit-learn"}
    )
    server.wait_ready()
    entries = server.logs()
    messages = [e["message"] for e in entries if e["pid"] == server.process.pid]
    listening = next(i for i, m in enumerate(messages) if m.startswith("Listening at"))
    imported = messages.index("imported before forking the workers")
    assert listening < imported
    modules = next(e for e in entries if e["message"] == messages[imported])["modules"]
    assert {"numpy", "pandas", "sklearn.pipeline"} <= set(modules)
    assert "sklearn.linear_model._logistic" in modules  # the manifest's estimator
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "/sklearn/" in maps
    worker_maps = Path(f"/proc/{min(server.worker_pids())}/maps").read_text()
    assert "/sklearn/" in worker_maps


def test_the_server_never_sets_aip_variables(server: LaunchedServer) -> None:
    given = {k: v for k, v in server.env.items() if k.startswith("AIP_")}
    for pid in [server.process.pid, *server.worker_pids()]:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        seen = dict(item.decode().split("=", 1) for item in environ if item.startswith(b"AIP_"))
        assert seen == given


def test_workers_are_processes_and_a_dead_worker_is_replaced(server: LaunchedServer) -> None:
    workers = server.worker_pids()
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, 9)
    server.wait_for_log(lambda e: f"pid:{victim}" in e["message"])
    replacement = server.wait_for_log(
        lambda e: e["message"].startswith("model loaded") and e["pid"] not in workers
    )
    assert server.worker_pids() == (workers - {victim}) | {replacement["pid"]}
    for _ in range(10):  # both workers answer again
        assert server.health().status_code == 200

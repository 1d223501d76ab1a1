"""The model server as a process: model sources, load failures, 500s, shutdown, config."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c
import httpx
import pytest

from serving_image.server import artifact
from tests.server.answers import answer_difference
from tests.support import REPO_ROOT

if TYPE_CHECKING:
    from tests.support.servers import LaunchedServer

    StartServer = Callable[..., LaunchedServer]


class _MakesDirectoryWhenUnpickled:
    """Unpickling this runs ``os.mkdir(path)``: evidence that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.path),))


def test_a_tampered_model_is_refused_before_unpickling(
    start_server: StartServer, penguins_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "baked_in_model"
    shutil.copytree(penguins_model_dir, model_dir)
    evidence = tmp_path / "unpickled"
    (model_dir / artifact.MODEL_FILE).write_bytes(
        pickle.dumps(_MakesDirectoryWhenUnpickled(evidence))
    )
    # No AIP_STORAGE_URI (Vertex sets it empty): the directory baked into the image is used.
    server = start_server(
        "",
        {"SERVING_MODEL_DIR": str(model_dir), "SERVING_WORKERS": "2", "SERVING_LOG_LEVEL": "debug"},
    )
    failure = server.wait_for_log(lambda e: e["severity"] == "ERROR")
    assert "sha256" in failure["message"] and "refusing to unpickle" in failure["message"]
    assert str(model_dir) in failure["message"]

    health = server.health()
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and "sha256" in health.json()["error"]
    predict = server.predict({"instances": [[1, 2]]})
    assert predict.status_code == 503
    assert predict.json()["error"].startswith("model failed to load")

    other = server.wait_for_log(
        lambda e: e["message"].startswith("model failed") and e["pid"] != failure["pid"]
    )
    assert other["severity"] == "DEBUG", "the second worker does not repeat the ERROR"
    time.sleep(0.5)
    assert server.process.poll() is None, "a failed load must not crash the server"
    assert len(server.worker_pids()) == 2
    assert [e["severity"] for e in server.logs()].count("ERROR") == 1, "logged once"
    assert not evidence.exists()


@pytest.fixture
def scripted_server(start_server: StartServer, scripted_model_dir: Path) -> LaunchedServer:
    """The scripted regressor behind one worker, default routes, a 10 s grace period and
    the access log on."""
    server = start_server(
        scripted_model_dir,
        {"SERVING_WORKERS": "1", "SERVING_GRACE_PERIOD_S": "10", "SERVING_ACCESS_LOG": "true"},
    )
    server.wait_ready()
    return server


def test_an_unexpected_error_is_500_json_and_one_log_line(scripted_server: LaunchedServer) -> None:
    response = scripted_server.predict({"instances": [{"x": -7.25, "delay_s": 0}]})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal error while predicting (RuntimeError); the server log has the details"
    }
    # The line is written before the answer, but read from the server's stdout by a thread.
    scripted_server.wait_for_log(lambda e: e["severity"] == "ERROR")
    errors = [e for e in scripted_server.logs() if e["severity"] == "ERROR"]
    assert len(errors) == 1
    (error,) = errors
    assert "x must not be negative" in error["message"]
    assert "Traceback" in error["exception"] and "RuntimeError" in error["exception"]
    assert error["instances"] == 1
    assert json.loads(error["instances_excerpt"]) == {"x": -7.25, "delay_s": 0}
    healthy = scripted_server.predict({"instances": [{"x": 2, "delay_s": 0}]})
    assert healthy.json() == {"predictions": [4.0]}
    access = scripted_server.wait_for_log(lambda e: e["logger"] == "uvicorn.access")
    assert '"POST /predict HTTP/1.1" 500' in access["message"]
    assert access["severity"] == "INFO"


def test_sigterm_lets_the_in_flight_request_finish_then_exits(
    scripted_server: LaunchedServer,
) -> None:
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: result.update(
            response=scripted_server.predict({"instances": [{"x": 3, "delay_s": 1.5}]})
        )
    )
    request.start()
    time.sleep(0.5)  # the request is being predicted now
    signalled = time.monotonic()
    assert scripted_server.terminate(timeout=10) == 0
    request.join()
    assert result["response"].status_code == 200
    assert result["response"].json() == {"predictions": [6.0]}
    assert time.monotonic() - signalled < 5
    with pytest.raises(httpx.ConnectError):
        scripted_server.health()


def test_sigterm_stops_waiting_after_the_grace_period(
    start_server: StartServer, scripted_model_dir: Path
) -> None:
    server = start_server(
        scripted_model_dir, {"SERVING_WORKERS": "1", "SERVING_GRACE_PERIOD_S": "1"}
    )
    server.wait_ready()
    failed: list[Exception] = []

    def slow_request() -> None:
        try:
            server.predict({"instances": [{"x": 1, "delay_s": 30}]}, timeout=40)
        except httpx.TransportError as exc:
            failed.append(exc)

    request = threading.Thread(target=slow_request)
    request.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    server.terminate(timeout=10)
    assert time.monotonic() - signalled < 4
    request.join(10)
    assert failed, "the request outliving the grace period is cut off"


def test_invalid_configuration_exits_2_with_one_clear_log_line() -> None:
    env = {**os.environ, "AIP_HTTP_PORT": "eighty"}
    done = subprocess.run(
        [sys.executable, "-m", "serving_image.server"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    (line,) = done.stdout.splitlines()
    entry = json.loads(line)
    assert entry["severity"] == "CRITICAL"
    assert "AIP_HTTP_PORT='eighty' is not an integer" in entry["message"]


class FakeGcs:
    """The two JSON-API calls the storage client makes (list objects, download media),
    served from a dict on a local port; ``STORAGE_EMULATOR_HOST`` points the client here."""

    def __init__(self, bucket: str, objects: dict[str, bytes]) -> None:
        self.bucket = bucket
        self.objects = objects
        self.downloads: Counter[str] = Counter()
        self.unavailable = False
        """Answer every call 503, as a Cloud Storage outage does (the client retries it)."""
        self.calls: list[float] = []
        """``time.monotonic()`` of every call."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.calls.append(time.monotonic())
                if fake.unavailable:  # Cloud Storage's JSON error body
                    error = {"error": {"code": 503, "message": "Service Unavailable"}}
                    body = json.dumps(error).encode()
                    self.send_response(503)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                listing = f"/storage/v1/b/{fake.bucket}/o"
                media = f"/download/storage/v1/b/{fake.bucket}/o/"
                if url.path == listing:
                    prefix = query.get("prefix", [""])[0]
                    items = [
                        {"name": name, "bucket": fake.bucket, "size": str(len(data))}
                        for name, data in fake.objects.items()
                        if name.startswith(prefix)
                    ]
                    self._send(json.dumps({"kind": "storage#objects", "items": items}).encode())
                elif url.path.startswith(media):
                    name = urllib.parse.unquote(url.path[len(media) :])
                    fake.downloads[name] += 1
                    self._send(fake.objects[name], fake.hash_header(fake.objects[name]))
                else:
                    self.send_error(404)

            def _send(self, body: bytes, goog_hash: str = "") -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                if goog_hash:
                    self.send_header("x-goog-hash", goog_hash)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def hash_header(data: bytes) -> str:
        crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        return f"crc32c={crc},md5={md5}"


@pytest.fixture
def fake_gcs(penguins_model_dir: Path) -> Iterator[FakeGcs]:
    objects = {
        f"exports/run-1/model/{p.name}": p.read_bytes() for p in penguins_model_dir.iterdir()
    }
    objects["exports/run-1/model/"] = b""  # a "folder" placeholder object, as consoles create
    objects["exports/run-10/model/model.joblib"] = b"not this model"
    fake = FakeGcs("models-bucket", objects)
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    yield fake
    fake.server.shutdown()


def test_a_gcs_model_directory_is_downloaded_once_and_served(
    start_server: StartServer, fake_gcs: FakeGcs, penguins_model_dir: Path
) -> None:
    server = start_server(
        "gs://models-bucket/exports/run-1/model/",
        {"STORAGE_EMULATOR_HOST": fake_gcs.url, "SERVING_WORKERS": "2"},
    )
    server.wait_ready()
    instances = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    answer = server.predict({"instances": instances}).json()
    assert answer_difference({"predictions": expected}, answer) is None
    prefix = "exports/run-1/model/"
    assert fake_gcs.downloads == {prefix + p.name: 1 for p in penguins_model_dir.iterdir()}
    downloaded = [e for e in server.logs() if e["message"] == "downloaded the model directory"]
    assert len(downloaded) == 1 and downloaded[0]["files"] == len(fake_gcs.downloads)


def test_an_unreachable_model_is_tried_once_per_container_not_once_per_worker(
    start_server: StartServer, fake_gcs: FakeGcs
) -> None:
    """Cloud Storage answers 503 throughout: the first worker retries for
    SERVING_STORAGE_RETRY_S and gives up; the other workers take its reason at once instead
    of retrying in turn (3 workers would take three windows)."""
    fake_gcs.unavailable = True
    retry_s = 3
    server = start_server(
        "gs://models-bucket/exports/run-1/model/",
        {
            "STORAGE_EMULATOR_HOST": fake_gcs.url,
            "SERVING_WORKERS": "3",
            "SERVING_STORAGE_RETRY_S": str(retry_s),
            "SERVING_LOG_LEVEL": "debug",  # the other workers say so at DEBUG
        },
    )
    deadline = time.monotonic() + 60
    while len([e for e in server.logs() if e["message"].startswith("model failed to load")]) < 3:
        assert time.monotonic() < deadline, server.stdout
        time.sleep(0.1)
    assert fake_gcs.calls, "the storage client never called"
    assert max(fake_gcs.calls) - min(fake_gcs.calls) < retry_s + 1.5  # one window, not three
    errors = [e for e in server.logs() if e["severity"] == "ERROR"]
    assert len(errors) == 1 and "(retried for 3 s): ServiceUnavailable" in errors[0]["message"]
    health = server.health()
    assert health.status_code == 503 and "ServiceUnavailable" in health.json()["error"]


def test_waiting_requests_share_one_model_call_and_a_failure_stays_with_its_request(
    scripted_server: LaunchedServer,
) -> None:
    """While a slow call blocks the (single) worker, requests queue on their keep-alive
    connections; they are then predicted together: the model sleeps once for them, not
    once per request."""
    results: dict[float, httpx.Response] = {}

    def behind_a_slow_call(requests: list[tuple[float, float]]) -> float:
        clients = [httpx.Client(base_url=scripted_server.url(""), timeout=20) for _ in requests]
        blocking_client = httpx.Client(base_url=scripted_server.url(""), timeout=20)
        for client in clients:  # open the connections first, as a proxy keeps them open
            assert client.get(scripted_server.health_route).status_code == 200

        def post(client: httpx.Client, x: float, delay_s: float) -> None:
            body = {"instances": [{"x": x, "delay_s": delay_s}]}
            results[x] = client.post(scripted_server.predict_route, json=body)

        blocker = threading.Thread(target=post, args=(blocking_client, 100.0, 1.0))
        blocker.start()
        time.sleep(0.3)
        started = time.monotonic()
        queued = [
            threading.Thread(target=post, args=(client, *request))
            for client, request in zip(clients, requests, strict=True)
        ]
        for thread in queued:
            thread.start()
        for thread in [blocker, *queued]:
            thread.join()
        for client in [blocking_client, *clients]:
            client.close()
        return time.monotonic() - started

    elapsed = behind_a_slow_call([(1.0, 0.6), (2.0, 0.6), (3.0, 0.6), (4.0, 0.6)])
    assert elapsed < 0.7 + 0.6 + 0.5, "the queued requests were not merged"
    assert {x: results[x].json()["predictions"] for x in (100.0, 1.0, 2.0, 3.0, 4.0)} == {
        100.0: [200.0], 1.0: [2.0], 2.0: [4.0], 3.0: [6.0], 4.0: [8.0]
    }  # fmt: skip

    results.clear()
    behind_a_slow_call([(5.0, 0.0), (-1.0, 0.0), (6.0, 0.0)])
    assert results[-1.0].status_code == 500
    assert (results[5.0].json(), results[6.0].json()) == (
        {"predictions": [10.0]},
        {"predictions": [12.0]},
    )

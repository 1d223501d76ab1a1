"""Start-up faults: the server stays up answering 503, health never turns 200, and exactly one
ERROR line (for the whole container, not one per worker) says what is wrong.

Vertex drops a replica after failed health checks and shows its logs: a server that exited
instead would be restarted in a loop that hides the reason. A model file whose checksum does
not match the manifest is covered (with proof that it is never unpickled) by
``tests/server/test_process.py::test_a_tampered_model_is_refused_before_unpickling``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from components.runners import free_local_port
from serving_image.server import artifact

if TYPE_CHECKING:
    from reliability_figures import Figures

    from tests.support.servers import LaunchedServer

    StartServer = Callable[..., LaunchedServer]

pytestmark = pytest.mark.reliability

WORKERS = 2


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def missing_directory(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    return str(tmp_path / "nowhere"), {}


def missing_model_file(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    copy = _copy(model_dir, tmp_path)
    (copy / artifact.MODEL_FILE).unlink()
    return str(copy), {}


def corrupt_model_file(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Truncated, with the manifest's checksum updated to match: it fails to unpickle."""
    copy = _copy(model_dir, tmp_path)
    model = copy / artifact.MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    manifest = json.loads((copy / artifact.MANIFEST_FILE).read_text())
    manifest["model_sha256"] = artifact.sha256_file(model)
    (copy / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    # scikit-learn's path: the compiled graph, served by default, never unpickles the file
    return str(copy), {"SERVING_PREDICTOR": "scikit-learn"}


def wrong_manifest_version(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    copy = _copy(model_dir, tmp_path)
    manifest = json.loads((copy / artifact.MANIFEST_FILE).read_text())
    manifest["manifest_version"] = artifact.MANIFEST_VERSION + 1
    (copy / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    return str(copy), {}


def unreadable_manifest(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A manifest the server cannot read (a directory: root reads any file): before the
    master forked its workers it read the manifest to import their libraries, and crashed."""
    copy = _copy(model_dir, tmp_path)
    (copy / artifact.MANIFEST_FILE).unlink()
    (copy / artifact.MANIFEST_FILE).mkdir()
    return str(copy), {}


def unreachable_storage(model_dir: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A gs:// URI whose storage endpoint is a closed port, retried for 2 s."""
    closed = f"http://127.0.0.1:{free_local_port()}"
    return "gs://models-bucket/model", {
        "STORAGE_EMULATOR_HOST": closed,
        "SERVING_STORAGE_RETRY_S": "2",
    }


FAULTS = {
    "model directory missing": (missing_directory, "does not exist or is not a directory"),
    "model file missing": (missing_model_file, "model file 'model.joblib' not found in"),
    "model file corrupt": (corrupt_model_file, "cannot load"),
    "manifest unreadable": (unreadable_manifest, "cannot read"),
    "wrong manifest version": (
        wrong_manifest_version,
        f"manifest_version {artifact.MANIFEST_VERSION + 1} is not supported",
    ),
    "storage unreachable": (
        unreachable_storage,
        "cannot download the model from gs://models-bucket/model (retried for 2 s): "
        "ConnectionError",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_start_up_fault_keeps_the_server_up_at_503_with_one_error_line(
    start_server: StartServer,
    penguins_model_dir: Path,
    tmp_path: Path,
    figures: Figures,
    fault: str,
) -> None:
    make, reason = FAULTS[fault]
    source, env = make(penguins_model_dir, tmp_path)
    server = start_server(
        source, {**env, "SERVING_WORKERS": str(WORKERS), "SERVING_LOG_LEVEL": "debug"}
    )
    codes: list[int] = []
    deadline = time.monotonic() + 60
    while len(failures(server)) < WORKERS:  # every worker has given up: one ERROR, one DEBUG
        assert time.monotonic() < deadline, f"not every worker failed: {server.stdout}"
        assert server.process.poll() is None, f"the server exited: {server.stderr}"
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            codes.append(server.health(timeout=2).status_code)
        time.sleep(0.05)
    workers = server.worker_pids()
    time.sleep(1)  # long enough for a crash loop to show

    errors = [e for e in server.logs() if e["severity"] in ("ERROR", "CRITICAL")]
    figures["start-up faults: ERROR lines, health codes seen"][fault] = (
        f"{len(errors)}, {sorted(set(codes))}"
    )
    assert 200 not in codes and codes
    assert len(errors) == 1, errors
    assert reason in errors[0]["message"], errors[0]["message"]
    assert server.process.poll() is None and server.worker_pids() == workers
    assert len(workers) == WORKERS
    health = server.health()
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and reason in health.json()["error"]
    predict = server.predict({"instances": [[1]]})
    assert predict.status_code == 503
    assert predict.json()["error"].startswith("model failed to load")
    assert reason in predict.json()["error"]


def failures(server: LaunchedServer) -> list[dict[str, Any]]:
    """The "model failed to load" lines, one per worker that gave up."""
    return [e for e in server.logs() if e["message"].startswith("model failed to load")]

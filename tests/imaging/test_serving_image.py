"""The serving image, built and run with the real container engine (podman or docker).

The image is built from ``serving_image/`` exactly as the build-image component builds it
(``imaging.build_serving_image``), once with the penguins model baked in and once
without a model, and run the way Vertex AI runs it: the ``AIP_*`` variables set, the port
published (here on a random 127.0.0.1 port), stopped with SIGTERM.

Without a working engine these tests are skipped on a workstation and FAIL in CI (``CI=true``),
where the engine is set up by ``scripts/setup-container-engine.sh``. Run only these with
``pytest -m container -s`` to see the build and start-up timings.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from components.imaging import (
    BuildError,
    BuildResult,
    build,
    build_serving_image,
)
from components.runners import Container, Engine, Mount, ServerSpec, start_server
from serving_image.server import artifact
from tests.server.answers import answer_difference

pytestmark = pytest.mark.container

TAG_BAKED = "localhost/train-to-serve-test:model"
TAG_NO_MODEL = "localhost/train-to-serve-test:no-model"
# Vertex-style routes (with a colon), so that the server's route handling is exercised too.
HEALTH_ROUTE = "/v1/endpoints/1234/deployedModels/5678"
PREDICT_ROUTE = "/v1/endpoints/1234/deployedModels/5678:predict"
VERTEX_ENV = {
    "AIP_HTTP_PORT": "8080",
    "AIP_HEALTH_ROUTE": HEALTH_ROUTE,
    "AIP_PREDICT_ROUTE": PREDICT_ROUTE,
    "AIP_STORAGE_URI": "",
    "AIP_MODE": "PREDICTION",
    "AIP_FRAMEWORK": "CUSTOM_CONTAINER",
}
GRACE_PERIOD_S = 30.0
"""Kubernetes' default terminationGracePeriodSeconds: SIGTERM, then SIGKILL after this."""
STARTUP_TIMEOUT_S = 120.0
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins classifier, in a directory the container's non-root user can read."""
    from components.training import train_and_export

    root = tmp_path_factory.mktemp("image-model")
    model = root / "model"
    train_and_export("penguins", model)
    for path in (root, *root.rglob("*")):  # pytest makes its directories 0700
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def _build(engine: Engine, base_image: str, tag: str, model: Path | None) -> BuildResult:
    """Build, keeping the output for the failure message, and drop the image the tag held."""
    previous = engine.image_id(tag)
    lines: list[str] = []
    result = build_serving_image(engine, tag, model, base_image=base_image, on_line=lines.append)
    if previous and previous != result.image_id:
        engine.remove_image(previous)
    return result


@pytest.fixture(scope="module")
def baked_image(engine: Engine, base_image: str, model_dir: Path) -> str:
    result = _build(engine, base_image, TAG_BAKED, model_dir)
    TIMINGS["build (model baked in)"] = result.seconds
    print(
        f"\nbuilt {TAG_BAKED} ({result.image_id[:19]}) from {base_image} with {engine.name} "
        f"{engine.version} in {result.seconds:.1f} s ({result.cached_steps}/{result.steps} "
        f"steps cached), {engine.image_size(result.image_id) / 1e6:.0f} MB"
    )
    return result.image_id


@pytest.fixture(scope="module")
def no_model_image(engine: Engine, base_image: str) -> str:
    result = _build(engine, base_image, TAG_NO_MODEL, None)
    TIMINGS["build (no model)"] = result.seconds
    print(f"\nbuilt {TAG_NO_MODEL} in {result.seconds:.1f} s")
    return result.image_id


@pytest.fixture(scope="module")
def baked_server(engine: Engine, baked_image: str) -> Any:
    """One running container of the baked image, shared by the tests that only talk to it."""
    with start_server(engine, ServerSpec(baked_image, env=VERTEX_ENV, init=True)) as container:
        TIMINGS["start to health 200 (baked)"] = container.wait_until_serving(
            HEALTH_ROUTE, timeout=STARTUP_TIMEOUT_S
        )
        yield container


def _post_json(url: str, payload: Any, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _assert_predicts_expected(container: Container, model: Path) -> None:
    instances = artifact.read_jsonl(model / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model / artifact.EXPECTED_FILE)
    status, body = _post_json(container.url + PREDICT_ROUTE, {"instances": instances})
    assert status == 200, f"POST {PREDICT_ROUTE} -> {status}: {body}\n{container.last_logs(30)}"
    assert isinstance(body, dict) and set(body) >= {"predictions"}, body
    predictions = body["predictions"]
    assert len(predictions) == len(expected)
    for index, (got, want) in enumerate(zip(predictions, expected, strict=True)):
        difference = answer_difference(want, got)  # the compiled graph: within the self-check's
        assert difference is None, f"instance {index} {instances[index]}: {difference}"


def test_baked_model_serves_the_expected_predictions(
    baked_server: Container, model_dir: Path
) -> None:
    with urllib.request.urlopen(baked_server.url + HEALTH_ROUTE, timeout=10) as response:
        assert response.status == 200
    _assert_predicts_expected(baked_server, model_dir)


def test_image_runs_as_a_non_root_user(engine: Engine, baked_server: Container) -> None:
    user = engine.image_user(baked_server.image)
    assert user and user.split(":")[0] not in ("0", "root"), f"image USER is {user!r}"
    uid = baked_server.exec("id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0, f"the server runs as uid {uid!r}"
    # What Vertex runs: the image's own command, in exec form (the server is PID 1's child
    # here only because of --init).
    config = engine.image_inspect(baked_server.image).get("Config") or {}
    assert config.get("Cmd") or config.get("Entrypoint")
    assert "8080/tcp" in (config.get("ExposedPorts") or {})


def test_model_mounted_read_only_is_loaded_from_aip_storage_uri(
    engine: Engine, no_model_image: str, model_dir: Path
) -> None:
    mount = "/mnt/models/penguins"
    env = {**VERTEX_ENV, "AIP_STORAGE_URI": mount}
    spec = ServerSpec(no_model_image, env=env, mounts=(Mount(model_dir, mount),), init=True)
    with start_server(engine, spec) as container:
        TIMINGS["start to health 200 (mounted)"] = container.wait_until_serving(
            HEALTH_ROUTE, timeout=STARTUP_TIMEOUT_S
        )
        _assert_predicts_expected(container, model_dir)


def test_without_any_model_health_says_503_and_why(engine: Engine, no_model_image: str) -> None:
    """No baked model and no AIP_STORAGE_URI: the container stays up, health is never 200."""
    with start_server(engine, ServerSpec(no_model_image, env=VERTEX_ENV, init=True)) as container:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        status, body = None, ""
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(container.url + HEALTH_ROUTE, timeout=5) as response:
                    status, body = response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read().decode(errors="replace")
            except OSError:  # not listening yet
                status = None
            assert container.state().running, f"the container exited:\n{container.logs()}"
        logs = container.logs()
        assert status == 503, f"health answered {status}: {body}\n{logs}"
        # The reason names the directory the server looked in: the baked-in /model.
        assert "/model" in body or "/model" in logs, f"{body}\n{logs}"


def test_sigterm_stops_the_server_within_the_grace_period(engine: Engine, baked_image: str) -> None:
    # No --init: Vertex runs the image's command as PID 1, which must handle SIGTERM itself
    # (PID 1 ignores signals it has no handler for).
    with start_server(engine, ServerSpec(baked_image, env=VERTEX_ENV)) as container:
        container.wait_until_serving(HEALTH_ROUTE, timeout=STARTUP_TIMEOUT_S)
        stopped = container.stop(timeout=GRACE_PERIOD_S)
        TIMINGS["SIGTERM to exit"] = stopped.seconds
        logs = container.last_logs(20)
    assert not stopped.killed, f"still running {GRACE_PERIOD_S} s after SIGTERM:\n{logs}"
    assert stopped.exit_code == 0, f"exit code {stopped.exit_code} after SIGTERM:\n{logs}"


def test_rebuild_without_changes_comes_from_the_layer_cache(
    engine: Engine, base_image: str, baked_image: str, model_dir: Path
) -> None:
    result = _build(engine, base_image, TAG_BAKED, model_dir)
    TIMINGS["rebuild, nothing changed"] = result.seconds
    assert result.image_id == baked_image, "an unchanged rebuild produced a new image"
    assert result.cached_steps > 0


def test_a_failing_build_step_is_reported_with_its_output(
    engine: Engine, base_image: str, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo preparing\nRUN echo 'no such wheel: sklearnn' >&2 && exit 3\n"
    )
    with pytest.raises(BuildError) as caught:
        build(engine, tmp_path, "localhost/train-to-serve-test:broken", ca_bundle=False)
    error = caught.value
    assert "exit 3" in error.step or "sklearnn" in error.step
    assert "no such wheel: sklearnn" in error.output_tail
    assert "no such wheel: sklearnn" in str(error) and "failed" in str(error)

"""An XGBoost and a LightGBM model each get an image with their library at the manifest's
version, which serves the exported predictions.

Built as the build-image component builds them (``build_local``: the plan adds the library to
the image's requirements), once per library, and run as Vertex runs them. LightGBM needs the
system's libgomp: the local base has it, python:3.11-slim gets Debian's with apt in the build.
Run only these with ``pytest -m container -s tests/imaging/test_serving_image_boosting.py`` to
see the build timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.imaging import build_local
from components.imaging.plan import MODEL_LIBRARIES, BuiltImage
from components.runners import Container, Engine, ServerSpec, start_server
from serving_image.server import artifact
from tests.imaging.test_serving_image import (
    HEALTH_ROUTE,
    STARTUP_TIMEOUT_S,
    VERTEX_ENV,
    _assert_predicts_expected,
)
from tests.server.boosted import LIBRARIES, export_boosted

pytestmark = pytest.mark.container

IMAGE_NAME = "localhost/train-to-serve-boosted"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", params=LIBRARIES)
def boosted_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XGBoost, then a LightGBM pipeline, exported where the container's user can read it."""
    root = tmp_path_factory.mktemp(f"image-{request.param}")
    model = export_boosted(str(request.param), root / "model")
    for path in (root, *root.rglob("*")):  # pytest makes its directories 0700
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.fixture(scope="module")
def boosted_image(engine: Engine, base_image: str, boosted_model: Path) -> BuiltImage:
    """The model's image, built once per library (the previous one with its tag dropped)."""
    library = library_of(boosted_model)
    manifest = artifact.read_manifest(boosted_model)
    tag = f"{IMAGE_NAME}:model-{manifest['model_sha256'][:12]}"
    previous = engine.image_id(tag)
    started = time.monotonic()
    built = build_local(boosted_model, IMAGE_NAME, engine=engine, base_image=base_image)
    TIMINGS[f"build ({library})"] = time.monotonic() - started
    if previous and previous != built.image_id:
        engine.remove_image(previous)
    return built


@pytest.fixture(scope="module")
def boosted_server(engine: Engine, boosted_image: BuiltImage) -> Iterator[Container]:
    # scikit-learn's predictor, so that the library serves even where a compiled graph could.
    env = {**VERTEX_ENV, "SERVING_PREDICTOR": "scikit-learn"}
    with start_server(engine, ServerSpec(boosted_image.reference, env=env, init=True)) as c:
        TIMINGS["start to health 200"] = c.wait_until_serving(
            HEALTH_ROUTE, timeout=STARTUP_TIMEOUT_S
        )
        yield c


def library_of(model_dir: Path) -> str:
    [library] = set(artifact.read_manifest(model_dir)["libraries"]) & set(LIBRARIES)
    return library


def test_the_image_has_the_library_at_the_manifests_version(
    engine: Engine, boosted_image: BuiltImage, boosted_model: Path
) -> None:
    library = library_of(boosted_model)
    version = artifact.read_manifest(boosted_model)["libraries"][library]
    labels = engine.image_inspect(boosted_image.reference)["Config"]["Labels"]
    assert f"{library}=={version}" in labels["io.train-to-serve.libraries"].split()
    script = (
        f"import importlib.metadata as m, {library}; "
        f"print({library}.__version__, m.version({MODEL_LIBRARIES[library].requirement!r}))"
    )
    inside = engine.command(
        "run", "--rm", "--entrypoint", "python", boosted_image.reference, "-c", script
    ).stdout.split()
    assert inside == [version, version]


def test_the_image_serves_the_exported_predictions(
    boosted_server: Container, boosted_model: Path
) -> None:
    _assert_predicts_expected(boosted_server, boosted_model)
    library = library_of(boosted_model)
    logs = boosted_server.logs()
    assert "imported before forking the workers" in logs and library in logs

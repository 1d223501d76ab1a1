"""The TensorFlow serving image, built and contract-checked with the real container engine.

``build_image.build_local`` builds the image for a TensorFlow model (the framework comes from
its manifest: ``FRAMEWORK=tensorflow`` adds ``requirements-tensorflow.txt``), the contract
check runs it the way Vertex AI does and compares its predictions with the exported ones, and
the scikit-learn image is checked to hold no TensorFlow at all.

Skipped on a workstation without an engine, failed in CI (the ``engine`` fixture); the first
build downloads TensorFlow (~3 minutes), later ones are cached. ``pytest -m container -s``
prints the timings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.contract import check_model_image
from components.imaging import BuiltImage, build_local, build_serving_image
from components.runners import Engine
from serving_image.server import artifact

pytestmark = pytest.mark.container
pytest.importorskip("tensorflow", reason="the project's tensorflow extra is not installed")

TF_IMAGE = "localhost/train-to-serve-test-tf"
SKLEARN_TAG = "localhost/train-to-serve-test-tf:scikit-learn"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def tf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TensorFlow model directory that the image's non-root user can read when mounted."""
    from components.training import train_and_export

    model = tmp_path_factory.mktemp("tf-image-model") / "model"
    train_and_export("penguins", model, framework="tensorflow")
    for path in (model, *model.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.fixture(scope="module")
def tf_image(engine: Engine, base_image: str, tf_model: Path) -> BuiltImage:
    built = build_local(tf_model, TF_IMAGE, engine=engine, base_image=base_image)
    TIMINGS["build TF image (model baked)"] = built.seconds
    return built


def _python(engine: Engine, image: str, code: str) -> str:
    """Run ``python -c code`` in ``image``; its stdout."""
    return engine.command("run", "--rm", image, "python", "-c", code).stdout.strip()


def test_the_tensorflow_image_passes_the_contract_check(
    engine: Engine, tf_image: BuiltImage, tf_model: Path
) -> None:
    labels = engine.image_inspect(tf_image.reference)["Config"]["Labels"]
    assert labels["io.train-to-serve.framework"] == "tensorflow"
    manifest = artifact.read_manifest(tf_model)
    libraries = manifest["libraries"]
    assert labels["io.train-to-serve.libraries"] == (
        f"tensorflow=={libraries['tensorflow']} keras=={libraries['keras']} "
        f"numpy=={libraries['numpy']}"
    )
    started = time.monotonic()
    report, metadata = check_model_image(
        tf_image.reference,
        tf_model,
        health_route="/health",
        predict_route="/predict",
        env={"SERVING_WORKERS": "1"},
        engine=engine,
    )
    TIMINGS["contract check (TF image)"] = time.monotonic() - started
    assert report.passed, report.to_markdown()
    sample, _, _ = artifact.read_sample(tf_model)  # the edge instances also as lists
    values = report.result("predict-values").detail
    assert values.startswith(f"all {len(sample)} predictions equal the expected ones")
    assert metadata is not None
    assert report.startup_s is not None
    TIMINGS["TF image: start to health 200"] = report.startup_s
    assert "runs the model on CPU" in (report.logs or "")


def test_the_tensorflow_image_has_the_pinned_tensorflow(
    engine: Engine, tf_image: BuiltImage, tf_model: Path
) -> None:
    version = _python(engine, tf_image.reference, "import tensorflow as t; print(t.__version__)")
    assert version == artifact.read_manifest(tf_model)["libraries"]["tensorflow"]


def test_the_scikit_learn_image_has_no_tensorflow(engine: Engine, base_image: str) -> None:
    result = build_serving_image(engine, SKLEARN_TAG, base_image=base_image)
    TIMINGS["build scikit-learn image (cached)"] = result.seconds
    labels = engine.image_inspect(result.image_id)["Config"]["Labels"]
    assert labels["io.train-to-serve.framework"] == "scikit-learn"
    found = _python(
        engine,
        result.image_id,
        "import importlib.util as u; print([m for m in ('tensorflow', 'keras') if u.find_spec(m)])",
    )
    assert found == "[]"

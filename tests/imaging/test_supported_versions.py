"""A model trained with the oldest supported library versions gets an image with exactly those
versions, and it passes the contract check with its own expected predictions.

The newest supported versions are the project's own (every other container test builds and
checks them); here a fresh virtualenv with the oldest of ``SUPPORTED_VERSIONS`` trains the
penguins model with this project's training code, and the image is built as the build-image
component builds it (``build_local``: the plan rewrites the image's pins to the model's).
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.contract import CheckSettings, check_model_image
from components.imaging import build_local
from components.imaging.plan import SUPPORTED_VERSIONS
from components.runners import Engine
from serving_image.server import artifact
from tests.support import REPO_ROOT

pytestmark = pytest.mark.container

OLDEST = {name: low for name, (low, _) in SUPPORTED_VERSIONS.items()}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def oldest_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins model trained in a virtualenv with the oldest supported versions."""
    root = tmp_path_factory.mktemp("oldest")
    venv = root / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"{name}=={version}" for name, version in OLDEST.items()]
    subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *pins, "joblib", "palmerpenguins"],
        check=True,
        timeout=900,
    )  # fmt: skip
    TIMINGS["virtualenv with the oldest versions"] = time.monotonic() - started
    model = root / "model"
    subprocess.run(
        [venv / "bin/python", "-c",
         "import sys; from components.training import train_and_export; "
         "train_and_export('penguins', sys.argv[1])", str(model)],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=300,
    )  # fmt: skip
    for path in (root, model, *model.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def test_the_oldest_supported_versions_get_their_own_image_which_passes(
    engine: Engine, oldest_model: Path
) -> None:
    libraries = artifact.read_manifest(oldest_model)["libraries"]
    assert {name: libraries[name] for name in OLDEST} == OLDEST

    started = time.monotonic()
    built = build_local(oldest_model, "localhost/train-to-serve-oldest", engine=engine)
    TIMINGS["build the image with the oldest versions"] = time.monotonic() - started

    labels = engine.image_inspect(built.reference)["Config"]["Labels"]
    expected = " ".join(f"{name}=={version}" for name, version in OLDEST.items())
    assert labels["io.train-to-serve.libraries"] == expected
    script = (
        "import sklearn as s, numpy as n, pandas as p; "
        "print(s.__version__, n.__version__, p.__version__)"
    )
    inside = engine.command(
        "run", "--rm", "--entrypoint", "python", built.reference, "-c", script
    ).stdout.split()
    assert inside == [OLDEST["scikit-learn"], OLDEST["numpy"], OLDEST["pandas"]]
    report, metadata = check_model_image(
        built.reference,
        oldest_model,
        health_route="/health",
        predict_route="/predict",
        settings=CheckSettings(strict=True),
        engine=engine,
    )
    assert report.passed and metadata is not None, report.to_markdown()
    assert report.result("predict-values").passed

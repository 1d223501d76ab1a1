"""Fixtures of the imaging tests: no engine, and one baked image."""

from pathlib import Path

import pytest

from components.imaging.plan import BuiltImage
from components.runners import ENGINE_ENV, Engine
from components.training import train_and_export
from tests.imaging.builds import build_replacing


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make engine detection find nothing (as in a Vertex AI component pod)."""
    monkeypatch.setenv(ENGINE_ENV, "/nonexistent/container-engine")


@pytest.fixture(scope="session")
def readable_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("build-image") / "model"
    train_and_export("penguins", model)
    return model


@pytest.fixture(scope="session")
def baked(engine: Engine, readable_model: Path) -> BuiltImage:
    """The serving image with the penguins model baked in, built once per run."""
    return build_replacing(engine, readable_model, bake_model=True)

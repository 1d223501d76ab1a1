"""Fixtures of the imaging tests: Google Cloud replaced, no engine, and one baked image."""

from collections.abc import Callable
from pathlib import Path

import pytest
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from components.imaging.plan import BuiltImage
from components.runners import ENGINE_ENV, Engine
from components.training import train_and_export
from tests.imaging.builds import FakeCloud, build_replacing


@pytest.fixture
def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeCloud]:
    def install(statuses: list[cloudbuild_v1.Build], log_growth: list[str]) -> FakeCloud:
        fake = FakeCloud(statuses, log_growth)
        replaced = [
            (storage.Blob, "upload_from_filename"),
            (storage.Blob, "download_as_bytes"),
            (cloudbuild_v1.CloudBuildClient, "create_build"),
            (cloudbuild_v1.CloudBuildClient, "get_build"),
        ]
        for cls, name in replaced:  # each call reaches the fake with the instance it was on
            method = getattr(fake, name)
            monkeypatch.setattr(cls, name, lambda obj, *a, _m=method, **k: _m(obj, *a, **k))
        return fake

    return install


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

"""Choosing the builder: the local engine when one works, else Cloud Build."""

from collections.abc import Callable
from pathlib import Path

import pytest
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from components.imaging.build import build_model_image
from components.imaging.names import BuildImageInputError
from tests.imaging.builds import (
    DIGEST,
    LOCATION,
    PROJECT,
    REPOSITORY,
    STAGING,
    FakeCloud,
    anonymous,
    model_image_uri,
    pushed,
)


def test_auto_without_an_engine_or_cloud_settings_says_what_to_give(
    no_engine: None, penguins_model_dir: Path
) -> None:
    with pytest.raises(BuildImageInputError) as caught:
        build_model_image(penguins_model_dir, project=PROJECT)
    message = str(caught.value)
    assert "no local container engine" in message
    assert "/nonexistent/container-engine: not found" in message
    assert "['location', 'staging_bucket']" in message


def test_auto_without_an_engine_builds_with_cloud_build(
    no_engine: None,
    fake_cloud: Callable[..., FakeCloud],
    penguins_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_cloud([pushed(model_image_uri(penguins_model_dir, "srv"))], [""])
    monkeypatch.setattr(storage, "Client", anonymous(storage.Client))
    monkeypatch.setattr(
        cloudbuild_v1, "CloudBuildClient", anonymous(cloudbuild_v1.CloudBuildClient)
    )
    built = build_model_image(
        penguins_model_dir,
        "srv",
        project=PROJECT,
        location=LOCATION,
        repository=REPOSITORY,
        staging_bucket=STAGING,
    )
    assert built.reference.endswith("@" + DIGEST) and built.builder == "cloud-build"
    assert len(fake.created) == 1


def test_an_unknown_builder_is_refused(penguins_model_dir: Path) -> None:
    with pytest.raises(BuildImageInputError, match="unknown builder 'kaniko'"):
        build_model_image(penguins_model_dir, builder="kaniko")

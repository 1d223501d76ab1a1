"""Fixtures of the stand-in tests: the image and the model they serve."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def image(serving_image_without_model: str) -> str:
    """The serving image without a model: the registry's copy is mounted."""
    return serving_image_without_model


@pytest.fixture(scope="module")
def model_dir(penguins_model_dir: Path) -> Path:
    """The penguins model the stand-ins register, deploy and batch-predict."""
    return penguins_model_dir

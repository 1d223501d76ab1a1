"""The penguins model as the capacity tests mount it."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_dir(penguins_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins model, readable by the image's non-root user when mounted."""
    copy = tmp_path_factory.mktemp("capacity") / "model"
    shutil.copytree(penguins_model_dir, copy)
    for path in (copy.parent, copy, *copy.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy

"""What to build: library versions against the image's pins, labels, tags, the GPU variant."""

from pathlib import Path
from typing import Any

import pytest

from components.imaging.context import serving_image_dir
from components.imaging.names import BuildImageInputError
from components.imaging.plan import (
    PINNED_LIBRARIES,
    check_library_versions,
    default_tag,
    image_framework,
    image_labels,
    read_pinned_requirements,
    requirements_files,
)
from serving_image.server import artifact


# ---------------------------------------------------------- library versions --
def _manifest_with(**libraries: str) -> dict[str, Any]:
    return {"model_sha256": "0" * 64, "libraries": libraries}


def test_the_model_library_versions_must_equal_the_image_pins(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\nscikit-learn==1.9.1  # same as training\nnumpy==2.4.6\n")
    ok = _manifest_with(**{"scikit-learn": "1.9.1", "numpy": "2.4.6", "joblib": "1.0"})
    assert check_library_versions(ok, requirements) == {
        "scikit-learn": "1.9.1",
        "numpy": "2.4.6",
    }
    old = _manifest_with(**{"scikit-learn": "1.5.2", "numpy": "2.4.6", "pandas": "2.2.3"})
    with pytest.raises(BuildImageInputError) as caught:
        check_library_versions(old, requirements)
    message = str(caught.value)
    assert "scikit-learn 1.5.2 (image: 1.9.1)" in message
    assert "pandas 2.2.3 (image: unpinned)" in message
    assert "numpy" not in message.split(";")[0]


def test_the_project_trains_with_the_versions_the_serving_image_pins(
    penguins_model_dir: Path,
) -> None:
    manifest = artifact.read_manifest(penguins_model_dir)
    requirements = serving_image_dir() / "requirements.txt"
    versions = check_library_versions(manifest, requirements)
    assert set(versions) == set(PINNED_LIBRARIES)
    labels = image_labels(manifest, True, versions)
    assert labels["io.train-to-serve.model-sha256"] == manifest["model_sha256"]
    assert "io.train-to-serve.model-sha256" not in image_labels(manifest, False, versions)


def test_the_gpu_variant_is_tensorflow_with_cuda_and_scikit_learn_stays_on_cpu() -> None:
    assert image_framework("tensorflow", gpu=True) == "tensorflow-gpu"
    assert image_framework("tensorflow", gpu=False) == "tensorflow"
    assert image_framework("scikit-learn", gpu=True) == "scikit-learn"
    gpu_files = [p.name for p in requirements_files("tensorflow-gpu")]
    assert gpu_files == ["requirements.txt", "requirements-tensorflow-gpu.txt"]
    pins = read_pinned_requirements(requirements_files("tensorflow-gpu")[1])
    cpu_pins = read_pinned_requirements(requirements_files("tensorflow")[1])
    assert pins["tensorflow"] == cpu_pins["tensorflow"] and pins["keras"] == cpu_pins["keras"]
    manifest = {"model_sha256": "ab" * 32}
    assert default_tag(manifest, bake_model=True, gpu=True) == "model-abababababab-gpu"
    assert default_tag(manifest, bake_model=False) == "latest"

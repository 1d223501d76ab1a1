"""What to build: library versions against the image's pins, labels, tags, the GPU variant."""

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from components.imaging.context import assemble_build_context, serving_image_dir
from components.imaging.names import BuildImageInputError
from components.imaging.plan import (
    MODEL_LIBRARIES,
    PINNED_LIBRARIES,
    SUPPORTED_VERSIONS,
    check_library_versions,
    default_tag,
    image_framework,
    image_labels,
    prepare,
    read_pinned_requirements,
    requirement_pins,
    requirements_files,
)
from serving_image.server import artifact
from serving_image.server.predictor import MODEL_LIBRARY_MODULES
from tests.server.boosted import export_boosted


# ---------------------------------------------------------- library versions --
def _manifest_with(**libraries: str) -> dict[str, Any]:
    return {"model_sha256": "0" * 64, "libraries": libraries}


def test_a_scikit_learn_models_versions_must_be_within_the_supported_range(
    tmp_path: Path,
) -> None:
    requirements = serving_image_dir() / "requirements.txt"
    oldest = {name: low for name, (low, _) in SUPPORTED_VERSIONS.items()}
    within = _manifest_with(**oldest, joblib="1.0")
    assert check_library_versions(within, requirements) == oldest
    outside = _manifest_with(**{**oldest, "scikit-learn": "1.4.2", "pandas": "3.9.0"})
    with pytest.raises(BuildImageInputError) as caught:
        check_library_versions(outside, requirements)
    message = str(caught.value)
    low, high = SUPPORTED_VERSIONS["scikit-learn"]
    assert f"scikit-learn 1.4.2 (supported: {low} to {high})" in message
    assert "pandas 3.9.0 (supported: " in message and "numpy" not in message


def test_the_newest_supported_versions_are_the_images_pins() -> None:
    pins = read_pinned_requirements(serving_image_dir() / "requirements.txt")
    assert {name: high for name, (_, high) in SUPPORTED_VERSIONS.items()} == {
        name: pins[name] for name in SUPPORTED_VERSIONS
    }


def test_a_tensorflow_models_versions_must_equal_the_image_pins(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\ntensorflow-cpu==2.20.0\nkeras==3.11.0  # x\nnumpy==2.4.6\n")
    ok = _manifest_with(tensorflow="2.20.0", keras="3.11.0", numpy="2.4.6")
    ok["framework"] = "tensorflow"
    assert check_library_versions(ok, requirements)["tensorflow"] == "2.20.0"
    other = {**ok, "libraries": {**ok["libraries"], "keras": "3.10.0"}}
    with pytest.raises(BuildImageInputError, match=r"keras 3\.10\.0 \(image: 3\.11\.0\)"):
        check_library_versions(other, requirements)


def test_the_context_installs_the_models_versions_and_lets_pip_match_scipy(tmp_path: Path) -> None:
    oldest = {name: low for name, (low, _) in SUPPORTED_VERSIONS.items()}
    context = assemble_build_context(tmp_path / "ctx", pins=oldest)
    pins = read_pinned_requirements(context / "requirements.txt")
    assert {name: pins[name] for name in oldest} == oldest
    assert "scipy" not in pins and "\nscipy  #" in (context / "requirements.txt").read_text()
    same = assemble_build_context(tmp_path / "same", pins={"numpy": pins_of_image("numpy")})
    assert (same / "requirements.txt").read_text() == (
        serving_image_dir() / "requirements.txt"
    ).read_text()


def pins_of_image(name: str) -> str:
    return read_pinned_requirements(serving_image_dir() / "requirements.txt")[name]


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


# --------------------------------------------------------- model libraries --
def test_a_model_library_is_checked_added_to_the_requirements_and_labelled(
    tmp_path: Path,
) -> None:
    newest = {name: high for name, (_, high) in SUPPORTED_VERSIONS.items()}
    manifest = _manifest_with(**newest, joblib="1.6.0", xgboost="3.1.0", lightgbm="4.0.0")
    requirements = serving_image_dir() / "requirements.txt"
    versions = check_library_versions(manifest, requirements)
    assert versions == {**newest, "xgboost": "3.1.0", "lightgbm": "4.0.0"}
    pins = requirement_pins(versions)
    assert pins["xgboost-cpu"] == "3.1.0" and pins["lightgbm"] == "4.0.0"
    assert "xgboost" not in pins

    context = assemble_build_context(tmp_path / "ctx", pins=pins)
    text = (context / "requirements.txt").read_text()
    original = requirements.read_text()
    assert text.startswith(original)  # the image's own pins kept, scipy too
    assert text.endswith("\nlightgbm==4.0.0\nxgboost-cpu==3.1.0\n")
    assert read_pinned_requirements(context / "requirements.txt") == {
        **read_pinned_requirements(requirements),
        "xgboost": "3.1.0",  # xgboost-cpu installs the module xgboost, same version numbers
        "lightgbm": "4.0.0",
    }
    label = image_labels(manifest, True, versions)["io.train-to-serve.libraries"]
    assert label.endswith(" xgboost==3.1.0 lightgbm==4.0.0")


def test_a_model_library_outside_its_range_is_refused_with_the_range() -> None:
    newest = {name: high for name, (_, high) in SUPPORTED_VERSIONS.items()}
    requirements = serving_image_dir() / "requirements.txt"
    manifest = _manifest_with(**newest, lightgbm="3.3.5", xgboost="9.0.0")
    with pytest.raises(BuildImageInputError) as caught:
        check_library_versions(manifest, requirements)
    message = str(caught.value)
    lightgbm, xgboost = MODEL_LIBRARIES["lightgbm"], MODEL_LIBRARIES["xgboost"]
    assert f"lightgbm 3.3.5 (supported: {lightgbm.oldest} to {lightgbm.newest})" in message
    assert f"xgboost 9.0.0 (supported: {xgboost.oldest} to {xgboost.newest})" in message
    assert "scikit-learn" not in message


def test_the_newest_model_libraries_are_the_projects_and_the_server_imports_them() -> None:
    for name, library in MODEL_LIBRARIES.items():
        assert metadata.version(library.requirement) == library.newest, name
    assert set(MODEL_LIBRARIES) == set(MODEL_LIBRARY_MODULES)


def test_an_exported_lightgbm_model_gets_lightgbm_in_its_image(tmp_path: Path) -> None:
    model = export_boosted("lightgbm", tmp_path / "model")
    plan = prepare(model, bake_model=True, gpu=False)
    version = metadata.version("lightgbm")
    assert plan.framework == "scikit-learn" and plan.pins["lightgbm"] == version
    assert f"lightgbm=={version}" in plan.labels["io.train-to-serve.libraries"].split()

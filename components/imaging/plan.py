"""What to build for a model: the image's framework, its pinned library versions, labels, tag.

A model is never built into an image that would load it with other library versions. A
scikit-learn model's image installs exactly the versions its manifest records
(``BuildPlan.pins``), if they are within ``SUPPORTED_VERSIONS``, the range this project
builds and contract-checks (its oldest and newest, in CI); a model trained elsewhere in that
range gets its matching image, and a new upstream release breaks nothing. A version outside
the range is refused before any build, the range named. A scikit-learn model whose estimator
comes from an optional model library (``MODEL_LIBRARIES``: XGBoost, LightGBM; the manifest
records it only when the model uses it) gets that library added to the image, at the
manifest's version, within its range too. A TensorFlow model's versions must equal the
image's pins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.imaging.context import serving_image_dir
from components.imaging.names import BuildImageInputError
from serving_image.server import artifact

logger = logging.getLogger(__name__)

PINNED_LIBRARIES = ("scikit-learn", "numpy", "pandas")
"""Libraries whose version must be the same in training and serving (the model is a pickle)."""
FRAMEWORK_PINS = {
    "scikit-learn": PINNED_LIBRARIES,
    "tensorflow": ("tensorflow", "keras", "numpy"),
    "tensorflow-gpu": ("tensorflow", "keras", "numpy"),
}
"""Per model framework, the libraries whose training version the image must pin."""
SUPPORTED_VERSIONS = {
    "scikit-learn": ("1.5.2", "1.9.1"),
    "numpy": ("1.26.4", "2.4.6"),
    "pandas": ("2.2.3", "3.1.1"),
}
"""(oldest, newest) version of each scikit-learn model library the serving image installs as
the model records it; the newest are ``serving_image/requirements.txt``'s pins, and CI builds
and checks an image for a model trained with the oldest."""


@dataclass(frozen=True)
class ModelLibrary:
    """An optional library a scikit-learn model's estimator may come from: not in
    ``requirements.txt``; the image installs it only for a model whose manifest records it."""

    requirement: str
    """The distribution the image installs (its version numbers are the library's)."""
    oldest: str
    """The oldest version with Python 3.11 manylinux wheels that works with numpy 2."""
    newest: str
    """The project's own (``components/constraints.txt``, the ``boosting`` extra)."""


MODEL_LIBRARIES = {
    # xgboost-cpu: XGBoost built without CUDA and NCCL; published from 2.1.1 on.
    "xgboost": ModelLibrary("xgboost-cpu", "2.1.1", "3.2.0"),
    # Its wheel needs the system's libgomp.so.1 (the Dockerfile installs libgomp1 if missing).
    "lightgbm": ModelLibrary("lightgbm", "4.0.0", "4.7.0"),
}
"""Optional model libraries by the manifest's name (and module name)."""
DISTRIBUTION_ALIASES = {
    "tensorflow-cpu": "tensorflow",
    **{lib.requirement: name for name, lib in MODEL_LIBRARIES.items() if lib.requirement != name},
}
"""Requirement names that install another distribution's module (same version numbers)."""
DEFAULT_IMAGE_NAME = "train-to-serve-model"
LABEL_PREFIX = "io.train-to-serve"


@dataclass(frozen=True)
class BuildPlan:
    """What ``prepare`` decided for one model."""

    manifest: dict[str, Any]
    labels: dict[str, str]
    framework: str
    """The ``FRAMEWORK`` build argument."""
    pins: dict[str, str] = field(default_factory=dict)
    """Library versions the image installs in place of its requirement files' pins, or in
    addition to them (a model library), by requirement name (the model's own, for a
    scikit-learn model)."""


@dataclass(frozen=True)
class BuiltImage:
    """An image a builder made."""

    reference: str
    """What to pull or run: ``name@sha256:...`` where the engine gives a digest, else
    ``name:tag``."""
    digest: str
    """``sha256:...`` manifest digest, or ``""`` (docker gives none before a push)."""
    builder: str
    """``podman``, ``docker``, ``cloud-build`` or ``process``."""
    seconds: float
    image_id: str = ""
    """Local engines: the content-addressed image id (``sha256:...``)."""
    tagged: str = ""
    """The ``name:tag`` it was built as."""


def read_pinned_requirements(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by lower-case name without extras
    (``tensorflow[and-cuda]`` is ``tensorflow``; ``tensorflow-cpu`` too, by alias)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        if sep:
            name = name.split("[", 1)[0].strip().lower()
            pins[DISTRIBUTION_ALIASES.get(name, name)] = version.strip()
    return pins


def requirements_files(framework: str) -> list[Path]:
    """The serving image's requirement files that ``FRAMEWORK=framework`` installs.

    Raises:
        BuildImageInputError: a framework the serving image does not serve.
    """
    if framework not in FRAMEWORK_PINS:
        raise BuildImageInputError(
            f"the model's framework {framework!r} has no serving image; the image serves "
            f"{sorted(FRAMEWORK_PINS)}: retrain with one of them"
        )
    source = serving_image_dir()
    extra = [] if framework == "scikit-learn" else [source / f"requirements-{framework}.txt"]
    return [source / "requirements.txt", *extra]


def check_library_versions(
    manifest: Mapping[str, Any], requirements: Path | Sequence[Path]
) -> dict[str, str]:
    """The model's versions of its framework's libraries (``FRAMEWORK_PINS``, and for a
    scikit-learn model the ``MODEL_LIBRARIES`` its manifest records), checked: a scikit-learn
    model's within ``SUPPORTED_VERSIONS`` or the model library's range (the image installs
    them), another framework's equal to the pins of the image's requirement files.

    A manifest without ``libraries`` (hand-made models) is logged and passes: the server's
    load-time self-check still guards it.

    Raises:
        BuildImageInputError: a version outside the range, or unequal to the pin; building
            would give an image that refuses (or, worse, mis-reads) the model.
    """
    libraries = manifest.get("libraries") or {}
    if not libraries:
        logger.warning(
            "the model manifest records no library versions; cannot check them against %s",
            requirements,
        )
        return {}
    framework = str(manifest.get("framework", "scikit-learn"))
    pinned = FRAMEWORK_PINS.get(framework, PINNED_LIBRARIES)
    versions = {name: str(libraries[name]) for name in pinned if name in libraries}
    if framework == "scikit-learn":
        versions |= {name: str(libraries[name]) for name in MODEL_LIBRARIES if name in libraries}
        check_supported(versions)
        return versions
    files = [requirements] if isinstance(requirements, Path) else list(requirements)
    pins = {name: v for path in files for name, v in read_pinned_requirements(path).items()}
    mismatched = {
        name: (version, pins.get(name, "unpinned"))
        for name, version in versions.items()
        if pins.get(name) != version
    }
    if mismatched:
        listing = ", ".join(
            f"{name} {model} (image: {image})" for name, (model, image) in mismatched.items()
        )
        raise BuildImageInputError(
            f"the model was trained with {listing}; the serving image "
            f"({', '.join(map(str, files))}) would load it with other versions. Retrain with "
            "the pinned versions, or change the pins to the model's and rebuild"
        )
    return versions


def check_supported(versions: Mapping[str, str]) -> None:
    """``BuildImageInputError`` naming the range for each version outside
    ``SUPPORTED_VERSIONS`` (or its ``MODEL_LIBRARIES`` entry's)."""
    from packaging.version import InvalidVersion, Version

    outside = []
    for name, version in versions.items():
        library = MODEL_LIBRARIES.get(name)
        oldest, newest = (library.oldest, library.newest) if library else SUPPORTED_VERSIONS[name]
        try:
            fits = Version(oldest) <= Version(version) <= Version(newest)
        except InvalidVersion:
            fits = False
        if not fits:
            outside.append(f"{name} {version} (supported: {oldest} to {newest})")
    if outside:
        raise BuildImageInputError(
            f"the model was trained with {', '.join(outside)}: the serving image is built and "
            "checked for those ranges only; retrain with versions inside them"
        )


def image_labels(
    manifest: Mapping[str, Any], bake_model: bool, versions: Mapping[str, str]
) -> dict[str, str]:
    """Image labels saying what the image serves (``podman image inspect`` shows them)."""
    labels = {f"{LABEL_PREFIX}.model-source": "baked" if bake_model else "AIP_STORAGE_URI"}
    if bake_model:
        labels[f"{LABEL_PREFIX}.model-sha256"] = str(manifest["model_sha256"])
    if versions:
        pins = " ".join(f"{name}=={version}" for name, version in versions.items())
        labels[f"{LABEL_PREFIX}.libraries"] = pins
    return labels


def default_tag(manifest: Mapping[str, Any], bake_model: bool, gpu: bool = False) -> str:
    """``model-<first 12 of the model's sha256>`` for a baked image, else ``latest``;
    ``-gpu`` appended for the GPU variant."""
    tag = f"model-{str(manifest['model_sha256'])[:12]}" if bake_model else "latest"
    return f"{tag}-gpu" if gpu else tag


def image_framework(framework: str, gpu: bool) -> str:
    """The ``FRAMEWORK`` build argument for a model of ``framework``.

    ``gpu`` asks for the image that uses a GPU when one is attached (a Vertex GPU batch
    job): ``tensorflow-gpu`` (TensorFlow with CUDA) for TensorFlow models. scikit-learn
    never uses a GPU, so its image is the same either way (logged).
    """
    if gpu and framework == "tensorflow":
        return "tensorflow-gpu"
    if gpu:
        logger.info("%s does not use GPUs: the GPU variant is the CPU image", framework)
    return framework


def requirement_pins(versions: Mapping[str, str]) -> dict[str, str]:
    """``versions`` by the requirement that installs each (``MODEL_LIBRARIES``' distribution
    for a model library, e.g. ``xgboost-cpu`` for ``xgboost``)."""
    return {
        (MODEL_LIBRARIES[name].requirement if name in MODEL_LIBRARIES else name): version
        for name, version in versions.items()
    }


def prepare(model_dir: str | Path, bake_model: bool, gpu: bool) -> BuildPlan:
    """Read the model's manifest and check its library versions against the image's pins."""
    manifest = artifact.read_manifest(model_dir)
    framework = image_framework(str(manifest["framework"]), gpu)
    versions = check_library_versions(manifest, requirements_files(framework))
    pins = requirement_pins(versions) if framework == "scikit-learn" else {}
    return BuildPlan(manifest, image_labels(manifest, bake_model, versions), framework, pins)

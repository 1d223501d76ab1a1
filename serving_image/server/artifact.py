"""The model artifact: the files of a model directory, shared by the trainer and the server.

A model directory holds:

* the model, named by the manifest's ``model_file``: ``model.joblib`` (the whole fitted
  scikit-learn ``Pipeline``, preprocessor + estimator) or ``saved_model/`` (a TensorFlow
  SavedModel directory whose graph holds the Keras preprocessing layers);
* ``model.onnx`` beside ``model.joblib`` where the pipeline compiled and the graph was verified
  (the manifest's ``compiled`` entry says so, with the graph's sha256, or why not; see
  ``compiled``);
* ``model_manifest.json``: what the server needs to know to serve it without guessing
  (framework and versions, task, feature schema, target classes, the model file's sha256);
* ``instances_sample.jsonl``: evaluation rows and edge instances (each feature missing, an
  unseen category, numbers at the training range's ends) in Vertex's request shape, one
  instance (an object keyed by feature name) per line: the whole file is one valid request;
* ``expected_predictions.jsonl``: what the fitted model answers for those instances, one
  prediction per line, in exactly the shape the server returns with default parameters.

The manifest's ``sample_kinds`` names each instance's kind; ``read_sample`` adds the edge
instances' other form (lists of values in the manifest's feature order) for the checks.

This module is deliberately free of kfp and scikit-learn imports so that the serving image
can use it as is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
TENSORFLOW_MODEL_DIR = "saved_model"
MANIFEST_FILE = "model_manifest.json"
INSTANCES_FILE = "instances_sample.jsonl"
EXPECTED_FILE = "expected_predictions.jsonl"

TASKS = ("classification", "regression")
FEATURE_KINDS = ("numeric", "categorical")
REQUIRED_KEYS = ("manifest_version", "framework", "task", "model_file", "model_sha256", "features")


class ManifestError(ValueError):
    """The model directory's manifest is missing, unreadable or not one this server understands."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks so large models do not double memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | Path) -> str:
    """The sha256 of a model file, or of a model directory (a SavedModel): for a directory,
    the digest of its sorted ``relative/path NUL file-sha256`` lines, so that a renamed,
    added, removed or changed file all change it."""
    root = Path(path)
    if not root.is_dir():
        return sha256_file(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def validate_manifest(manifest: Any, source: str = MANIFEST_FILE) -> dict[str, Any]:
    """Check a parsed manifest's structure; raise ``ManifestError`` naming the fault."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(manifest).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{source}: missing keys {missing}; re-export the model with train")
    version = manifest["manifest_version"]
    if version != MANIFEST_VERSION:
        raise ManifestError(
            f"{source}: manifest_version {version!r} is not supported (this server reads "
            f"version {MANIFEST_VERSION}); rebuild the serving image from the same release "
            "as the trainer"
        )
    if manifest["task"] not in TASKS:
        raise ManifestError(f"{source}: task {manifest['task']!r} is not one of {TASKS}")
    features = manifest["features"]
    if not isinstance(features, list) or not features:
        raise ManifestError(f"{source}: 'features' must be a non-empty list")
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or "name" not in feature or "kind" not in feature:
            raise ManifestError(f"{source}: features[{index}] needs 'name' and 'kind'")
        if feature["kind"] not in FEATURE_KINDS:
            raise ManifestError(
                f"{source}: features[{index}] ({feature['name']!r}) has kind "
                f"{feature['kind']!r}; expected one of {FEATURE_KINDS}"
            )
    if manifest["task"] == "classification" and not manifest.get("target_classes"):
        raise ManifestError(f"{source}: a classification manifest needs 'target_classes'")
    return manifest


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``model_manifest.json`` from a local model directory."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path} not found: the model directory must be the output of the train component"
        ) from None
    except OSError as exc:  # unreadable for this user, a directory, ...
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc})") from None
    return validate_manifest(parsed, str(path))


def read_jsonl(path: str | Path) -> list[Any]:
    """Read a JSON Lines file (blank lines skipped) into a list of values."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


EVALUATION_KIND = "evaluation"
AS_LIST = " as list"
"""Appended to the kind of an instance sent as a list of values."""


def read_sample(model_dir: str | Path) -> tuple[list[Any], list[Any], list[str]]:
    """The sample instances, their expected predictions and kinds, as the checks send them:
    the exported objects, then each edge instance again as a list of values in the
    manifest's feature order (same expectation). Without a manifest that names the kinds
    (or with a sample edited since), the exported instances alone, all ``evaluation``.

    Raises:
        OSError: a sample file is missing; ``ValueError``: one is not JSON Lines.
    """
    directory = Path(model_dir)
    instances = read_jsonl(directory / INSTANCES_FILE)
    expected = read_jsonl(directory / EXPECTED_FILE)
    try:
        manifest = read_manifest(directory)
    except ManifestError:
        return instances, expected, [EVALUATION_KIND] * len(instances)
    kinds = manifest.get("sample_kinds")
    if not (isinstance(kinds, list) and len(kinds) == len(instances) == len(expected)):
        return instances, expected, [EVALUATION_KIND] * len(instances)
    names = [feature["name"] for feature in manifest["features"]]
    edges = [i for i, kind in enumerate(kinds) if kind != EVALUATION_KIND]
    return (
        instances + [[instances[i].get(name) for name in names] for i in edges],
        expected + [expected[i] for i in edges],
        kinds + [kinds[i] + AS_LIST for i in edges],
    )


def write_jsonl(path: str | Path, values: list[Any]) -> None:
    """Write values as JSON Lines; floats keep their exact ``repr`` so they round-trip."""
    with open(path, "w", encoding="utf-8") as handle:
        for value in values:
            handle.write(json.dumps(value, allow_nan=False) + "\n")

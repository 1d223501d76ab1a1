"""The container image our Python components run in on Vertex AI Pipelines.

A lightweight component's source is its function alone, so on Vertex the project's code must
already be in the image: the components image is built from this repository and holds the
``components``, ``pipelines`` and ``serving_image`` packages. Under ``kfp.local`` the
components run in the current interpreter and no image is used.

``compile.py compile --components-image URI`` (or ``--project``) names the image in the
compiled YAML; ``TRAIN_TO_SERVE_COMPONENTS_IMAGE`` sets the default for code that compiles the
components itself. Build and push the image from the repository root with
``components/Dockerfile``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

DEFAULT_COMPONENTS_IMAGE = "train-to-serve-components:latest"
COMPONENTS_IMAGE = os.environ.get("TRAIN_TO_SERVE_COMPONENTS_IMAGE", DEFAULT_COMPONENTS_IMAGE)


def with_image(component: Any, image: str) -> Any:
    """A copy of one of our Python components that runs in ``image`` (the original is kept)."""
    clone = copy.deepcopy(component)
    clone.component_spec.implementation.container.image = image
    return clone


def repository_of(reference: str) -> str:
    """``registry/path/name`` of an image reference, without its tag or digest."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    return name


def pinned(reference: str, repo_digests: Sequence[str]) -> str | None:
    """``reference`` pinned by digest (``repository@sha256:...``): as given when it already
    is, else from the image's ``RepoDigests`` in the same repository (what an engine records
    after a push or pull); ``None`` when none is known."""
    if "@sha256:" in reference:
        return reference
    repository = repository_of(reference)
    for candidate in repo_digests:
        if repository_of(candidate) == repository and "@sha256:" in candidate:
            return candidate
    return None

"""The container image our Python components run in on Vertex AI Pipelines.

A lightweight component's source is its function alone, so on Vertex the project's code must
already be in the image: the components image is built from this repository and holds the
``components``, ``pipelines`` and ``serving_image`` packages. Under ``kfp.local`` the
components run in the current interpreter and no image is used.

Override the default with ``TRAIN_TO_SERVE_COMPONENTS_IMAGE`` before importing the
components (``compile.py compile --components-image`` or ``--project`` sets it). Build and push
the image from the repository root with ``components/Dockerfile``.
"""

from __future__ import annotations

import os

DEFAULT_COMPONENTS_IMAGE = "train-to-serve-components:latest"
COMPONENTS_IMAGE = os.environ.get("TRAIN_TO_SERVE_COMPONENTS_IMAGE", DEFAULT_COMPONENTS_IMAGE)


def components_image_for(project: str, region: str, version: str | None = None) -> str:
    """Our naming scheme in Artifact Registry: the repository ``train-to-serve`` in ``region``."""
    from importlib.metadata import version as installed_version

    tag = version or installed_version("train-to-serve")
    return f"{region}-docker.pkg.dev/{project}/train-to-serve/components:{tag}"

"""The container image our Python components run in on Vertex AI Pipelines.

A lightweight component's source is its function alone, so on Vertex the project's code must
already be in the image: the components image is built from this repository and holds the
``components``, ``pipelines`` and ``serving_image`` packages. Under ``kfp.local`` the
components run in the current interpreter and no image is used.

Override the default with ``TRAIN_TO_SERVE_COMPONENTS_IMAGE`` before importing the
components (``compile.py compile --components-image`` sets it).
"""

from __future__ import annotations

import os

DEFAULT_COMPONENTS_IMAGE = "train-to-serve-components:latest"
COMPONENTS_IMAGE = os.environ.get("TRAIN_TO_SERVE_COMPONENTS_IMAGE", DEFAULT_COMPONENTS_IMAGE)

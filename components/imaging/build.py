"""Choosing the builder for a model's serving image: this machine's engine, or Cloud Build."""

from __future__ import annotations

import logging
from pathlib import Path

from components.imaging.cloud_build import build_with_cloud_build
from components.imaging.local import REGISTRY_BASE_IMAGE, build_local
from components.imaging.names import BuildImageInputError
from components.imaging.plan import DEFAULT_IMAGE_NAME, BuiltImage
from components.runners import RunnerNotFoundError, detect_runner

logger = logging.getLogger(__name__)

BUILDERS = ("auto", "local", "cloud-build")


def build_model_image(
    model_dir: str | Path,
    image_name: str = DEFAULT_IMAGE_NAME,
    *,
    builder: str = "auto",
    bake_model: bool = True,
    gpu: bool = False,
    project: str = "",
    location: str = "",
    repository: str = "",
    staging_bucket: str = "",
    service_account: str = "",
    base_image: str = "",
) -> BuiltImage:
    """Build with ``builder``: ``"local"`` (``build_local``), ``"cloud-build"``
    (``build_with_cloud_build``) or ``"auto"``: the local engine when one works, else Cloud
    Build when ``project``, ``location`` and ``staging_bucket`` are given. An empty
    ``base_image`` means the builder's default.

    Raises:
        BuildImageInputError: unknown builder, or ``auto`` with neither an engine nor the Cloud
            Build settings (the message gives both ways out).
    """
    if builder not in BUILDERS:
        raise BuildImageInputError(f"unknown builder {builder!r}; choose one of {BUILDERS}")
    cloud_settings = {"project": project, "location": location, "staging_bucket": staging_bucket}
    engine = None
    if builder == "auto":
        try:
            engine = detect_runner()
        except RunnerNotFoundError as exc:
            missing = [key for key, value in cloud_settings.items() if not value]
            if missing:
                raise BuildImageInputError(
                    f"cannot build the serving image: no local container engine ({exc})\n"
                    f"and Cloud Build needs {missing} (and a repository, or a full Artifact "
                    "Registry image name). Give those, or set up an engine."
                ) from None
            logger.info("no local container engine; building with Cloud Build")
        builder = "local" if engine else "cloud-build"
    if builder == "local":
        return build_local(
            model_dir,
            image_name,
            bake_model=bake_model,
            gpu=gpu,
            engine=engine,
            base_image=base_image,
        )
    return build_with_cloud_build(
        model_dir,
        image_name,
        repository=repository,
        bake_model=bake_model,
        gpu=gpu,
        service_account=service_account,
        base_image=base_image or REGISTRY_BASE_IMAGE,
        **cloud_settings,
    )

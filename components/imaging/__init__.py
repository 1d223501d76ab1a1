"""The serving image of a model: its name, what to build, its context, and the two builders.

``names`` checks image names and the staging bucket, ``plan`` decides what to build (framework,
pinned library versions, labels, tag), ``context`` lays out and packs the build context,
``local`` builds with podman or docker, ``cloud_build`` with Cloud Build, and ``build`` picks
the builder.
"""

from components.imaging.build import BUILDERS, build_model_image
from components.imaging.cloud_build import CloudBuildError, build_with_cloud_build
from components.imaging.context import assemble_build_context, pack_context, serving_image_dir
from components.imaging.local import (
    BASE_IMAGE_ENV,
    LOCAL_BASE_IMAGE,
    REGISTRY_BASE_IMAGE,
    BuildError,
    BuildResult,
    build,
    build_local,
    build_serving_image,
    choose_base_image,
    find_ca_bundle,
)
from components.imaging.names import BuildImageInputError
from components.imaging.plan import DEFAULT_IMAGE_NAME, BuiltImage

__all__ = [
    "BASE_IMAGE_ENV",
    "BUILDERS",
    "DEFAULT_IMAGE_NAME",
    "LOCAL_BASE_IMAGE",
    "REGISTRY_BASE_IMAGE",
    "BuildError",
    "BuildImageInputError",
    "BuildResult",
    "BuiltImage",
    "CloudBuildError",
    "assemble_build_context",
    "build",
    "build_local",
    "build_model_image",
    "build_serving_image",
    "build_with_cloud_build",
    "choose_base_image",
    "find_ca_bundle",
    "pack_context",
    "serving_image_dir",
]

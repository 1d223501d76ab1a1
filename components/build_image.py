"""The ``build_image`` component: build the serving container image for a trained model.

The work is ``components.imaging.build_model_image``: locally with podman or docker, or on Cloud
Build where a pipeline task has no Docker daemon. This module declares the KFP component
around it.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def build_image(
    model: Input[Model],
    image_name: str = "train-to-serve-model",  # literal: KFP captures only the function
    builder: str = "auto",
    bake_model: bool = True,
    gpu: bool = False,
    project: str = "",
    location: str = "",
    repository: str = "",
    staging_bucket: str = "",
    service_account: str = "",
    base_image: str = "",
) -> NamedTuple("Outputs", [("image_uri", str), ("digest", str)]):
    """Build the serving container image for a trained model.

    Builds ``serving_image/`` (the model server, Vertex AI's custom-container contract) for
    the model, either with the model baked in at ``/model`` (default: the image digest then
    pins code, library versions and model together, and the server needs no Cloud Storage
    access to start) or without it, to load it from ``AIP_STORAGE_URI`` (upload the Model
    with ``artifactUri`` = the model's URI). The model's library versions (scikit-learn, numpy
    and pandas; TensorFlow models: tensorflow, keras and numpy) must equal the image's pins;
    the build stops before it starts otherwise.

    Locally (kfp.local, workstations, CI) the image is built with podman or docker, the
    engine's step lines streamed to the log. On Vertex AI Pipelines there is no Docker daemon:
    the build runs on Cloud Build in ``location`` and the image is pushed to Artifact Registry
    there, the build log streamed to the task's log. A failed build shows the failing step's
    output.

    Args:
        model: the train component's model directory.
        image_name: ``name[:tag]`` (default tag: ``model-<sha256 prefix>`` when baked, else
            ``latest``), or a full ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/NAME[:TAG]``.
        builder: ``"auto"`` (the local engine when one works, else Cloud Build when
            ``project``, ``location`` and ``staging_bucket`` are given), ``"local"`` or
            ``"cloud-build"``.
        bake_model: bake the model into the image (default) or load it from
            ``AIP_STORAGE_URI``.
        gpu: build the variant that uses an attached GPU (for a GPU batch prediction job):
            TensorFlow with CUDA for a TensorFlow model (tag suffix ``-gpu``); a
            scikit-learn model's image is the same either way.
        project: Google Cloud project for Cloud Build and Artifact Registry.
        location: the pipeline's region; the Artifact Registry repository must be there.
        repository: Artifact Registry Docker repository (when ``image_name`` is bare).
        staging_bucket: ``gs://bucket[/prefix]`` for the build context and the build log.
        service_account: identity Cloud Build runs as (empty: Cloud Build's default).
        base_image: the image the serving image builds ``FROM`` (a Debian-based Python 3.11; empty:
            ``python:3.11-slim``, or locally the stand-in ``setup-container-engine.sh`` made
            where Docker Hub cannot be reached). E.g. an Artifact Registry remote repository
            in front of Docker Hub, to avoid its pull limits on Cloud Build.

    Returns:
        image_uri: the image to serve, pinned by digest where the builder gives one
            (``...@sha256:...``; a docker-built local image keeps its tag).
        digest: ``sha256:...``, or ``""`` when the engine gave none.
    """
    from components.imaging import build_model_image

    built = build_model_image(
        model.path,
        image_name,
        builder=builder,
        bake_model=bake_model,
        gpu=gpu,
        project=project,
        location=location,
        repository=repository,
        staging_bucket=staging_bucket,
        service_account=service_account,
        base_image=base_image,
    )
    return (built.reference, built.digest)

"""The ``build_and_check`` component: on Vertex AI Pipelines, build the serving image, check it
against Vertex AI's container contract and push it, in one Cloud Build.

The work is ``components.checked_build.build_and_check``; this module declares the KFP
component around it. Only on a pass is the image pushed and the ``UnmanagedContainerModel``
written that upload reads.
"""

from typing import NamedTuple

from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def build_and_check(
    model: Input[Model],
    project: str,
    location: str,
    staging_bucket: str,
    checker_image: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
    unmanaged_container_model: Output[UnmanagedContainerModel],
    image_name: str = "train-to-serve-model",
    repository: str = "",
    bake_model: bool = True,
    gpu: bool = False,
    base_image: str = "",
    port: int = 8080,
    health_route: str = "/health",
    predict_route: str = "/predict",
    env: dict = {},  # noqa: B006 (KFP needs a literal default)
    startup_deadline_s: float = 120.0,
    grace_period_s: float = 30.0,
    strict: bool = False,
    large_model_bytes: int = 268435456,
    service_account: str = "",
    machine_type: str = "",
    grpc_port: int = 0,
) -> NamedTuple("Outputs", [("image_uri", str), ("digest", str)]):
    """Build the serving image on Cloud Build, contract-check it there, push it on a pass.

    A Vertex AI Pipelines task has no container engine, but a Cloud Build has Docker. One
    build in ``location`` builds ``serving_image/`` for the model, starts it on the build's
    ``cloudbuild`` network the way Vertex starts it (own entrypoint, the ``AIP_*``
    variables, ``port``), runs the contract check against it by name from ``checker_image``
    (liveness, health, predictions against the model's sample in batches, alone and in
    another order, malformed requests, a concurrent burst, SIGTERM), and pushes the image to
    Artifact Registry only when the check passed: the digest pushed is the digest checked.

    With ``grpc_port`` the container also gets ``SERVING_GRPC_PORT`` (this project's image
    serves gRPC there; another image ignores it) and the check applies the gRPC rules on that
    port by the container's name.

    The report and metrics are read back from the build's log. On a pass the component writes
    ``unmanaged_container_model`` (the model URI and ``containerSpec``: the image by digest,
    ports, routes, env, a startupProbe for a large or slow model, and with ``grpc_port`` the
    ``grpcPorts`` and gRPC health and startup probes) for GCPC's
    ``ModelUploadOp``; on a violation it writes the report and metrics and fails with the
    message the local check gives, and nothing was pushed. A GPU image runs on the CPU there
    (Cloud Build has no GPU): its report says the GPU was not exercised.

    The build's service account needs Artifact Registry writer on the repository, object
    admin on the staging bucket (and read on the model's bucket for ``bake_model=False``)
    and logs writer; the pipeline's service account needs Cloud Build editor and service
    account user on it.

    Args:
        model: the train component's model directory.
        project: Google Cloud project of the build and the repository.
        location: the pipeline's region; the build runs there, the repository is there.
        staging_bucket: ``gs://bucket[/prefix]`` for the build context, log and report.
        checker_image: the image that runs the check: the components image, by digest.
        image_name: ``name[:tag]`` in ``repository``, or a full
            ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/NAME[:TAG]``.
        repository: Artifact Registry Docker repository (when ``image_name`` is bare).
        bake_model: bake the model into the image (default) or load it from
            ``AIP_STORAGE_URI`` (the model's URI; the build's account must read it).
        gpu: build the GPU variant (TensorFlow with CUDA for a TensorFlow model).
        base_image: the image the serving image builds ``FROM``; empty: python:3.11-slim.
        port: the container port (``containerSpec.ports[0]``; ``AIP_HTTP_PORT``).
        health_route: ``containerSpec.healthRoute`` (``AIP_HEALTH_ROUTE``).
        predict_route: ``containerSpec.predictRoute`` (``AIP_PREDICT_ROUTE``).
        env: extra environment variables for the container (no ``AIP_`` names).
        startup_deadline_s: how long health may take to answer 200.
        grace_period_s: how long the container may take to exit after SIGTERM.
        strict: fail on hygiene rules too (a 5xx on bad input, oversize, SIGTERM).
        large_model_bytes: model size from which the spec gets a ``startupProbe``.
        service_account: the identity the build runs as (empty: Cloud Build's default).
        machine_type: the build's ``BuildOptions.MachineType`` (empty: the default worker).
        grpc_port: ``containerSpec.grpcPorts[0]``: also check gRPC there, and declare it with
            gRPC probes and ``SERVING_GRPC_PORT`` in ``env`` (0: HTTP only).

    Returns:
        report: the human-readable report (Markdown).
        metrics: verdict, rule counts, startup time, latencies, stop time.
        unmanaged_container_model: the checked model for ``ModelUploadOp`` (on a pass only).
        image_uri: the pushed image, ``...@sha256:...``.
        digest: its ``sha256:...`` digest.
    """
    from components.checked_build import build_and_check as run
    from components.contract import CheckSettings, publish
    from components.imaging import REGISTRY_BASE_IMAGE

    outcome = run(
        model.path,
        image_name,
        project=project,
        location=location,
        staging_bucket=staging_bucket,
        checker_image=checker_image,
        repository=repository,
        bake_model=bake_model,
        gpu=gpu,
        storage_uri=model.uri,
        base_image=base_image or REGISTRY_BASE_IMAGE,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=dict(env),
        settings=CheckSettings(
            startup_deadline_s=startup_deadline_s, grace_period_s=grace_period_s, strict=strict
        ),
        large_model_bytes=large_model_bytes,
        service_account=service_account,
        machine_type=machine_type,
        grpc_port=grpc_port or None,
    )
    publish(
        outcome.report,
        outcome.metadata,
        report_file=report.path,
        metrics=metrics,
        container_model=unmanaged_container_model,
        model_uri=model.uri,
    )
    assert outcome.image is not None  # publish raised otherwise
    return (outcome.image.reference, outcome.image.digest)

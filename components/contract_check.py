"""The ``contract_check`` component: check a serving image against Vertex AI's container contract.

The work is ``components.contract.check_model_image``; this module declares the KFP component
around it. Only on a pass does it write the ``UnmanagedContainerModel`` that upload reads.
"""

from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def contract_check(
    image_uri: str,
    model: Input[Model],
    report: Output[Markdown],
    metrics: Output[Metrics],
    unmanaged_container_model: Output[UnmanagedContainerModel],
    port: int = 8080,
    health_route: str = "/health",
    predict_route: str = "/predict",
    env: dict = {},  # noqa: B006 (KFP needs a literal default)
    startup_deadline_s: float = 120.0,
    grace_period_s: float = 30.0,
    large_model_bytes: int = 268435456,
    strict: bool = False,
    process_mode: bool = False,
    grpc_port: int = 0,
    instance_format: str = "object",
    foreign_image: bool = False,
):
    """Check a serving image against Vertex AI's container contract; emit it for upload.

    Runs ``image_uri`` the way Vertex would (own entrypoint, ``AIP_*`` variables, the model
    mounted and named by ``AIP_STORAGE_URI``, ``port`` published) and checks liveness, health,
    predictions against the model's ``expected_predictions.jsonl`` (its sample sent in
    batches, each instance alone and in another order), malformed requests, a concurrent burst
    and SIGTERM, with Vertex's numbers (see ``components/contract/``). With ``grpc_port`` it
    also publishes that port and checks it with gRPC clients: ``grpc.health.v1``, ModelInfer
    on the same sample, bad input, reflection.

    Contract rules are what Vertex does not survive; hygiene rules (a 5xx on bad input, an
    oversize body mishandled, a slow SIGTERM) are what it tolerates, reported as warnings
    unless ``strict``. Only when the check passes does it write ``unmanaged_container_model``
    (uri: the model directory; metadata.containerSpec: imageUri, ports, routes, env, and a
    startupProbe for a large or slow model; with gRPC, grpcPorts and grpc probes) for GCPC's
    ``ModelUploadOp``: no container spec reaches upload without passing this check. On a
    violation the report and metrics are still written, and the task fails with a message
    naming the rule, the request, the answer and what Vertex would have done.

    Where it runs: under ``kfp.local`` (``SubprocessRunner(use_venv=False)``) it runs the
    image with the local podman or docker. A Vertex AI Pipelines task has no container engine:
    there use ``build_and_check``, which builds, checks and pushes the image in one Cloud Build.
    Without an engine this component fails, unless ``process_mode`` asks for the weaker check:
    the server code and the model, with Vertex's environment, as a local process (the image
    itself is not run; its log, report and metrics say so, ``process_mode: 1``).

    Args:
        image_uri: the image to check, as the engine knows it (and as upload will use it).
        model: the train component's model directory.
        port: the container port (``containerSpec.ports[0]``; ``AIP_HTTP_PORT``).
        health_route: ``containerSpec.healthRoute`` (``AIP_HEALTH_ROUTE``).
        predict_route: ``containerSpec.predictRoute`` (``AIP_PREDICT_ROUTE``).
        env: extra environment variables for the container (no ``AIP_`` names).
        startup_deadline_s: how long health may take to answer 200.
        grace_period_s: how long the container may take to exit after SIGTERM.
        large_model_bytes: model size from which the spec gets a ``startupProbe``.
        strict: fail on hygiene rules too, not only on contract rules (the train-to-serve
            pipeline checks its own serving image strictly).
        process_mode: check the server code as a local process instead of the image (never a
            silent fallback).
        grpc_port: ``containerSpec.grpcPorts[0]``: also check gRPC there, and declare it with
            gRPC probes (0: HTTP only). The container gets ``SERVING_GRPC_PORT`` set to it
            unless ``env`` sets it (this project's image serves gRPC there; another image
            ignores it), and so does the emitted spec's ``env``.
        instance_format: how the model's sample is sent: ``"object"`` (as exported, keyed by
            feature name; the edge instances also as lists, which the image may refuse) or
            ``"list"`` (every instance as a list of values in the manifest's feature order,
            what a Vertex pre-built scikit-learn container takes).
        foreign_image: the image is not one this project built (a Vertex pre-built container,
            a Custom Prediction Routine image, a team's own server; the model directory from
            ``export_model`` or train): ``predict-values`` compares a plain answer (labels
            only, or class probabilities) with the same part of ``expected_predictions.jsonl``
            and the report says which shape it compared, and an error on an edge instance (a
            feature missing, an unseen category, a number at the training range's end) is a
            warning (``edge-errors``), not a ``predict-values`` failure. The Vertex contract
            rules stay as they are; differing values still fail.

    Returns:
        report: the human-readable report (Markdown).
        metrics: verdict, rule counts, startup time, latencies, stop time.
        unmanaged_container_model: the checked model for ``ModelUploadOp`` (on a pass only).
    """
    from components.contract import (
        CheckSettings,
        check_model_image,
        choose_check_engine,
        publish,
    )

    engine = choose_check_engine(process_mode)
    checked, metadata = check_model_image(
        image_uri,
        model.path,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=dict(env),
        settings=CheckSettings(
            startup_deadline_s=startup_deadline_s,
            grace_period_s=grace_period_s,
            strict=strict,
            foreign_image=foreign_image,
        ),
        large_model_bytes=large_model_bytes,
        engine=engine,
        grpc_port=grpc_port or None,
        instance_format=instance_format,
    )
    publish(
        checked,
        metadata,
        report_file=report.path,
        metrics=metrics,
        container_model=unmanaged_container_model,
        model_uri=model.uri,
    )

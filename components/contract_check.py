"""The ``contract_check`` component: check a serving image against Vertex AI's container contract.

The work is ``components.contract.check_model_image``; this module declares the KFP component
around it. Only on a pass does it write the ``UnmanagedContainerModel`` that upload reads.
"""

from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE)
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
):
    """Check a serving image against Vertex AI's container contract; emit it for upload.

    Runs ``image_uri`` the way Vertex would (own entrypoint, ``AIP_*`` variables, the model
    mounted and named by ``AIP_STORAGE_URI``, ``port`` published) and checks liveness, health,
    predictions against the model's ``expected_predictions.jsonl`` (its sample sent in
    batches, each instance alone and in another order), malformed requests, a concurrent burst
    and SIGTERM, with Vertex's numbers (see ``components/contract/``).

    Contract rules are what Vertex does not survive; hygiene rules (a 5xx on bad input, an
    oversize body mishandled, a slow SIGTERM) are what it tolerates, reported as warnings
    unless ``strict``. Only when the check passes does it write ``unmanaged_container_model``
    (uri: the model directory; metadata.containerSpec: imageUri, ports, routes, env, and a
    startupProbe for a large or slow model) for GCPC's ``ModelUploadOp``: no container spec
    reaches upload without passing this check. On a violation the report and metrics are
    still written, and the task fails with a message naming the rule, the request, the answer
    and what Vertex would have done.

    Where it runs: under ``kfp.local`` (``SubprocessRunner(use_venv=False)``) it runs the
    image with the local podman or docker. Where neither works (a Vertex AI Pipelines task
    runs in a pod with no container daemon) it falls back to process mode and says so in its
    log, report and metrics (``process_mode: 1``): the same server code and the model, with
    Vertex's environment, as a local process; weaker, since the image itself is not run. The
    way to run the image on Google Cloud is a Cloud Build job whose steps run the image and
    this checker side by side (a step can start the image detached on Cloud Build's docker
    network, and the next step runs ``python compile.py check-contract`` against it); that
    path is not implemented yet. ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process`` asks for process
    mode explicitly.

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

    Returns:
        report: the human-readable report (Markdown).
        metrics: verdict, rule counts, startup time, latencies, stop time.
        unmanaged_container_model: the checked model for ``ModelUploadOp`` (on a pass only).
    """
    from pathlib import Path

    from components.contract import (
        CheckSettings,
        ContractViolation,
        check_model_image,
        choose_check_engine,
    )

    engine, fallback = choose_check_engine()
    if fallback:
        print(fallback)
    checked, metadata = check_model_image(
        image_uri,
        model.path,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=dict(env),
        settings=CheckSettings(
            startup_deadline_s=startup_deadline_s, grace_period_s=grace_period_s, strict=strict
        ),
        large_model_bytes=large_model_bytes,
        engine=engine,
    )
    if fallback:
        checked.settings["why process mode"] = fallback
    print(checked.verdict())
    Path(report.path).write_text(checked.to_markdown(), encoding="utf-8")
    for name, value in checked.metrics().items():
        metrics.log_metric(name, value)
    if metadata is None:
        raise ContractViolation(checked)
    unmanaged_container_model.uri = model.uri
    unmanaged_container_model.metadata.update(metadata)

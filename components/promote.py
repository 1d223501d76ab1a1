"""The ``promote`` component: a version that passed its smoke test takes its traffic.

The work is ``components.release.promote_version`` (``rollout.promote``); this module declares
the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def promote(
    endpoint: Input[Artifact],
    model: Input[Artifact],
    trained_model: Input[Model],
    metrics: Input[Metrics],
    container_model: Input[Artifact],
    contract_report: Input[Markdown],
    smoke_result: Input[Artifact],
    traffic_before: dict,
    gate_metric: str,
    gate_threshold: float,
    record: Output[Markdown],
    record_json: Output[Artifact],
    promote: str = "all",
    keep_previous: bool = False,
):
    """Promote the smoke-tested version and write the promotion record.

    With ``promote="all"``: every request goes to the new version, the ``default`` alias moves
    to it (only now: the upload did not move it), and the endpoint's other deployed models are
    undeployed unless ``keep_previous``. With ``"canary"`` it stays at its canary share for a
    later promotion (the alias and the other models stay). The training evaluation is
    imported into the registry (Vertex: ``ModelService.ImportModelEvaluation``), so the Model
    Registry shows the version's metrics.

    Args:
        endpoint: the endpoint it was deployed to.
        model: the uploaded version (``metadata.resourceName``: ``...models/ID@VERSION``).
        trained_model: the train step's model directory.
        metrics: the train step's evaluation metrics.
        container_model: the contract check's ``UnmanagedContainerModel`` (the image).
        contract_report: the contract check's report.
        smoke_result: the smoke test's JSON result.
        traffic_before: the endpoint's split before the deploy.
        gate_metric: the metric the evaluation gate judged.
        gate_threshold: the gate's bar, which the version met.
        promote: ``all`` or ``canary``.
        keep_previous: keep the previous deployed models (at 0%).

    Returns:
        record: the promotion record (Markdown).
        record_json: the same as JSON: metrics and gate, contract report, image, version,
            smoke test answers and latencies, traffic before and after.
    """
    from pathlib import Path

    from components.release import evidence, promote_version, targets
    from components.rollout.record import dumps, markdown

    live, registry = targets(endpoint.metadata, model.metadata)
    document = promote_version(
        live,
        registry,
        model.metadata["resourceName"],
        traffic_before={key: int(value) for key, value in traffic_before.items()},
        how=promote,
        keep_previous=keep_previous,
        model_dir=trained_model.path,
        evidence=evidence(
            metrics.metadata,
            gate_metric=gate_metric,
            gate_threshold=gate_threshold,
            container_spec=container_model.metadata["containerSpec"],
            contract_report_uri=contract_report.uri,
            smoke_file=smoke_result.path,
        ),
    )
    Path(record.path).write_text(markdown(document), encoding="utf-8")
    Path(record_json.path).write_text(dumps(document), encoding="utf-8")
    record_json.metadata.update(
        {"decision": document["decision"], "trafficAfter": document["rollout"]["trafficAfter"]}
    )
    print(markdown(document))

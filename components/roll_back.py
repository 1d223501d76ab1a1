"""The ``roll_back`` component: a version that failed its smoke test leaves the endpoint.

The work is ``components.release.roll_back_version`` (``rollout.roll_back``); this module
declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def roll_back(
    endpoint: Input[Artifact],
    model: Input[Artifact],
    metrics: Input[Metrics],
    container_model: Input[Artifact],
    contract_report: Input[Markdown],
    smoke_result: Input[Artifact],
    traffic_before: dict,
    gate_metric: str,
    gate_threshold: float,
    record: Output[Markdown],
):
    """Roll the version back and fail the run with the smoke test's findings.

    The endpoint's traffic split goes back to what it was before the deploy, the new deployed
    model is undeployed, and the ``default`` alias stays on the version that held it (the
    upload never moved it), so the endpoint keeps serving the previous version throughout.
    The record is written, then the task fails with what the smoke test found.

    Args:
        endpoint: the endpoint it was deployed to.
        model: the uploaded version (``metadata.resourceName``: ``...models/ID@VERSION``).
        metrics: the train step's evaluation metrics.
        container_model: the contract check's ``UnmanagedContainerModel`` (the image).
        contract_report: the contract check's report.
        smoke_result: the smoke test's JSON result.
        traffic_before: the endpoint's split before the deploy.
        gate_metric: the metric the evaluation gate judged.
        gate_threshold: the gate's bar, which the version met.

    Returns:
        record: the rollback record (Markdown), written before the task fails.
    """
    from pathlib import Path

    from components.release import RolloutFailed, evidence, roll_back_version, targets
    from components.rollout.record import markdown

    live, _ = targets(endpoint.metadata, model.metadata)
    found = evidence(
        metrics.metadata,
        gate_metric=gate_metric,
        gate_threshold=gate_threshold,
        container_spec=container_model.metadata["containerSpec"],
        contract_report_uri=contract_report.uri,
        smoke_file=smoke_result.path,
    )
    document = roll_back_version(
        live,
        model.metadata["resourceName"],
        traffic_before={key: int(value) for key, value in traffic_before.items()},
        evidence=found,
    )
    Path(record.path).write_text(markdown(document), encoding="utf-8")
    print(markdown(document))
    raise RolloutFailed(
        f"{model.metadata['resourceName']} failed its smoke test on "
        f"{endpoint.metadata['resourceName']} and was rolled back:\n"
        + "\n".join(found["smoke"].get("failures", []))
    )

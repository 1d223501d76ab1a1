"""The rollout steps against the endpoint and registry that a step's artifacts name.

``targets`` picks the implementation from the endpoint's resource name: a local endpoint
(``projects/local/...``: the router and registry of ``stand_ins``) or a Vertex one (the
aiplatform SDK, ``rollout.vertex``). The steps are the pipeline's, in order: the autoscaling
of the deployed version (Vertex only), its smoke test, then its promotion or its rollback,
each of the last two leaving a record.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components import vertex
from components.contract import Sample, SmokeReport, smoke_test
from components.rollout import (
    Endpoint,
    Registry,
    RolloutError,
    VertexEndpoint,
    VertexRegistry,
    find_deployed,
    promote,
    roll_back,
)
from components.rollout.record import model_evaluation, promotion_record
from components.stand_ins import LocalEndpointOps, LocalRegistryOps
from serving_image.server import artifact

logger = logging.getLogger(__name__)

LOCAL_PREFIX = "projects/local/"
"""Resource names of the local stand-ins start with this."""
TRIES_PER_SHARE = 5
"""On Vertex a request reaches a model at ``s``% about once in ``100 / s`` tries: send each
smoke request up to this many times that before giving up."""
MAX_TRIES = 500


class RolloutFailed(RuntimeError):
    """The new version failed its smoke test and was rolled back; the message holds why."""


def targets(
    endpoint_metadata: Mapping[str, Any], model_metadata: Mapping[str, Any]
) -> tuple[Endpoint, Registry]:
    """The endpoint and registry named by a deploy step's endpoint artifact and an upload
    step's model artifact (their ``metadata``)."""
    name = str(endpoint_metadata.get("resourceName", ""))
    if not name:
        raise ValueError(
            "the endpoint artifact has no metadata.resourceName: pass the deploy step's "
            "endpoint (local_model_deploy's output, or the endpoint GCPC's ModelDeployOp used)"
        )
    if name.startswith(LOCAL_PREFIX):
        return (
            LocalEndpointOps(name, endpoint_metadata["endpointsDir"]),
            LocalRegistryOps(model_metadata["registryDir"]),
        )
    parts = name.split("/")
    return VertexEndpoint(name), VertexRegistry(project=parts[1], location=parts[3])


def autoscale_version(
    endpoint: Endpoint,
    version_name: str,
    *,
    min_replicas: int,
    max_replicas: int,
    cpu_target: int,
) -> str:
    """Set the CPU autoscaling target of ``version_name``'s deployed model (the newest
    deployment of it, ``find_deployed``) on a Vertex endpoint, with its replica range
    (``VertexEndpoint.set_autoscaling``); what was done, or why nothing was, in one line.

    ``cpu_target`` 0 sends nothing: Vertex's default target applies. A local endpoint is left
    as it is: it runs one container per deployed model, which does not scale. A change Vertex
    refuses or fails is logged as an ERROR and the note says so, but the rollout goes on: the
    version serves at the default target, and failing here would leave it deployed at its
    share of the traffic without the smoke test that decides its promotion or rollback.

    Raises:
        RolloutError: ``cpu_target`` is not 0 to 100, or the version is not deployed on the
            endpoint.
    """
    if not 0 <= cpu_target <= 100:
        raise RolloutError(
            f"CPU target {cpu_target}%: a whole percent from 1 to 100, or 0 for Vertex's "
            f"default ({vertex.DEFAULT_TARGET_UTILIZATION}%)"
        )
    if endpoint.resource_name.startswith(LOCAL_PREFIX):
        return (
            f"{endpoint.resource_name} is local: it runs one container per deployed model "
            "(no replicas, no autoscaling), so there is nothing to set"
        )
    if cpu_target == 0:
        return (
            f"no CPU target asked for (0): Vertex's default "
            f"({vertex.DEFAULT_TARGET_UTILIZATION}%) applies between the deploy's replicas"
        )
    if not isinstance(endpoint, VertexEndpoint):
        raise TypeError(f"autoscaling is set on a VertexEndpoint, not a {type(endpoint).__name__}")
    deployed = find_deployed(endpoint, version_name)
    try:
        endpoint.set_autoscaling(
            deployed.id,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            cpu_target=cpu_target,
        )
    except RolloutError as error:
        note = (
            f"autoscaling NOT set: {error}. {deployed.id} ({version_name}) serves at Vertex's "
            f"default target ({vertex.DEFAULT_TARGET_UTILIZATION}%); the rollout goes on. Fix "
            "the cause and set it with MutateDeployedModel, or deploy again"
        )
        logger.error(note)
        return note
    note = (
        f"{deployed.id} ({version_name}) on {endpoint.resource_name}: {min_replicas} to "
        f"{max_replicas} replicas at {cpu_target}% CPU utilization"
    )
    logger.info("autoscaling set: %s", note)
    return note


def smoke_tries(share: int) -> int:
    """How often one smoke request is sent until the new model answers it: once when it takes
    no traffic (the endpoint reaches it directly: locally) or all of it."""
    if share <= 0 or share >= 100:
        return 1
    return min(TRIES_PER_SHARE * math.ceil(100 / share), MAX_TRIES)


def smoke_test_version(
    endpoint: Endpoint, version_name: str, model_dir: str, *, rel_tol: float = 1e-6
) -> SmokeReport:
    """The smoke test of ``version_name`` deployed on ``endpoint``: the model's sample and
    expected predictions (``artifact.read_sample``) sent through the endpoint."""
    deployed = find_deployed(endpoint, version_name)
    share = endpoint.traffic_split().get(deployed.id, 0)
    instances, expected, kinds = artifact.read_sample(model_dir)
    return smoke_test(
        lambda body: endpoint.raw_predict(deployed.id, body, vertex.PREDICT_TIMEOUT_S),
        Sample.of(instances, expected, kinds),
        endpoint=endpoint.resource_name,
        deployed_model_id=deployed.id,
        max_attempts=smoke_tries(share),
        rel_tol=rel_tol,
    )


def evidence(
    metrics: Mapping[str, Any],
    *,
    gate_metric: str,
    gate_threshold: float,
    container_spec: Mapping[str, Any],
    contract_report_uri: str,
    smoke_file: str,
) -> dict[str, Any]:
    """What the record links, from the steps' artifacts: the evaluation metrics and the gate,
    the checked image, the contract report, the smoke test's JSON result."""
    values = {name: float(value) for name, value in metrics.items()}
    return {
        "metrics": values,
        "gate": {
            "metric": gate_metric,
            "threshold": gate_threshold,
            "value": values.get(gate_metric),
        },
        "image_uri": container_spec["imageUri"],
        "contract_report_uri": contract_report_uri,
        "smoke": json.loads(Path(smoke_file).read_text(encoding="utf-8")),
    }


def promote_version(
    endpoint: Endpoint,
    registry: Registry,
    version_name: str,
    *,
    traffic_before: Mapping[str, int],
    how: str,
    keep_previous: bool,
    model_dir: str,
    evidence: Mapping[str, Any],
) -> dict[str, Any]:
    """Promote the smoke-tested version (``rollout.promote``), import its evaluation into the
    registry, and return the promotion record. ``evidence``: ``promotion_record``'s metrics,
    gate, image_uri, contract_report_uri and smoke."""
    outcome = promote(
        endpoint,
        registry,
        version_name,
        traffic_before=traffic_before,
        how=how,
        keep_previous=keep_previous,
    )
    task = artifact.read_manifest(model_dir).get("task", "classification")
    evaluation = model_evaluation(
        evidence["metrics"], task, display_name="train-to-serve evaluation"
    )
    try:
        imported = registry.import_evaluation(version_name, evaluation)
    except Exception as exc:  # the version serves already: report, do not undo the rollout
        logger.warning("the evaluation was not imported into the registry: %s", exc)
        imported = f"not imported: {exc}"
    return promotion_record(
        version_name=version_name,
        endpoint=endpoint.resource_name,
        outcome=outcome.to_json(),
        evaluation=imported,
        **evidence,
    )


def roll_back_version(
    endpoint: Endpoint,
    version_name: str,
    *,
    traffic_before: Mapping[str, int],
    evidence: Mapping[str, Any],
) -> dict[str, Any]:
    """Roll the failed version back (``rollout.roll_back``) and return the record."""
    outcome = roll_back(endpoint, version_name, traffic_before=traffic_before)
    return promotion_record(
        version_name=version_name,
        endpoint=endpoint.resource_name,
        outcome=outcome.to_json(),
        **evidence,
    )

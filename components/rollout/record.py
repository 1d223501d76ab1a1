"""The promotion record: one document that says why a version serves (or was rolled back), and
the model evaluation the Model Registry shows for it.

The record links what each step found: the evaluation metrics and the gate, the contract
check's report, the image (by digest where the build pinned it), the model version, the smoke
test's answers and latencies, and the traffic split before and after. JSON for tools,
Markdown for people; both are written by the promote and roll-back steps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from components import traffic

CLASSIFICATION_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
)
REGRESSION_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/modelevaluation/regression_metrics_1.0.0.yaml"
)
"""Vertex's metrics schemas for a ``ModelEvaluation`` (the URIs GCPC's import uses)."""
SCHEMA_FIELDS = {
    "regression": {"rmse": "rootMeanSquaredError", "mae": "meanAbsoluteError", "r2": "rSquared"},
    "classification": {"roc_auc": "auRoc"},
}
"""Our metric names -> the schema's fields; the others (accuracy, f1_macro) have no field in
the schema and go to the evaluation's ``metadata``."""


def model_evaluation(
    metrics: Mapping[str, float], task: str, *, display_name: str
) -> dict[str, Any]:
    """A ``ModelEvaluation`` (REST form) of the training evaluation, for
    ``ModelService.ImportModelEvaluation``: the schema's fields where ours map to one, every
    metric in ``metadata``."""
    kind = "regression" if task == "regression" else "classification"
    fields = SCHEMA_FIELDS[kind]
    return {
        "displayName": display_name,
        "metricsSchemaUri": REGRESSION_SCHEMA if kind == "regression" else CLASSIFICATION_SCHEMA,
        "metrics": {
            fields[name]: float(value) for name, value in metrics.items() if name in fields
        },
        "metadata": {"task": task, "metrics": {k: float(v) for k, v in metrics.items()}},
    }


def promotion_record(
    *,
    version_name: str,
    endpoint: str,
    image_uri: str,
    metrics: Mapping[str, float],
    gate: Mapping[str, Any],
    contract_report_uri: str,
    smoke: Mapping[str, Any],
    outcome: Mapping[str, Any],
    evaluation: str = "",
) -> dict[str, Any]:
    """The record (JSON-ready) of one rollout."""
    return {
        "recordedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "decision": outcome["action"],
        "modelVersion": version_name,
        "endpoint": endpoint,
        "image": {"uri": image_uri, "digest": image_uri.partition("@")[2] or None},
        "evaluation": {"metrics": dict(metrics), "gate": dict(gate), "imported": evaluation},
        "contractCheck": {"report": contract_report_uri},
        "smokeTest": dict(smoke),
        "rollout": dict(outcome),
    }


def markdown(record: Mapping[str, Any]) -> str:
    """The record for people."""
    rollout, smoke = record["rollout"], record["smokeTest"]
    gate = record["evaluation"]["gate"]
    latency = smoke.get("latencyMs", {})
    lines = [
        f"# Rollout of `{record['modelVersion']}`: {record['decision']}",
        "",
        f"- Endpoint: `{record['endpoint']}`, deployed model `{rollout['deployedModelId']}`",
        f"- Image: `{record['image']['uri']}`",
        f"- Gate: {gate.get('metric')} {gate.get('value')} against threshold "
        f"{gate.get('threshold')}: passed",
        "- Metrics: "
        + ", ".join(f"{k} {v:.4g}" for k, v in record["evaluation"]["metrics"].items()),
        "- Evaluation in the Model Registry: "
        f"`{record['evaluation']['imported'] or 'not imported'}`",
        f"- Contract check report: {record['contractCheck']['report']}",
        f"- Smoke test: {'passed' if smoke.get('passed') else 'FAILED'}, "
        f"{len(smoke.get('answers', []))} instances, latency median {latency.get('p50')} ms, "
        f"max {latency.get('max')} ms",
        f"- Traffic before: {traffic.format_split(rollout['trafficBefore'])}; after: "
        f"{traffic.format_split(rollout['trafficAfter'])}",
        f"- Default alias moved: {'yes' if rollout['aliasMoved'] else 'no'}; undeployed: "
        f"{', '.join(rollout['undeployed']) or 'none'}; "
        f"kept: {', '.join(rollout['kept']) or 'none'}",
    ]
    lines += [f"- {note}" for note in rollout.get("notes", [])]
    lines += [f"- {failure}" for failure in smoke.get("failures", [])]
    return "\n".join(lines) + "\n"


def dumps(record: Mapping[str, Any]) -> str:
    """The record as JSON text."""
    return json.dumps(record, indent=2, sort_keys=False) + "\n"

"""The promotion record and the model evaluation imported into the registry."""

from google.cloud.aiplatform_v1.types import ModelEvaluation
from google.protobuf import json_format

from components.rollout import Outcome
from components.rollout.record import (
    CLASSIFICATION_SCHEMA,
    REGRESSION_SCHEMA,
    markdown,
    model_evaluation,
    promotion_record,
)

IMAGE = "europe-west4-docker.pkg.dev/p/r/serving@sha256:" + "ab" * 32


def test_regression_metrics_map_to_vertex_s_schema_and_the_rest_to_metadata() -> None:
    evaluation = model_evaluation(
        {"rmse": 2.5, "mae": 1.5, "r2": 0.9}, "regression", display_name="e"
    )
    assert evaluation["metricsSchemaUri"] == REGRESSION_SCHEMA
    assert evaluation["metrics"] == {
        "rootMeanSquaredError": 2.5,
        "meanAbsoluteError": 1.5,
        "rSquared": 0.9,
    }
    # Vertex's own message type takes it as it is (no unknown field).
    message = json_format.ParseDict(evaluation, ModelEvaluation()._pb)
    assert message.metrics_schema_uri == REGRESSION_SCHEMA


def test_classification_keeps_accuracy_in_metadata() -> None:
    metrics = {"accuracy": 0.97, "f1_macro": 0.96, "roc_auc": 0.99}
    evaluation = model_evaluation(metrics, "classification", display_name="e")
    assert evaluation["metricsSchemaUri"] == CLASSIFICATION_SCHEMA
    assert evaluation["metrics"] == {"auRoc": 0.99}
    assert evaluation["metadata"]["metrics"] == metrics


def test_the_record_links_every_step_s_evidence() -> None:
    outcome = Outcome("promoted", "222", {"111": 100}, {"222": 100}, True, ["111"])
    smoke = {
        "passed": True,
        "latencyMs": {"p50": 3.1, "max": 4.0},
        "answers": [{"answer": 1}] * 3,
        "failures": [],
    }
    record = promotion_record(
        version_name="projects/p/locations/l/models/42@2",
        endpoint="projects/p/locations/l/endpoints/7",
        image_uri=IMAGE,
        metrics={"accuracy": 0.97},
        gate={"metric": "accuracy", "threshold": 0.8, "value": 0.97},
        contract_report_uri="gs://b/report.md",
        smoke=smoke,
        outcome=outcome.to_json(),
        evaluation="projects/p/locations/l/models/42/evaluations/5",
    )
    assert record["decision"] == "promoted"
    assert record["image"] == {"uri": IMAGE, "digest": "sha256:" + "ab" * 32}
    assert record["rollout"]["trafficBefore"] == {"111": 100}
    assert record["rollout"]["trafficAfter"] == {"222": 100}
    text = markdown(record)
    assert "# Rollout of `projects/p/locations/l/models/42@2`: promoted" in text
    assert "Traffic before: 111=100; after: 222=100" in text
    assert "Default alias moved: yes; undeployed: 111" in text
    assert "latency median 3.1 ms" in text

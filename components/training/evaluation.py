"""Judging a fitted model: evaluation metrics, the expected answers it exports, and the gate.

``passes_gate`` is what the ``evaluation_gate`` component decides with: a metric that training
did not log is an error, not a failed model (kfp.local treats a condition it cannot evaluate
as False and silently skips the branch, and a typo in the metric name must not look like a
bad model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from components.training.fitting import FittedModel

LOWER_IS_BETTER = frozenset({"rmse", "mae"})
"""Metrics where lower is better; the gate's rule is ``<=`` for these, ``>=`` for the rest."""
METRICS = {
    "regression": ("rmse", "mae", "r2"),
    "classification": ("accuracy", "f1_macro", "roc_auc"),
}
"""The metrics ``evaluate`` logs, by task (``roc_auc`` only for a model with probabilities)."""


def check_gate_metric(task: str, metric: str) -> None:
    """Refuse, before anything runs, a gate metric that training will not log for ``task``.

    Raises:
        ValueError: naming the metric, the task and the metrics there will be.
    """
    known = METRICS.get(task, ())
    if metric not in known:
        raise ValueError(
            f"gate_metric {metric!r}: a {task} model's evaluation logs {', '.join(known)}; "
            "use one of them"
        )


@dataclass
class Evaluation:
    """What ``evaluate`` measured on the hold-out rows."""

    metrics: dict[str, float]
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc_curve: dict[str, list[float]] = field(default_factory=dict)


def evaluate(task: str, model: FittedModel, x_eval: Any, y_eval: Any) -> Evaluation:
    """Compute evaluation metrics (and the confusion matrix and ROC curve for classifiers)."""
    import numpy as np
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    result = Evaluation(metrics={})
    predicted = model.predict(x_eval)
    if task == "regression":
        result.metrics = {
            "rmse": float(math.sqrt(skm.mean_squared_error(y_eval, predicted))),
            "mae": float(skm.mean_absolute_error(y_eval, predicted)),
            "r2": float(skm.r2_score(y_eval, predicted)),
        }
        return result
    classes = model.classes
    result.metrics = {
        "accuracy": float(skm.accuracy_score(y_eval, predicted)),
        "f1_macro": float(skm.f1_score(y_eval, predicted, average="macro")),
    }
    result.confusion_matrix = skm.confusion_matrix(y_eval, predicted, labels=classes).tolist()
    if model.has_probabilities:
        proba = model.predict_proba(x_eval)
        if len(classes) == 2:
            truth = (np.asarray(y_eval) == classes[1]).astype(int)
            scores = proba[:, 1]
            result.metrics["roc_auc"] = float(skm.roc_auc_score(truth, scores))
        else:
            truth = label_binarize(y_eval, classes=classes)
            scores = proba
            result.metrics["roc_auc"] = float(
                skm.roc_auc_score(y_eval, proba, multi_class="ovr", labels=classes)
            )
        # One curve for the UI: micro-averaged one-vs-rest over all classes.
        fpr, tpr, thresholds = skm.roc_curve(np.ravel(truth), np.ravel(scores))
        thresholds = np.minimum(thresholds, 1.0)  # sklearn puts +inf first; the UI needs finite
        result.roc_curve = {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": thresholds.tolist(),
        }
    return result


def expected_predictions(task: str, model: FittedModel, rows: Any) -> list[Any]:
    """What the saved model predicts for ``rows``, in the server's default answer shape."""
    from serving_image.server.predictions import format_classification, format_regression

    if task == "regression":
        return format_regression(model.predict(rows).tolist())
    proba = model.predict_proba(rows).tolist() if model.has_probabilities else None
    return format_classification(
        model.predict(rows).tolist(),
        proba,
        model.classes,
        output="both" if proba is not None else "label",
    )


def passes_gate(metrics: dict[str, float], metric: str, threshold: float) -> bool:
    """True when ``metric`` meets ``threshold`` (>= for scores, <= for errors such as rmse).

    Raises:
        ValueError: ``metric`` is not among ``metrics``; the message lists the ones there are.
    """
    if metric not in metrics:
        raise ValueError(
            f"evaluation gate: metric {metric!r} was not logged by training; "
            f"available: {sorted(metrics)}"
        )
    value = float(metrics[metric])
    passed = value <= threshold if metric in LOWER_IS_BETTER else value >= threshold
    relation = "<=" if metric in LOWER_IS_BETTER else ">="
    verdict = "passes" if passed else "FAILS"
    print(f"evaluation gate: {metric} = {value:.6g} {verdict} the rule {relation} {threshold:g}")
    return passed

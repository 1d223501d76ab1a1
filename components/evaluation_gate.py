"""Decide whether a trained model is good enough to ship, from its evaluation metrics.

The pipeline wraps upload, deploy and batch prediction in ``dsl.If(gate.output == True)``, so
a model whose metric misses the threshold never reaches the registry. The component fails
loudly when the metric is absent: kfp.local treats a condition it cannot evaluate as False
and silently skips the branch, and a typo in the metric name must not look like a bad model.
"""

from kfp.dsl import Input, Metrics
from kfp.dsl.component_decorator import component

from components.images import COMPONENTS_IMAGE

LOWER_IS_BETTER = frozenset({"rmse", "mae"})


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


@component(base_image=COMPONENTS_IMAGE)
def evaluation_gate(metrics: Input[Metrics], metric: str, threshold: float) -> bool:
    """Evaluation gate: does the model's ``metric`` meet ``threshold``?

    Args:
        metrics: the ``Metrics`` artifact written by ``train``.
        metric: the metric to judge by, e.g. ``accuracy``, ``f1_macro``, ``roc_auc``, ``r2``,
            or an error metric (``rmse``, ``mae``) where lower is better.
        threshold: the bar: at least this for scores, at most this for error metrics.

    Returns:
        True when the model may ship; the pipeline's ``dsl.If`` reads it.
    """
    from components.evaluation_gate import passes_gate

    return passes_gate(dict(metrics.metadata), metric, threshold)

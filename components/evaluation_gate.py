"""The ``evaluation_gate`` component: is the trained model good enough to ship?

The pipeline wraps upload, deploy and batch prediction in ``dsl.If(gate.output == True)``, so
a model whose metric misses the threshold never reaches the registry. The rule is
``components.training.passes_gate``: it fails loudly when the metric is absent, because
kfp.local treats a condition it cannot evaluate as False and silently skips the branch.
"""

from kfp import dsl
from kfp.dsl import Input, Metrics

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
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
    from components.training import passes_gate

    return passes_gate(dict(metrics.metadata), metric, threshold)

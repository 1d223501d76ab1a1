"""The shape of one prediction, shared by the trainer's expectations and the server's answers.

Classification predictions, chosen per request by ``parameters.output``:

* ``"both"`` (default): ``{"label": "Adelie", "probabilities": {"Adelie": 0.97, ...}}``
* ``"label"``: ``"Adelie"``
* ``"probabilities"``: ``{"Adelie": 0.97, "Chinstrap": 0.02, "Gentoo": 0.01}``

Regression predictions are plain numbers whatever ``output`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OUTPUTS = ("both", "label", "probabilities")
DEFAULT_OUTPUT = "both"


def format_classification(
    labels: Sequence[Any],
    probabilities: Sequence[Sequence[float]] | None,
    classes: Sequence[Any],
    output: str = DEFAULT_OUTPUT,
) -> list[Any]:
    """Turn per-row labels and class probabilities into one JSON-ready prediction per row.

    ``labels`` and ``classes`` must already be plain Python values (``ndarray.tolist()``);
    ``probabilities`` is a rows x classes matrix in ``classes`` order, or ``None`` for an
    estimator without ``predict_proba`` (then only labels can be returned).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "label":
        return list(labels)
    if probabilities is None:
        raise ValueError("this model has no class probabilities; ask for output 'label'")
    keys = [str(cls) for cls in classes]
    as_dicts = [dict(zip(keys, row, strict=True)) for row in probabilities]
    if output == "probabilities":
        return as_dicts
    return [
        {"label": label, "probabilities": probs}
        for label, probs in zip(labels, as_dicts, strict=True)
    ]


def format_regression(values: Sequence[float]) -> list[float]:
    """Regression predictions are the predicted numbers, one per row."""
    return [float(value) for value in values]

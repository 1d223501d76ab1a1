"""The shape of one prediction, shared by the trainer's expectations and the server's answers.

Classification predictions, chosen per request by ``parameters.output``:

* ``"both"`` (default): ``{"label": "Adelie", "probabilities": {"Adelie": 0.97, ...}}``
* ``"label"``: ``"Adelie"``
* ``"probabilities"``: ``{"Adelie": 0.97, "Chinstrap": 0.02, "Gentoo": 0.01}``

Regression predictions are plain numbers whatever ``output`` says.

``json_difference`` compares two predictions (or lists of them) with a float tolerance: the
server's self-check and the contract check both judge served answers with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

OUTPUTS = ("both", "label", "probabilities")
DEFAULT_OUTPUT = "both"
SELF_CHECK_REL_TOL = 1e-7
SELF_CHECK_ABS_TOL = 1e-12
"""Tolerances of the server's load-time self-check, tighter than the contract check's. The
trainer verifies a compiled graph with the same, so a graph that ships passes both;
scikit-learn's own answers to the sample are exact. (Here, beside ``json_difference``, so
that the trainer reads them without the server's dependencies.)"""


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


def json_difference(
    expected: Any, actual: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9, path: str = ""
) -> str | None:
    """Compare two JSON values; ``None`` when equal (numbers within tolerance), else the first
    difference as ``"[3].probabilities.Adelie: expected 0.97, got 0.5"``."""
    where = path or "value"
    if isinstance(expected, bool) or isinstance(actual, bool):
        same = type(expected) is type(actual) and expected == actual
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        same = math.isclose(expected, actual, rel_tol=rel_tol, abs_tol=abs_tol)
    elif isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            return f"{where}: keys differ (missing {missing}, unexpected {extra})"
        for key in expected:
            difference = json_difference(
                expected[key], actual[key], rel_tol=rel_tol, abs_tol=abs_tol, path=f"{path}.{key}"
            )
            if difference:
                return difference
        return None
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} elements, got {len(actual)}"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            difference = json_difference(
                left, right, rel_tol=rel_tol, abs_tol=abs_tol, path=f"{path}[{index}]"
            )
            if difference:
                return difference
        return None
    else:
        same = type(expected) is type(actual) and expected == actual
    if same:
        return None
    return f"{where}: expected {json.dumps(expected)}, got {json.dumps(actual)}"

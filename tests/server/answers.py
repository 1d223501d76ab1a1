"""How the server tests judge served answers against ``expected_predictions.jsonl``.

The exported predictions come from scikit-learn; the compiled graph, which serves by default
where the export verified it, reproduces them to ~1e-16, not bit for bit. Served answers are
therefore judged with the server's own self-check tolerance; labels stay exact.
"""

from __future__ import annotations

from typing import Any

from serving_image.server.predictions import SELF_CHECK_ABS_TOL, SELF_CHECK_REL_TOL, json_difference


def answer_difference(expected: Any, actual: Any) -> str | None:
    """``None`` when ``actual`` is ``expected`` within the self-check tolerance, else the
    first difference."""
    return json_difference(expected, actual, rel_tol=SELF_CHECK_REL_TOL, abs_tol=SELF_CHECK_ABS_TOL)

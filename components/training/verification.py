"""Does the compiled graph answer as the fitted model does? Checked row by row before it ships.

Each row set goes to the fitted model as the trainer's frame and to the graph as a client's
JSON values through the server's own encoding (``compiled.graph_feed``). The labels must be
equal and every probability (or regression value) within the server's self-check tolerance
(``math.isclose`` with ``SELF_CHECK_REL_TOL``/``SELF_CHECK_ABS_TOL``, tighter than the contract
check's): a graph verified here also passes the self-check and the contract check, whose
expected predictions come from scikit-learn.

Besides the exported sample (evaluation rows and edge instances) and the whole evaluation
split, ``generated_rows`` makes rows from the schema alone: numbers within and beyond the
training range, categories seen and unseen (the graph's null marker among them, as a client
could send it), and nulls everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.training.fitting import FittedModel
from components.training.inputs import json_value
from serving_image.server.compiled import MISSING_STRING, UNSEEN_STRING, CompiledGraph
from serving_image.server.predictions import SELF_CHECK_ABS_TOL, SELF_CHECK_REL_TOL

GENERATED_ROWS = 500
MISSING_SHARE = 0.2
"""Share of nulls in each generated column."""


def generated_rows(schema: list[dict[str, Any]], count: int, seed: int) -> Any:
    """``count`` rows drawn from the schema, shaped like the trainer's frames (numbers float64
    with NaN, categories object with ``None``)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns = {}
    for feature in schema:
        name = feature["name"]
        missing = rng.random(count) < MISSING_SHARE
        if feature["kind"] == "numeric":
            low, high = feature.get("min", 0.0), feature.get("max", 1.0)
            reach = (high - low) / 2 or 1.0
            values = rng.uniform(low - reach, high + reach, count)
            columns[name] = pd.Series(np.where(missing, np.nan, values), dtype="float64")
        else:
            choices = [*feature.get("categories", []), f"unseen {name}", "", MISSING_STRING]
            choices.append(UNSEEN_STRING)
            picks = rng.integers(len(choices), size=count).tolist()
            values = [None if gap else choices[i] for gap, i in zip(missing, picks, strict=True)]
            columns[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns)


@dataclass
class Verdict:
    """What the comparison found, over every row set checked so far."""

    rows: dict[str, int] = field(default_factory=dict)
    label_mismatches: int = 0
    outside_tolerance: int = 0
    """Probabilities or values beyond the tolerance (a non-finite answer counts)."""
    largest_difference: float = 0.0
    """The largest finite absolute difference, with where it was found, and the largest
    relative one (to the larger value) among those beyond the absolute tolerance."""
    largest_relative: float = 0.0
    largest_at: str = ""
    first_failure: str = ""
    """The first disagreement found, in words."""

    @property
    def agrees(self) -> bool:
        return not (self.label_mismatches or self.outside_tolerance)

    def manifest(self) -> dict[str, Any]:
        """The manifest's ``compiled.verification``."""
        return {
            "tolerance": {"rel": SELF_CHECK_REL_TOL, "abs": SELF_CHECK_ABS_TOL},
            "rows": self.rows,
            "label_mismatches": self.label_mismatches,
            "outside_tolerance": self.outside_tolerance,
            "largest_difference": {
                "absolute": self.largest_difference,
                "relative": self.largest_relative,
                "at": self.largest_at,
            },
        }

    def compare(self, kind: str, frame: Any, model: FittedModel, graph: CompiledGraph) -> None:
        """Answer ``frame`` with both and add what differs; ``kind`` names the row set."""
        import numpy as np

        columns = {name: [json_value(v) for v in frame[name].tolist()] for name in frame.columns}
        values, probabilities = graph.predict(graph.feed(columns))
        if model.classes:
            want_labels = model.predict(frame).tolist()
            for row, (got, want) in enumerate(zip(values.tolist(), want_labels, strict=True)):
                if got != want:
                    self.label_mismatches += 1
                    self._failure(f"{kind} row {row}: label {got!r}, scikit-learn {want!r}")
            got_numbers, want_numbers = probabilities, model.predict_proba(frame)
            names = [f"probabilities[{label!r}]" for label in model.classes]
        else:
            got_numbers, want_numbers = values.reshape(-1, 1), model.predict(frame).reshape(-1, 1)
            names = ["value"]
        difference = np.abs(got_numbers - want_numbers)
        scale = np.maximum(np.abs(got_numbers), np.abs(want_numbers))
        within = difference <= np.maximum(SELF_CHECK_REL_TOL * scale, SELF_CHECK_ABS_TOL)
        self.outside_tolerance += int((~within).sum())
        if not within.all():
            row, column = (int(i) for i in np.argwhere(~within)[0])
            self._failure(
                f"{kind} row {row}: {names[column]} {got_numbers[row, column]!r}, scikit-learn "
                f"{want_numbers[row, column]!r}"
            )
        finite = np.where(np.isfinite(difference), difference, 0.0)  # counted above
        if finite.size and finite.max() > self.largest_difference:
            row, column = np.unravel_index(int(finite.argmax()), finite.shape)
            self.largest_difference = float(finite.max())
            self.largest_at = f"{kind} row {row}, {names[column]}"
        # Relative only beyond the absolute tolerance: it covers tiny values whatever the ratio.
        beyond_abs = (finite > SELF_CHECK_ABS_TOL) & (scale > 0)
        relative = np.divide(finite, scale, out=np.zeros_like(finite), where=beyond_abs)
        self.largest_relative = max(self.largest_relative, float(relative.max(initial=0.0)))
        self.rows[kind] = self.rows.get(kind, 0) + len(frame)

    def _failure(self, description: str) -> None:
        self.first_failure = self.first_failure or description

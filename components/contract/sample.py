"""What a check predicts: the sample instances, their expected predictions and kinds, and the
requests that carry them.

Skew hides in how a request is made: a server whose preprocessing depends on the request's
other instances (a scaler or an imputer fitted on each request) answers a spread-out batch
right and a lone instance wrong. So the sample is sent three ways (``SHAPES``): in batches
(the evaluation rows, the edge instances and the list forms each in their own, split to stay
within a body limit), each instance alone, and in the reverse order; each answer is compared
with its expectation. Lists of values in a sample that also has objects are a second form of
the same rows: a server may refuse them (``Sample.optional``).

An image we did not build is checked with the same sample, as objects or, for a pre-built
scikit-learn container, as lists (``model_sample``'s ``instance_format``); its plain answer
(a label, class probabilities) is compared with that part of the exported prediction
(``plain_expectation``), and its errors on edge instances are noted apart
(``Comparison.errored``, the ``edge-errors`` rule).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving_image.server import artifact
from serving_image.server.artifact import EVALUATION_KIND as EVALUATION
from serving_image.server.predictions import json_difference

BATCH, SINGLE, REVERSED = "batch", "single", "reversed"
SHAPES = (BATCH, SINGLE, REVERSED)
SHAPE_NAMES = {BATCH: "in batches", SINGLE: "each instance alone", REVERSED: "in another order"}
OBJECT, LIST = "object", "list"
INSTANCE_FORMATS = (OBJECT, LIST)
"""How a model directory's sample is sent: ``object`` (as exported, keyed by feature name,
the edge instances also as lists) or ``list`` (every instance as a list of values in the
manifest's feature order, what a pre-built scikit-learn container takes)."""
EXPORTED = "as exported"
LABEL = "labels only"
PROBABILITY_LIST = "class probabilities as lists, in class order"
PROBABILITY_OBJECT = "class probabilities by class"


def as_list(instance: Any, names: Sequence[str]) -> Any:
    """An object instance as a list of its values in ``names`` order (a feature it lacks:
    null); any other instance as it is."""
    if isinstance(instance, dict):
        return [instance.get(name) for name in names]
    return instance


def model_sample(
    model_dir: str | Path, instance_format: str = OBJECT
) -> tuple[list[Any], list[Any], list[str]]:
    """The model directory's sample as a check sends it, with expectations and kinds:
    ``artifact.read_sample``'s for ``object``; for ``list`` each exported instance once, as a
    list of values in the manifest's feature order.

    Raises:
        ValueError: an unknown ``instance_format``, or ``list`` without a manifest to give
            the feature order; ``OSError``: a sample file is missing.
    """
    if instance_format not in INSTANCE_FORMATS:
        raise ValueError(
            f"instance_format must be one of {INSTANCE_FORMATS}, not {instance_format!r}"
        )
    instances, expected, kinds = artifact.read_sample(model_dir)
    if instance_format == OBJECT:
        return instances, expected, kinds
    names = feature_names(model_dir)
    exported = [i for i, kind in enumerate(kinds) if not kind.endswith(artifact.AS_LIST)]
    return (
        [as_list(instances[i], names) for i in exported],
        [expected[i] for i in exported],
        [kinds[i] for i in exported],
    )


def feature_names(model_dir: str | Path) -> list[str]:
    """The manifest's feature order; ``ValueError`` without a readable manifest."""
    try:
        manifest = artifact.read_manifest(model_dir)
    except artifact.ManifestError as exc:
        raise ValueError(f"instances as lists need the manifest's feature order: {exc}") from None
    return [feature["name"] for feature in manifest["features"]]


def plain_expectation(expected: Any, answer: Any) -> tuple[str, Any]:
    """What an image we did not build should have answered, in the plain shape it answered
    with, and that shape's name: an exported classification prediction (label and
    probabilities) reduced to its label, its probabilities in class order (a list) or by
    class (an object without a label); anything else as exported."""
    if not (isinstance(expected, dict) and {"label", "probabilities"} <= expected.keys()):
        return EXPORTED, expected
    probabilities = expected["probabilities"]
    if isinstance(answer, list):
        return PROBABILITY_LIST, list(probabilities.values())
    if isinstance(answer, dict):
        return (EXPORTED, expected) if "label" in answer else (PROBABILITY_OBJECT, probabilities)
    return LABEL, expected["label"]


def json_body(value: Any) -> bytes:
    """``value`` as a request body (NaN and Infinity refused: they are not JSON)."""
    return json.dumps(value, allow_nan=False).encode()


@dataclass(frozen=True)
class Sample:
    """The instances a check sends, each with its expected prediction and its kind."""

    instances: list[Any]
    expected: list[Any] | None
    """One per instance; ``None``: the answers' shape is checked, not their values."""
    kinds: list[str]

    @classmethod
    def of(
        cls,
        instances: Sequence[Any],
        expected: Sequence[Any] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Sample:
        """A sample; ``ValueError`` when it is empty or the lists do not pair up."""
        rows = list(instances)
        if not rows:
            raise ValueError("at least one sample instance is needed")
        if expected is not None and len(expected) != len(rows):
            raise ValueError(
                f"{len(expected)} expected predictions for {len(rows)} instances: they must "
                "come in pairs, one per line"
            )
        named = list(kinds) if kinds is not None else [EVALUATION] * len(rows)
        if len(named) != len(rows):
            raise ValueError(f"{len(named)} kinds for {len(rows)} instances")
        return cls(rows, None if expected is None else list(expected), named)

    def group(self, index: int) -> tuple[type, bool]:
        """What an instance shares a batch with: its form (object, list) and whether it is an
        evaluation row."""
        return type(self.instances[index]), self.kinds[index] == EVALUATION

    def requests(self, shape: str, max_bytes: int) -> list[list[int]]:
        """The instances' positions, one list per request of ``shape``: each alone, or in
        order (``reversed``: backwards), split where the ``group`` changes or the body would
        pass ``max_bytes``."""
        order = range(len(self.instances))
        if shape == SINGLE:
            return [[index] for index in order]
        if shape == REVERSED:
            order = reversed(order)
        requests: list[list[int]] = []
        size = 0
        for index in order:
            bytes_ = len(json_body(self.instances[index])) + 2
            current = requests[-1] if requests else []
            same_group = current and self.group(current[0]) == self.group(index)
            if not same_group or size + bytes_ > max_bytes:
                requests.append([index])
                size = len(b'{"instances": []}') + bytes_
            else:
                current.append(index)
                size += bytes_
        return requests

    def first_request(self, max_bytes: int) -> list[int]:
        """The instances of the first predict request: the start of the batch."""
        return self.requests(BATCH, max_bytes)[0]

    def edge_count(self) -> int:
        """How many of the instances are edge instances."""
        return sum(kind != EVALUATION for kind in self.kinds)

    def edges(self, positions: Sequence[int]) -> bool:
        """Whether these are all edge instances (no evaluation row)."""
        return all(self.kinds[i] != EVALUATION for i in positions)

    def form(self) -> str:
        """How the instances are given, for the report."""
        forms = {type(instance) for instance in self.instances}
        if forms == {list}:
            return "lists of values (in the manifest's feature order)"
        if list in forms:
            return "objects keyed by feature name, the edge instances also as lists"
        return "objects keyed by feature name" if forms == {dict} else "as given"

    def optional(self, positions: Sequence[int]) -> bool:
        """Whether these instances are lists of values in a sample that also has objects:
        a second form of the same rows, which a server may refuse (objects are enough)."""
        return all(isinstance(self.instances[i], list) for i in positions) and any(
            isinstance(instance, dict) for instance in self.instances
        )

    def body(self, positions: Sequence[int]) -> bytes:
        """The request body ``{"instances": [...]}`` of these instances."""
        return json_body({"instances": [self.instances[index] for index in positions]})


@dataclass
class Comparison:
    """How one request shape's answers compared with the expectations."""

    shape: str
    differences: dict[int, str] = field(default_factory=dict)
    """Instance position -> what differed (or why no prediction came back)."""
    refused: dict[int, str] = field(default_factory=dict)
    """Instance position -> the answer to an optional form (``Sample.optional``) refused."""
    errored: dict[int, str] = field(default_factory=dict)
    """Instance position -> the error an image we did not build answered an edge instance
    with (``edge-errors``)."""
    first_exchange: Any = None
    """The exchange of the first request with a difference."""
    error_exchange: Any = None
    """The exchange of the first edge instance answered with an error."""
    compared: int = 0
    compared_as: Counter[str] = field(default_factory=Counter)
    """How many predictions were compared in each shape (``EXPORTED``, ``LABEL``, ...)."""

    def record(
        self,
        expected: Sequence[Any],
        positions: Sequence[int],
        predictions: Sequence[Any] | None,
        fault: str,
        exchange: Any,
        *,
        rel_tol: float,
        abs_tol: float,
        plain: bool = False,
    ) -> None:
        """Compare one request's ``predictions`` for the sample ``positions`` with what is
        ``expected`` there (``fault`` for each when no predictions came back); ``plain``: an
        answer in a plain shape is compared with that part of the expectation
        (``plain_expectation``)."""
        self.compared += len(positions)
        for offset, index in enumerate(positions):
            difference = fault
            if predictions is not None:
                shape, expectation = EXPORTED, expected[index]
                if plain:
                    shape, expectation = plain_expectation(expectation, predictions[offset])
                self.compared_as[shape] += 1
                difference = json_difference(
                    expectation,
                    predictions[offset],
                    rel_tol=rel_tol,
                    abs_tol=abs_tol,
                    path=f"predictions[{index}]",
                )
            if difference is not None:
                self.differences[index] = difference
                self.first_exchange = self.first_exchange or exchange


def describe(sample: Sample, comparisons: Sequence[Comparison]) -> str:
    """One sentence per shape that differed (how many, which kinds, the first difference),
    and what it means when an instance was right in a batch and wrong alone."""
    by_shape = {comparison.shape: comparison for comparison in comparisons}
    parts = []
    if BATCH in by_shape and SINGLE in by_shape:
        alone = set(by_shape[SINGLE].differences) - set(by_shape[BATCH].differences)
        if alone:
            parts.append(
                f"{len(alone)} of the instances were right in a batch and wrong alone: the answer "
                "depends on the request's other instances (preprocessing fitted on each "
                "request)"
            )
    for comparison in comparisons:
        if not comparison.differences:
            continue
        kinds = sorted({sample.kinds[i] for i in comparison.differences})
        index, difference = next(iter(comparison.differences.items()))
        parts.append(
            f"{SHAPE_NAMES[comparison.shape]}: {len(comparison.differences)} of "
            f"{comparison.compared} differ (kinds {', '.join(kinds)}; first: instance {index} "
            f"({sample.kinds[index]}): {difference})"
        )
    return "; ".join(parts)


def agreement(comparisons: Sequence[Comparison], rel_tol: float) -> str:
    """The verdict of comparisons without a difference: how many predictions, sent how."""
    shapes = ", ".join(SHAPE_NAMES[c.shape] for c in comparisons)
    compared = max(c.compared for c in comparisons)
    return (
        f"all {compared} predictions equal the expected ones, sent {shapes} (rel_tol {rel_tol:g})"
    )


def describe_errors(sample: Sample, comparisons: Sequence[Comparison]) -> str:
    """How many edge instances each shape got an error for; the first shape's also by kind,
    with the answer (put the shape that sends each instance alone first: an error on a batch
    befalls every instance in it)."""
    edges = sample.edge_count()
    named, *others = comparisons
    answers = sorted({f"{sample.kinds[i]}: {answer}" for i, answer in named.errored.items()})
    parts = [
        f"{SHAPE_NAMES[named.shape]}: {len(named.errored)} of {edges} edge instances answered "
        f"with an error ({'; '.join(answers)})"
    ]
    parts += [f"{SHAPE_NAMES[c.shape]}: {len(c.errored)} of {edges}" for c in others]
    return "; ".join(parts)


def table(sample: Sample, comparisons: Sequence[Comparison]) -> list[str]:
    """Markdown rows: predictions that matched, by kind of instance and request shape."""
    shapes = [comparison.shape for comparison in comparisons]
    rows = [
        "| kind of instance | " + " | ".join(SHAPE_NAMES[s] for s in shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    totals = Counter(sample.kinds)
    for kind in totals:
        cells = []
        for comparison in comparisons:
            wrong = sum(sample.kinds[i] == kind for i in comparison.differences)
            refused = sum(sample.kinds[i] == kind for i in comparison.refused)
            errors = sum(sample.kinds[i] == kind for i in comparison.errored)
            right = totals[kind] - wrong - refused - errors
            note = " (refused)" if refused else " (error)" if errors else ""
            cells.append(f"{right}/{totals[kind]}{note}")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return rows

"""The compiled model: the fitted scikit-learn pipeline as an ONNX graph, run with onnxruntime.

The train step writes the graph (``model.onnx``) when every step of the pipeline converts and
the graph reproduces scikit-learn's answers; the manifest's ``compiled`` entry says so
(``status`` ``verified``) or why not. The graph takes one ``(n, 1)`` input per feature, named
like it: ``tensor(double)`` for a numeric one (null -> NaN, imputed inside the graph) and
``tensor(string)`` for a categorical one (null -> ``MISSING_STRING``). It answers ``label``
and ``probabilities`` (classification) or ``variable`` (regression), all computed in float64
like scikit-learn.

``graph_feed`` turns validated feature columns straight into those arrays (no DataFrame), and
the trainer verifies the graph through this same module, so serving cannot encode a request
differently from how the graph was verified. The session runs one thread: the server's
workers are processes, one per CPU.

onnxruntime is imported when a graph is opened: a model served by scikit-learn never pays for
it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VERIFIED = "verified"
"""The manifest's ``compiled.status`` for a graph that may serve."""
AUTO = "auto"
COMPILED = "compiled"
SCIKIT_LEARN = "scikit-learn"
PREDICTOR_CHOICES = (AUTO, COMPILED, SCIKIT_LEARN)
"""``SERVING_PREDICTOR``'s values: the compiled graph when verified, else the framework's
predictor (default); the compiled graph or a failed load; scikit-learn, never the graph."""
LABEL = "label"
PROBABILITIES = "probabilities"
VALUE = "variable"
"""The graph's output names (those skl2onnx gives a classifier and a regressor)."""
MISSING_STRING = "\x00missing"
"""What a null categorical value becomes in the graph's string input. Where a category was
missing in training, scikit-learn's one-hot encoder learnt null as a category of its own
(our categorical imputer replaces NaN, never ``None``), and the graph maps this string to it."""
UNSEEN_STRING = "\x00unseen"
"""What a request's own ``MISSING_STRING`` becomes: a category never seen in training, as
scikit-learn sees that value. The trainer refuses to compile a model that knows either string
as a category."""
INPUT_TYPES = {True: "tensor(double)", False: "tensor(string)"}
"""The graph's input type for a numeric (True) and a categorical (False) feature."""


class GraphError(ValueError):
    """The graph does not fit the manifest; the message says how."""


def open_session(path: Path) -> Any:
    """An onnxruntime CPU session on ``path`` with one thread (a worker is one process)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: its warnings would be lines that are not JSON
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_feed(columns: dict[str, list[Any]], numeric: dict[str, bool]) -> dict[str, Any]:
    """Feature columns (JSON values, ``None`` for null) as the graph's inputs: ``(n, 1)``
    float64 arrays (null -> NaN) and ``(n, 1)`` object arrays of strings (null ->
    ``MISSING_STRING``)."""
    import numpy as np

    feed = {}
    for name, values in columns.items():
        if numeric[name]:
            feed[name] = np.array(values, dtype=np.float64).reshape(-1, 1)
            continue
        if MISSING_STRING in values:  # a client sent the marker itself: an unseen category
            values = [UNSEEN_STRING if value == MISSING_STRING else value for value in values]
        strings = [MISSING_STRING if value is None else value for value in values]
        feed[name] = np.array(strings, dtype=object).reshape(-1, 1)
    return feed


class CompiledGraph:
    """``model.onnx`` opened and checked against the manifest's features and task."""

    def __init__(self, path: Path, features: list[dict[str, Any]], task: str) -> None:
        self.task = task
        self.numeric = {feature["name"]: feature["kind"] == "numeric" for feature in features}
        self.session = open_session(path)
        wanted = {name: INPUT_TYPES[numeric] for name, numeric in self.numeric.items()}
        inputs = {node.name: node.type for node in self.session.get_inputs()}
        if inputs != wanted:
            raise GraphError(
                f"{path.name} takes inputs {inputs} but the manifest's features need {wanted}; "
                "re-export the model"
            )
        outputs = {node.name for node in self.session.get_outputs()}
        needed = {LABEL, PROBABILITIES} if task == "classification" else {VALUE}
        if not needed <= outputs:
            raise GraphError(
                f"{path.name} has outputs {sorted(outputs)}, not {sorted(needed)}; re-export "
                "the model"
            )

    def feed(self, columns: dict[str, list[Any]]) -> dict[str, Any]:
        return graph_feed(columns, self.numeric)

    def predict(self, feed: dict[str, Any], output: str = "both") -> tuple[Any, Any]:
        """``(labels or values, probabilities)`` as numpy arrays, each None when ``output``
        (``both``, ``label`` or ``probabilities``; classification only) does not use it."""
        if self.task == "regression":
            return self.session.run([VALUE], feed)[0].reshape(-1), None
        if output == "label":
            return self.session.run([LABEL], feed)[0], None
        if output == "probabilities":
            return None, self.session.run([PROBABILITIES], feed)[0]
        labels, probabilities = self.session.run([LABEL, PROBABILITIES], feed)
        return labels, probabilities

"""The fitting interface every framework implements: a fitted model as export sees it.

A framework's fit step is a *fitter*: its ``make_*_fitter(task, estimator, hyperparameters,
seed)`` checks the estimator and hyper-parameters (before any training) and returns
``fit(schema, x_train, y_train) -> FittedModel``. A fitted model may also compile to an ONNX
graph (``onnx_graph``), which the export verifies and the server prefers (``compiling``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any


class NotCompilable(Exception):
    """The fitted model has no ONNX graph: ``step`` (its path in the model, or the framework)
    does not convert, for the reason in the message."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


class FittedModel(ABC):
    """A fitted model as the shared evaluation and export code sees it, whatever the framework.

    ``predict``/``predict_proba`` take a frame of raw feature columns shaped as
    ``train_and_export`` prepares them (numeric float/int with NaN, categorical object with
    ``None``) and return numpy arrays.
    """

    classes: list[Any]
    """Classification: the class labels, in ``predict_proba``'s column order; else ``[]``."""
    has_probabilities: bool = True

    @abstractmethod
    def predict(self, frame: Any) -> Any:
        """Predicted labels (classification) or values (regression), one per row."""

    @abstractmethod
    def predict_proba(self, frame: Any) -> Any:
        """Class probabilities, rows x ``classes``."""

    @abstractmethod
    def save(self, model_dir: Path) -> str:
        """Write the model into ``model_dir``; return its file (or directory) name."""

    @abstractmethod
    def onnx_graph(self, schema: list[dict[str, Any]]) -> Any:
        """The fitted model as an ``onnx.ModelProto`` taking one input per ``schema`` feature
        (``serving_image/server/compiled.py``); ``NotCompilable`` when it has none."""

    @abstractmethod
    def manifest_fields(self) -> dict[str, Any]:
        """``framework``, ``framework_version``, ``libraries``, ``estimator`` and any
        framework-specific manifest keys."""


Fitter = Callable[[list[dict[str, Any]], Any, Any], FittedModel]
"""``fit(schema, x_train, y_train)``, made by a framework's ``make_fitter``."""

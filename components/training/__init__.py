"""Training and export: from a table to the model artifact the serving image loads.

``inputs`` reads and checks the table, ``fitting`` is the interface each framework implements
(``scikit_learn``, ``keras_model``), ``evaluation`` measures the model and holds the gate's
rule, and ``export`` runs it all and writes the artifact. A model trained elsewhere takes the
same writer: ``export.export_model`` (checked and adapted by ``external``), or from files
``packaging.package_model``.
"""

from components.training.evaluation import LOWER_IS_BETTER, METRICS, check_gate_metric, passes_gate
from components.training.export import (
    FRAMEWORKS,
    TrainingResult,
    check_training_inputs,
    export_model,
    make_fitter,
    train_and_export,
)
from components.training.external import ExportError
from components.training.inputs import BUNDLED_DATASETS, TrainingInputError, load_table
from components.training.packaging import one_source, package_model

__all__ = [
    "BUNDLED_DATASETS",
    "FRAMEWORKS",
    "LOWER_IS_BETTER",
    "METRICS",
    "ExportError",
    "TrainingInputError",
    "TrainingResult",
    "check_gate_metric",
    "check_training_inputs",
    "export_model",
    "load_table",
    "make_fitter",
    "one_source",
    "package_model",
    "passes_gate",
    "train_and_export",
]

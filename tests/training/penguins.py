"""What the training tests share: the penguins features, and the train component run once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfp import local

from components.train import train

FEATURES = [
    "island",
    "bill_length_mm",
    "bill_depth_mm",
    "flipper_length_mm",
    "body_mass_g",
    "sex",
    "year",
]
"""The bundled penguins table's feature columns, in their order there."""


def run_train_component(root: Path, **arguments: Any) -> dict[str, Any]:
    """Run the train component through kfp.local on penguins; its output artifacts by name."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = train(data="penguins", sample_size=8, **arguments)
    return {name: task.outputs[name] for name in ("model", "metrics", "classification_metrics")}

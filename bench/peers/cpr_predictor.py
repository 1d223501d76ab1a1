"""A Vertex CPR ``Predictor`` for a train-to-serve model directory (benchmark only).

Written as CPR's guide has it: ``load`` copies the artifacts into the working directory,
``preprocess`` builds the DataFrame, ``predict`` runs the pipeline, ``postprocess`` shapes the
answer; the work itself is ``PipelineModel``'s, shared with the other peers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from google.cloud.aiplatform.prediction.predictor import Predictor
from google.cloud.aiplatform.utils import prediction_utils
from pipeline_model import PipelineModel


class TrainToServePredictor(Predictor):
    """CPR's predictor interface over ``PipelineModel``."""

    def load(self, artifacts_uri: str) -> None:
        prediction_utils.download_model_artifacts(artifacts_uri)
        self._pipeline = PipelineModel(Path("."))

    def preprocess(self, prediction_input: dict[str, Any]) -> pd.DataFrame:
        return self._pipeline.frame(prediction_input["instances"])

    def predict(self, instances: pd.DataFrame) -> tuple[list[Any], list[list[float]] | None]:
        return self._pipeline.predict(instances)

    def postprocess(self, prediction_results: tuple[Any, Any]) -> dict[str, Any]:
        return {"predictions": self._pipeline.answers(*prediction_results)}

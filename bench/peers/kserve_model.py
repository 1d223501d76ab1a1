"""KServe's model server on a train-to-serve model directory (benchmark only).

KServe's own ``sklearnserver`` cannot serve this pipeline: it is not published on PyPI (only
in KServe's image, pinned to scikit-learn 1.5, which cannot be trusted to unpickle a 1.9
model), its v1 input path builds one DataFrame per instance dict and fails on a dict of
scalars ("If using all scalar values, you must pass an index"), and it answers either labels or
probabilities, never both. So this is a ``kserve.Model`` subclass doing ``PipelineModel``'s
work, started the way ``sklearnserver`` starts (KServe's own argument parser: ``--http_port``,
``--workers``, ``--model_name``, ``--enable_grpc``), plus ``--model_dir``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kserve
from pipeline_model import PipelineModel


class TrainToServeModel(kserve.Model):
    """The v1 protocol's ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out."""

    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self._model_dir = model_dir

    def load(self) -> bool:
        self._pipeline = PipelineModel(self._model_dir)
        self.ready = True
        return self.ready

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        pipeline = self._pipeline
        outputs = pipeline.predict(pipeline.frame(payload["instances"]))
        return {"predictions": pipeline.answers(*outputs)}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True)
    args, _ = parser.parse_known_args()
    model = TrainToServeModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()

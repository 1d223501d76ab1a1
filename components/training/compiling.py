"""Compile at export: the fitted model as an ONNX graph beside it, shipped only once verified.

``export_compiled`` asks the fitted model for its graph (``FittedModel.onnx_graph``), opens it
as the server will (``serving_image/server/compiled.py``), compares its answers with the
fitted model's (``verification``) and returns the manifest's ``compiled`` entry:

* ``status`` ``verified``: ``model.onnx`` is written, with ``model_sha256`` (the server checks
  it as it checks the model file's) and the ``verification`` figures (tolerance, rows checked
  per set, label mismatches, values beyond the tolerance, the largest difference);
* ``disagrees``: the graph answered differently; it is not written, ``reason`` names the first
  difference (also logged as a warning) and ``verification`` has the figures;
* ``not_compiled``: a step has no ONNX form (``step``, ``reason`` in the converter's words) or
  onnxruntime refuses the graph; TensorFlow models are not compiled.

In the last two cases the server serves the model with its framework, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.training.fitting import FittedModel, NotCompilable
from components.training.verification import Verdict
from serving_image.server import artifact
from serving_image.server.compiled import VERIFIED, CompiledGraph

log = logging.getLogger(__name__)

DISAGREES = "disagrees"
NOT_COMPILED = "not_compiled"


def export_compiled(
    model: FittedModel,
    schema: list[dict[str, Any]],
    task: str,
    model_dir: Path,
    row_sets: list[tuple[str, Any]],
) -> dict[str, Any]:
    """Compile ``model``, verify the graph on ``row_sets`` (``(kind, frame)`` pairs), write
    ``model.onnx`` into ``model_dir`` if it agrees; return the manifest's ``compiled`` entry."""
    path = model_dir / artifact.ONNX_FILE
    path.unlink(missing_ok=True)  # a graph left by an earlier export into the same directory
    try:
        graph = model.onnx_graph(schema)
    except NotCompilable as exc:
        return {"status": NOT_COMPILED, "step": exc.step, "reason": str(exc)}
    except ImportError as exc:  # a trainer without the project's dependencies (skl2onnx, onnx)
        return {
            "status": NOT_COMPILED,
            "reason": f"the ONNX converter is not installed ({exc}); install skl2onnx, onnx "
            "and onnxruntime (the project's dependencies) to compile",
        }
    path.write_bytes(graph.SerializeToString())
    entry: dict[str, Any] = {"converter": _versions(), "opsets": _opsets(graph)}
    try:
        compiled = CompiledGraph(path, schema, task)
    except Exception as exc:  # onnxruntime refuses the graph (an operator or type it lacks)
        path.unlink()
        return {
            "status": NOT_COMPILED,
            "reason": f"onnxruntime cannot run the graph: {exc}",
            **entry,
        }
    verdict = Verdict()
    for kind, frame in row_sets:
        verdict.compare(kind, frame, model, compiled)
    entry["verification"] = verdict.manifest()
    if verdict.agrees:
        return {
            "status": VERIFIED,
            "model_file": artifact.ONNX_FILE,
            "model_sha256": artifact.sha256_file(path),
            **entry,
        }
    path.unlink()
    reason = (
        f"the graph disagrees with scikit-learn ({verdict.label_mismatches} labels, "
        f"{verdict.outside_tolerance} values beyond the tolerance; first: {verdict.first_failure})"
    )
    log.warning(
        f"{artifact.ONNX_FILE} is not exported: {reason}; the model serves with scikit-learn"
    )
    return {"status": DISAGREES, "reason": reason, **entry}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx

    return {
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _opsets(graph: Any) -> dict[str, int]:
    return {entry.domain or "ai.onnx": entry.version for entry in graph.opset_import}

"""Predictors: load a model directory and turn validated requests into predictions.

The interface mirrors Vertex CPR's and KServe's ``Predictor``/``Model``: ``load``, then per
request ``preprocess`` -> ``predict`` -> ``postprocess``. It knows nothing about HTTP, so it
can be used in-process (the benchmark's no-HTTP limit does exactly that); the manifest's
``framework`` picks ``SklearnPredictor`` or ``TensorFlowPredictor``, unless the export
verified a compiled graph of the scikit-learn pipeline: then ``CompiledPredictor`` serves it
(``SERVING_PREDICTOR``, default ``auto``), with scikit-learn as the fallback.

``load_predictor`` is the one entry point the server uses. It refuses a model whose file
(``model.joblib``) or directory (``saved_model/``) does not hash to the manifest's
``model_sha256`` *before* loading it (unpickling runs arbitrary code), checks the model
against its manifest, then runs the exported sample instances through the full request path
and compares the answers with ``expected_predictions.jsonl``. That self-check catches library
skew between the trainer and the serving image (a different scikit-learn that unpickles but
predicts differently), or a compiled graph that answers otherwise than scikit-learn, and
warms the model up before health turns 200.

numpy, pandas, scikit-learn, onnxruntime and TensorFlow are imported inside the methods: this
module is imported on the way to binding the port, and those imports take seconds
(TensorFlow's about five); TensorFlow is imported only to serve a TensorFlow model, and is
absent from the scikit-learn image.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import orjson

from . import artifact
from .compiled import AUTO, COMPILED, SCIKIT_LEARN, VERIFIED, CompiledGraph, GraphError
from .logs import log_fields
from .predictions import (
    SELF_CHECK_ABS_TOL,
    SELF_CHECK_REL_TOL,
    format_classification,
    format_regression,
    json_difference,
)
from .validation import PredictRequest, RequestError, Schema, parse_predict_request

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says what is wrong and what to do."""


class Predictor(ABC):
    """Load a model once; answer validated requests with one JSON-ready prediction each."""

    schema: Schema
    """What requests must look like; set by ``load``."""
    task: str
    """``classification`` or ``regression`` (the manifest's); set by ``load``."""

    @abstractmethod
    def load(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        """Load the (already checksum-verified) model from ``model_dir``; set ``schema``."""

    @abstractmethod
    def preprocess(self, request: PredictRequest) -> Any:
        """Turn the request's feature columns into the model's input batch."""

    @abstractmethod
    def predict(self, inputs: Any, request: PredictRequest) -> Any:
        """Run the model once on the whole batch."""

    @abstractmethod
    def postprocess(self, outputs: Any, request: PredictRequest) -> list[Any]:
        """Turn the model's outputs into one JSON-ready prediction per instance, in order."""

    def __call__(self, request: PredictRequest) -> list[Any]:
        """The full chain for one request."""
        return self.postprocess(self.predict(self.preprocess(request), request), request)


class TabularPredictor(Predictor):
    """What the scikit-learn and compiled predictors share: ``predict`` gives ``(labels or
    values, probabilities)`` as numpy arrays, each None when the request's output does not
    use it, and ``postprocess`` turns them into the answer shape."""

    task = "regression"
    _classes: list[Any]

    def postprocess(self, outputs: tuple[Any, Any], request: PredictRequest) -> list[Any]:
        values, probabilities = outputs
        if self.task == "regression":
            return format_regression(values.tolist())
        return format_classification(
            [] if values is None else values.tolist(),
            None if probabilities is None else probabilities.tolist(),
            self._classes,
            request.output,
        )


class SklearnPredictor(TabularPredictor):
    """A fitted scikit-learn estimator or ``Pipeline`` (preprocessor + estimator) from joblib.

    For a ``Pipeline`` the preprocessing steps run once per request and the final estimator
    is then asked for labels and/or probabilities on the transformed batch. That is exactly
    what ``Pipeline.predict`` and ``Pipeline.predict_proba`` do internally, so the answers
    are identical, but ``output="both"`` costs one preprocessing pass instead of two; with a
    ``ColumnTransformer`` on pandas input that pass is nearly all of the model's time.
    """

    def __init__(self) -> None:
        self._transform: Any = None
        self._estimator: Any = None
        self._classes: list[Any] = []
        self._numeric: dict[str, bool] = {}

    def load(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        import joblib

        import_model_libraries(manifest)
        model = joblib.load(model_dir / manifest["model_file"])
        steps = getattr(model, "steps", None)
        if steps is not None:
            self._transform = model[:-1] if len(steps) > 1 else None
            self._estimator = model[-1]
        else:
            self._estimator = model
        self.task = manifest["task"]
        names = [feature["name"] for feature in manifest["features"]]
        fitted_names = getattr(model, "feature_names_in_", None)
        if fitted_names is not None and list(fitted_names) != names:
            raise ModelLoadError(
                f"the model was fitted on features {list(fitted_names)} but the manifest "
                f"lists {names}; re-export the model"
            )
        if not hasattr(self._estimator, "predict"):
            raise ModelLoadError(f"{type(self._estimator).__name__} has no predict() method")
        probabilities = False
        if self.task == "classification":
            classes = getattr(model, "classes_", None)
            self._classes = [] if classes is None else classes.tolist()
            if self._classes != manifest["target_classes"]:
                raise ModelLoadError(
                    f"the model's classes {self._classes} differ from the manifest's "
                    f"target_classes {manifest['target_classes']}; re-export the model"
                )
            probabilities = hasattr(self._estimator, "predict_proba")
        self.schema = Schema.from_manifest(manifest, probabilities)
        self._numeric = {feature.name: feature.numeric for feature in self.schema.features}

    def preprocess(self, request: PredictRequest) -> Any:
        """A DataFrame shaped like the trainer's: numeric columns float64 (null -> NaN),
        categorical columns object dtype with ``None`` for null."""
        import numpy as np
        import pandas as pd

        index = pd.RangeIndex(request.count)
        data: dict[str, Any] = {}
        for name, values in request.columns.items():
            if self._numeric[name]:
                data[name] = np.array(values, dtype=np.float64)
            else:  # explicit object dtype: pandas 3 would otherwise infer "str" (None -> NaN)
                data[name] = pd.Series(values, index=index, dtype=object)
        frame = pd.DataFrame(data, index=index, copy=False)
        return frame if self._transform is None else self._transform.transform(frame)

    def predict(self, inputs: Any, request: PredictRequest) -> tuple[Any, Any]:
        """``(labels or values, probabilities)``; each is None when the output does not use it."""
        if self.task == "regression":
            return self._estimator.predict(inputs), None
        labels = None if request.output == "probabilities" else self._estimator.predict(inputs)
        probabilities = None if request.output == "label" else self._estimator.predict_proba(inputs)
        return labels, probabilities


class CompiledPredictor(TabularPredictor):
    """The pipeline compiled at export (``model.onnx``, see ``compiled``), run with onnxruntime
    on arrays built straight from the request's columns: scikit-learn's answers (verified at
    export, self-checked at load) at microseconds per call instead of milliseconds."""

    _graph: CompiledGraph

    def load(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        path = model_dir / manifest["compiled"]["model_file"]
        try:
            self._graph = CompiledGraph(path, manifest["features"], manifest["task"])
        except GraphError as exc:
            raise ModelLoadError(str(exc)) from None
        self.task = manifest["task"]
        self._classes = list(manifest.get("target_classes") or [])
        self.schema = Schema.from_manifest(manifest)

    def preprocess(self, request: PredictRequest) -> dict[str, Any]:
        return self._graph.feed(request.columns)

    def predict(self, inputs: dict[str, Any], request: PredictRequest) -> tuple[Any, Any]:
        return self._graph.predict(inputs, request.output)


TENSORFLOW_MISSING_STRING = ""
"""What a null categorical value becomes in a TensorFlow model's string input: the
``StringLookup`` mask token, which its one-hot encoding maps to all zeros."""


def tensorflow_feed(
    columns: dict[str, list[Any]], numeric: dict[str, bool], input_names: dict[str, str]
) -> dict[str, Any]:
    """Feature columns (JSON values, ``None`` for null) as the SavedModel signature's keyword
    arguments: ``(n, 1)`` float64 tensors (null -> NaN, imputed inside the model) and
    ``(n, 1)`` string tensors (null -> ``TENSORFLOW_MISSING_STRING``), keyed by input name.

    The trainer feeds its evaluation rows through this same function, so serving cannot
    encode a request differently from how the expected predictions were computed.
    """
    import numpy as np
    import tensorflow as tf

    feed = {}
    for name, values in columns.items():
        if numeric[name]:
            array = np.array(values, dtype=np.float64).reshape(-1, 1)
            feed[input_names[name]] = tf.constant(array, dtype=tf.float64)
        else:
            strings = [TENSORFLOW_MISSING_STRING if v is None else v for v in values]
            array = np.array(strings, dtype=object).reshape(-1, 1)
            feed[input_names[name]] = tf.constant(array, dtype=tf.string)
    return feed


def tensorflow_device() -> str:
    """``"GPU"`` when TensorFlow sees one (memory growth turned on, so that several server
    workers can share it instead of the first taking all its memory), else ``"CPU"``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: already initialised in this process; keep its setting.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "GPU" if gpus else "CPU"


class TensorFlowPredictor(Predictor):
    """A TensorFlow SavedModel written by ``components/training/keras_model.py``.

    The SavedModel's ``serving_default`` signature takes one ``(n, 1)`` tensor per feature
    (raw values; imputation, normalisation and category lookup are layers in its graph) and
    returns class probabilities (classification; the label is the most probable class, in
    ``target_classes`` order as sklearn's ``predict`` breaks ties) or the predicted value.
    The model computes in float64, so a request answers the same to ~1e-15 whatever the batch
    size, CPU or kernel choice. Loading needs only ``tensorflow`` (no Keras layer classes).
    """

    def __init__(self) -> None:
        self._loaded: Any = None
        self._function: Any = None
        self._inputs: dict[str, str] = {}
        self._output = ""
        self._classes: list[Any] = []
        self.task = "regression"
        self._numeric: dict[str, bool] = {}

    def load(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        import tensorflow as tf

        device = tensorflow_device()
        log.info(
            f"TensorFlow {tf.__version__} runs the model on {device}",
            extra=log_fields(device=device, tensorflow=tf.__version__),
        )
        spec = manifest.get("tensorflow") or {}
        names = [feature["name"] for feature in manifest["features"]]
        self._inputs = dict(spec.get("inputs") or {name: name for name in names})
        if sorted(self._inputs) != sorted(names):
            raise ModelLoadError(
                f"the manifest's tensorflow.inputs name features {sorted(self._inputs)} but its "
                f"features are {names}; re-export the model"
            )
        self._loaded = tf.saved_model.load(str(model_dir / manifest["model_file"]))
        signature = spec.get("signature", "serving_default")
        if signature not in self._loaded.signatures:
            raise ModelLoadError(
                f"the SavedModel has no signature {signature!r} (it has "
                f"{sorted(self._loaded.signatures)}); re-export the model"
            )
        self._function = self._loaded.signatures[signature]
        accepted = sorted(self._function.structured_input_signature[1])
        if accepted != sorted(self._inputs.values()):
            raise ModelLoadError(
                f"signature {signature!r} takes inputs {accepted} but the manifest maps the "
                f"features to {sorted(self._inputs.values())}; re-export the model"
            )
        outputs = sorted(self._function.structured_outputs)
        self._output = spec.get("output", outputs[0] if len(outputs) == 1 else "")
        if self._output not in outputs:
            raise ModelLoadError(
                f"signature {signature!r} has outputs {outputs}, not {self._output!r}; "
                "re-export the model"
            )
        self.task = manifest["task"]
        self._classes = list(manifest.get("target_classes") or [])
        self.schema = Schema.from_manifest(manifest)
        self._numeric = {feature.name: feature.numeric for feature in self.schema.features}

    def preprocess(self, request: PredictRequest) -> dict[str, Any]:
        return tensorflow_feed(request.columns, self._numeric, self._inputs)

    def predict(self, inputs: dict[str, Any], request: PredictRequest) -> Any:
        """The model's output as a float64 array: rows x classes, or rows x 1."""
        return self._function(**inputs)[self._output].numpy()

    def postprocess(self, outputs: Any, request: PredictRequest) -> list[Any]:
        if self.task == "regression":
            return format_regression(outputs.reshape(-1).tolist())
        if outputs.shape[1] != len(self._classes):
            raise ValueError(
                f"the model gives {outputs.shape[1]} probabilities per row for "
                f"{len(self._classes)} target classes"
            )
        labels = [self._classes[index] for index in outputs.argmax(axis=1).tolist()]
        return format_classification(labels, outputs.tolist(), self._classes, request.output)


PREDICTORS: dict[str, type[Predictor]] = {
    "scikit-learn": SklearnPredictor,
    "tensorflow": TensorFlowPredictor,
}
"""Predictor class by the manifest's ``framework``."""


MODEL_LIBRARY_MODULES = {"xgboost": "xgboost", "lightgbm": "lightgbm"}
"""The module of each optional model library a scikit-learn model's manifest may record
(``libraries``), by that name: the build installs them only for a model that records them
(``components/imaging/plan.py``'s ``MODEL_LIBRARIES``, which must name the same)."""


def import_model_libraries(manifest: dict[str, Any]) -> None:
    """Import the optional model libraries the manifest records, before unpickling needs them.

    Raises:
        ModelLoadError: one is missing from this image or cannot be imported, naming it and
            the version the model needs, instead of unpickling's bare ``ModuleNotFoundError``.
    """
    libraries = manifest.get("libraries") or {}
    for name, module in MODEL_LIBRARY_MODULES.items():
        if name not in libraries:
            continue
        needs = f"the model needs {name} {libraries[name]}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the library is there, one of its own imports is not
                raise ModelLoadError(
                    f"{needs}, which cannot be imported in this image ({exc}): rebuild it with "
                    "build_image"
                ) from None
            raise ModelLoadError(
                f"{needs}, which this image does not have: rebuild it with build_image"
            ) from None
        except (ImportError, OSError) as exc:  # e.g. LightGBM without the system's libgomp
            raise ModelLoadError(
                f"{needs}, which cannot be imported in this image ({type(exc).__name__}: "
                f"{exc}): rebuild it with build_image"
            ) from None


SKLEARN_MODULES = (
    "numpy",
    "pandas",
    "joblib",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.pipeline",
    "sklearn.preprocessing",
)
"""What unpickling a scikit-learn pipeline of ours imports, besides its estimator's module."""


def preimport(model_source: str, choice: str = AUTO) -> list[str]:
    """Import what loading the scikit-learn model in the local directory ``model_source``
    will need, so that processes forked afterwards share it; return the modules imported.

    Nothing for a ``gs://`` source (not downloaded yet), another framework (TensorFlow's
    runtime is not safe to fork once started), a model whose compiled graph will serve
    (``choice``, ``SERVING_PREDICTOR``'s value: each worker imports onnxruntime itself, as it
    starts threads when imported) or a manifest it cannot read (the workers' load reports
    why, with health at 503); only ``sklearn`` modules and the model libraries it records
    (``MODEL_LIBRARY_MODULES``; importing one starts no thread) are taken from it.
    """
    directory = Path(model_source)
    if model_source.startswith("gs://") or not directory.is_dir():
        return []
    try:
        manifest = artifact.read_manifest(directory)
    except artifact.ManifestError:  # the workers' load reports it, with health at 503
        return []
    if manifest["framework"] != "scikit-learn":
        return []
    if _why_not_compiled(manifest, choice) is None:
        return []
    estimator = str((manifest.get("estimator") or {}).get("class", ""))
    modules = list(SKLEARN_MODULES)
    if estimator.startswith("sklearn."):
        modules.append(estimator.rpartition(".")[0])
    libraries = manifest.get("libraries") or {}
    modules += [module for name, module in MODEL_LIBRARY_MODULES.items() if name in libraries]
    imported = []
    for name in modules:
        # OSError: a library's shared object that does not load; the workers' load says so.
        with contextlib.suppress(ImportError, OSError):
            importlib.import_module(name)
            imported.append(name)
    return imported


def load_predictor(model_dir: Path, choice: str = AUTO) -> tuple[Predictor, dict[str, Any]]:
    """Verify, load and self-check the model in ``model_dir`` on the path ``choice``
    (``SERVING_PREDICTOR``) asks for; return it and a load summary, whose ``predictor``,
    ``predictor_reason`` and ``fallback`` say which path serves and why.

    ``auto`` serves the compiled graph when the export verified one and it passes its own
    checks here (sha256, inputs, self-check), else the framework's predictor; a graph that
    fails a check is a fallback (``fallback`` true, the reason kept), not a failed load.
    ``compiled`` fails the load instead; ``scikit-learn`` never opens the graph.

    Raises:
        ModelLoadError: anything that makes the model unservable, with the reason.
    """
    started = time.perf_counter()
    try:
        manifest = artifact.read_manifest(model_dir)
    except artifact.ManifestError as exc:
        raise ModelLoadError(str(exc)) from None
    framework = manifest["framework"]
    if framework not in PREDICTORS:
        raise ModelLoadError(
            f"framework {framework!r} is not served by this image; it serves {sorted(PREDICTORS)}"
        )
    if choice == SCIKIT_LEARN and framework != SCIKIT_LEARN:
        raise ModelLoadError(
            f"SERVING_PREDICTOR=scikit-learn but the model is a {framework} model; unset "
            "SERVING_PREDICTOR to serve it"
        )
    _check_file(model_dir, manifest)  # whichever path serves: a corrupt artifact is not served
    reason, fallback = _why_not_compiled(manifest, choice), False
    if reason is None:
        graph_remedy = "re-export the model, or serve it with SERVING_PREDICTOR=scikit-learn"
        try:
            _check_file(model_dir, manifest["compiled"])
            predictor = CompiledPredictor()
            checks = _load_checked(predictor, model_dir, manifest, graph_remedy)
        except ModelLoadError as exc:
            if choice == COMPILED:
                raise ModelLoadError(f"SERVING_PREDICTOR=compiled but {exc}") from None
            reason, fallback = f"the compiled graph failed its check at load: {exc}", True
        else:
            reason, framework = "verified at export and by the self-check", COMPILED
    elif choice == COMPILED:
        raise ModelLoadError(f"SERVING_PREDICTOR=compiled but {reason}")
    if framework != COMPILED:
        predictor = PREDICTORS[framework]()
        remedy = (
            f"the serving image's libraries may differ from training's "
            f"{manifest.get('libraries', {})}; rebuild the image with those versions"
        )
        checks = _load_checked(predictor, model_dir, manifest, remedy)
    return predictor, {
        "model_dir": str(model_dir),
        "framework": manifest["framework"],
        "predictor": framework,
        "predictor_reason": reason,
        "fallback": fallback,
        "task": manifest["task"],
        "features": len(manifest["features"]),
        "self_checked_instances": checks[0],
        "load_seconds": round(time.perf_counter() - started, 3),
        "self_check_seconds": round(checks[1], 3),
    }


def _why_not_compiled(manifest: dict[str, Any], choice: str) -> str | None:
    """Why the compiled graph is not tried (None: it is)."""
    if choice == SCIKIT_LEARN:
        return "SERVING_PREDICTOR=scikit-learn"
    compiled = manifest.get("compiled")
    if not isinstance(compiled, dict):
        return "the model was exported without a compiled graph (by a trainer before compiling)"
    if compiled.get("status") != VERIFIED:
        return (
            f"the export did not ship a compiled graph ({compiled.get('status')}: "
            f"{compiled.get('reason')})"
        )
    if not all(isinstance(compiled.get(key), str) for key in ("model_file", "model_sha256")):
        return f"the manifest's compiled entry names no model_file and model_sha256: {compiled}"
    return None


def _check_file(model_dir: Path, entry: dict[str, Any]) -> None:
    """``entry``'s ``model_file`` (the manifest's, or its ``compiled`` entry's) must be in
    ``model_dir`` and hash to its ``model_sha256``: checked before any unpickling."""
    model_file = entry["model_file"]
    model_path = model_dir / model_file
    if Path(model_file).name != model_file or not model_path.exists():
        raise ModelLoadError(f"model file {model_file!r} not found in {model_dir}")
    actual = artifact.sha256_path(model_path)
    if actual != entry["model_sha256"]:
        raise ModelLoadError(
            f"{model_path} has sha256 {actual} but {artifact.MANIFEST_FILE} says "
            f"{entry['model_sha256']}: the file changed after export (corrupt or tampered "
            "copy); refusing to unpickle or load it. Re-export or re-upload the model directory"
        )


def _load_checked(
    predictor: Predictor, model_dir: Path, manifest: dict[str, Any], remedy: str
) -> tuple[int, float]:
    """Load ``predictor`` (its file checked) and self-check it; return the instances checked
    and the seconds the self-check took. ``remedy`` ends a failure's message."""
    try:
        predictor.load(model_dir, manifest)
    except ModelLoadError:
        raise
    except Exception as exc:  # unpickling can raise anything (missing module, version skew)
        raise ModelLoadError(
            f"cannot load the model in {model_dir} ({type(exc).__name__}: {exc}); {remedy}"
        ) from exc
    checking = time.perf_counter()
    return _self_check(predictor, model_dir, remedy), time.perf_counter() - checking


def _self_check(predictor: Predictor, model_dir: Path, remedy: str) -> int:
    """Predict the exported sample instances (objects, and the edge instances also as lists)
    and compare with the exported predictions."""
    sample_path = model_dir / artifact.INSTANCES_FILE
    expected_path = model_dir / artifact.EXPECTED_FILE
    if not (sample_path.is_file() and expected_path.is_file()):
        raise ModelLoadError(
            f"{model_dir} lacks {artifact.INSTANCES_FILE} or {artifact.EXPECTED_FILE}; the "
            "server needs them to verify the model before serving it (the train component "
            "writes both)"
        )
    instances, expected, _ = artifact.read_sample(model_dir)
    answers: list[Any] = []
    try:  # one request per run of one form: objects and lists never share a request
        for _, run in itertools.groupby(instances, key=type):
            body = orjson.dumps({"instances": list(run)})
            answers += predictor(parse_predict_request(body, predictor.schema))
    except RequestError as exc:
        raise ModelLoadError(
            f"{artifact.INSTANCES_FILE} does not fit the manifest's schema: {exc.message}"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"the model fails on its own sample instances ({type(exc).__name__}: {exc})"
        ) from exc
    if len(answers) != len(expected):
        raise ModelLoadError(
            f"{artifact.EXPECTED_FILE} has {len(expected)} rows for {len(instances)} instances"
        )
    for row, (got, want) in enumerate(zip(answers, expected, strict=True)):
        if (
            json_difference(want, got, rel_tol=SELF_CHECK_REL_TOL, abs_tol=SELF_CHECK_ABS_TOL)
            is not None
        ):
            raise ModelLoadError(
                f"self-check failed on sample instance {row}: predicted {got}, exported "
                f"{want}; {remedy}"
            )
    return len(answers)

"""Package a model file trained elsewhere: find it, unpickle it, read its sample, export it.

What the ``package_model`` component runs: ``model_path`` is a joblib/pickle file or a
directory holding exactly one (a KFP ``Model`` artifact), ``sample_path`` a CSV or Parquet
table or a directory holding exactly one (a KFP ``Dataset``). A ``gs://`` URI is read through
Vertex's Cloud Storage FUSE mount (``/gcs/<bucket>/...``). Each refusal is an ``ExportError``
that says what to do; then ``export.export_model`` checks the model and writes the artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.training.export import TrainingResult, export_model
from components.training.external import ExportError
from components.training.inputs import SUPPORTED_SUFFIXES, TrainingInputError, load_table

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
KERAS_SUFFIXES = (".keras", ".h5")
EXTRAS = {"lightgbm": "boosting", "xgboost": "boosting"}
"""The project extra that installs a library models may need to unpickle, by module."""


def fuse_path(uri: str) -> str:
    """``gs://bucket/path`` as Vertex mounts it (``/gcs/bucket/path``); anything else as is."""
    return "/gcs/" + uri[len("gs://") :] if uri.startswith("gs://") else uri


def one_source(artifact_path: str, uri: str, name: str) -> str:
    """The one location given for input ``name``: the input artifact's path or ``<name>_uri``.

    Raises:
        ExportError: both or neither given.
    """
    if artifact_path and uri:
        raise ExportError(
            f"both {name} (an input artifact) and {name}_uri={uri!r} are given; pass one"
        )
    if not (artifact_path or uri):
        raise ExportError(f"no {name}: pass the {name} input artifact or {name}_uri")
    return artifact_path or uri


def model_file(model_path: str) -> Path:
    """The model file at ``model_path``, or the one model file in that directory."""
    path = Path(fuse_path(model_path))
    keras = "not supported by package_model yet; export it with train(framework='tensorflow')"
    if path.suffix.lower() in KERAS_SUFFIXES or (path / "saved_model.pb").is_file():
        raise ExportError(f"{model_path!r} is a Keras model: {keras}")
    if not path.exists():
        mounted = f" (read at {path})" if str(path) != model_path else ""
        raise ExportError(f"no such model file or directory: {model_path!r}{mounted}")
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES)
        if len(found) != 1:
            held = sorted(p.name for p in path.iterdir())
            raise ExportError(
                f"{model_path!r} holds {len(found)} model files {found} (all: {held}); it "
                f"must hold exactly one {'/'.join(MODEL_SUFFIXES)} file, or pass that file"
            )
        return path / found[0]
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ExportError(
            f"{model_path!r} is not a model file package_model reads: the name must end in "
            f"{', '.join(MODEL_SUFFIXES)} (a joblib or pickle dump of a fitted model)"
        )
    return path


def load_model(path: Path) -> Any:
    """Unpickle the model at ``path``, naming a missing module and the extra that installs it."""
    import joblib

    try:
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(module)
        install = f"pip install 'train-to-serve[{extra}]'" if extra else f"install {module} (pip)"
        raise ExportError(
            f"cannot unpickle {path}: the model needs module {module!r}, which is not "
            f"installed; {install}"
        ) from None
    except Exception as exc:  # a corrupt file, a version skew, not a pickle at all
        raise ExportError(
            f"cannot unpickle {path} ({type(exc).__name__}: {exc}); it must be a joblib or "
            "pickle dump of a fitted model, made with compatible library versions"
        ) from None


def table_file(sample_path: str) -> str:
    """The table at ``sample_path``, or the one CSV/Parquet file in that directory."""
    path = Path(fuse_path(sample_path))
    if not path.is_dir():
        return str(path)
    found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES)
    if len(found) != 1:
        raise ExportError(
            f"{sample_path!r} holds {len(found)} tables {found}; it must hold exactly one "
            ".csv or .parquet file, or pass that file"
        )
    return str(path / found[0])


def package_model(
    model_path: str | Path,
    sample_path: str | Path,
    model_dir: str | Path,
    *,
    target: str = "",
    task: str = "",
) -> TrainingResult:
    """Export a model file trained elsewhere as the artifact ``train`` writes.

    Args:
        model_path: a ``.joblib``/``.pkl``/``.pickle`` file of a fitted scikit-learn-API
            model (``export_model`` says which), or a directory holding exactly one; a
            ``gs://`` URI is read at ``/gcs/...``.
        sample_path: a CSV or Parquet table of raw feature rows (and maybe the ``target``
            column), or a directory holding exactly one.
        model_dir: directory to write the artifact into.
        target: the label column in the sample, if it has one (its rows give the metrics).
        task: ``"classification"``, ``"regression"`` or empty to infer it from the model.

    Raises:
        ExportError: what cannot be packaged, and what to do.
    """
    path = model_file(str(model_path))
    table = table_file(str(sample_path))
    try:
        sample, _ = load_table(table)
    except TrainingInputError as exc:
        raise ExportError(f"sample: {exc}") from None
    model = load_model(path)
    return export_model(
        model,
        sample,
        model_dir,
        target=target,
        task=task or None,
        data=f"external: {model_path}",
    )

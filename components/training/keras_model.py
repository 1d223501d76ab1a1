"""The TensorFlow fit step: a Keras model with its preprocessing inside.

``make_keras_fitter`` checks the hyper-parameters (before any training) and returns the fit
step ``export.train_and_export`` runs for ``framework="tensorflow"``; everything else
(reading, checks, split, feature schema, metrics, sample export, manifest) is shared with
scikit-learn.

The model takes raw feature values, one named ``(n, 1)`` input per feature, and does its
own preprocessing with layers fitted on the training rows:

* numeric (float64): NaN -> the training mean (``ImputeMissing``), then ``Normalization``
  adapted on the training values;
* categorical (string): ``StringLookup`` one-hot over the categories seen in training; a null
  arrives as the mask token ``""`` and becomes all zeros, a category never seen in training
  the out-of-vocabulary slot (as scikit-learn's ``handle_unknown="ignore"`` plus a flag);

then dense ReLU layers and a softmax over ``target_classes`` (classification) or one linear
unit rescaled to the target's mean and spread (regression). Every layer computes in float64:
served answers then match ``expected_predictions.jsonl`` to ~1e-15 whatever the batch size or
CPU (float32 kernels differ by a few ulps between batch sizes and instruction sets, more than
the server's 1e-7 self-check tolerance). Training is seeded (``keras.utils.set_random_seed``,
op determinism) and takes a few seconds on a CPU.

Export format: a SavedModel directory (``saved_model/``, written with ``Model.export``), chosen
over a ``.keras`` file for portability at an equal load cost (README, "train"): plain
TensorFlow loads it with none of our code and its ``serving_default`` signature never
re-traces. The manifest's ``model_sha256`` covers the whole directory
(``artifact.sha256_path``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.training.fitting import FittedModel, Fitter, NotCompilable
from components.training.inputs import TrainingInputError
from serving_image.server import artifact
from serving_image.server.predictor import TENSORFLOW_MISSING_STRING, tensorflow_feed

ESTIMATORS = ("mlp",)
"""Model names for ``estimator`` (``"auto"`` is ``"mlp"``)."""
HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 32,
    "learning_rate": 0.01,
    "hidden_units": [16],
}
"""Accepted hyper-parameters and their defaults."""
SIGNATURE = "serving_default"
OUTPUT = "output_0"
"""The output name ``Model.export`` gives the model's single output."""


def _check_hyperparameters(given: dict[str, Any]) -> dict[str, Any]:
    """The effective hyper-parameters; raise ``TrainingInputError`` naming a bad one."""
    unknown = sorted(set(given) - set(HYPERPARAMETERS))
    if unknown:
        raise TrainingInputError(
            f"unknown hyper-parameter(s) {unknown} for the TensorFlow model 'mlp'; valid "
            f"names: {sorted(HYPERPARAMETERS)}"
        )
    params = {**HYPERPARAMETERS, **given}
    for name in ("epochs", "batch_size"):
        value = params[name]
        if type(value) is not int or value < 1:
            raise TrainingInputError(f"{name} must be a positive integer, got {value!r}")
    rate = params["learning_rate"]
    if type(rate) not in (int, float) or not rate > 0:
        raise TrainingInputError(f"learning_rate must be a positive number, got {rate!r}")
    units = params["hidden_units"]
    if not isinstance(units, list) or any(type(u) is not int or u < 1 for u in units):
        raise TrainingInputError(
            f"hidden_units must be a list of positive integers (units per hidden layer, [] for "
            f"none), got {units!r}"
        )
    return {**params, "learning_rate": float(rate), "hidden_units": list(units)}


def input_names(features: list[str]) -> dict[str, str]:
    """A SavedModel input name per feature: the name with characters other than letters,
    digits and ``_`` replaced by ``_`` (signature arguments must be identifiers), made
    unique with the feature's index where two collide."""
    names: dict[str, str] = {}
    for index, feature in enumerate(features):
        name = re.sub(r"\W", "_", feature, flags=re.ASCII)
        if not name or not (name[0].isalpha() or name[0] == "_"):
            name = f"f_{name}"
        if name in names.values():
            name = f"{name}_{index}"
        names[feature] = name
    return names


def _columns(frame: Any, schema: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A frame's feature columns as JSON-like lists (``None`` for null, categories as text),
    i.e. what the server's request validation hands to the predictor."""
    columns = {}
    for feature in schema:
        values = frame[feature["name"]]
        if feature["kind"] == "numeric":
            columns[feature["name"]] = values.astype("float64").tolist()
        else:
            columns[feature["name"]] = [
                None if value is None or value != value else str(value) for value in values
            ]
    return columns


def make_keras_fitter(
    task: str, estimator: str, hyperparameters: dict[str, Any], seed: int
) -> Fitter:
    """Check the model name and hyper-parameters now; build and fit the Keras model later."""
    if estimator not in ("auto", *ESTIMATORS):
        raise TrainingInputError(
            f"unknown estimator {estimator!r} for the TensorFlow framework; choose one of "
            f"{['auto', *ESTIMATORS]}"
        )
    params = _check_hyperparameters(hyperparameters)

    def fit(schema: list[dict[str, Any]], x_train: Any, y_train: Any) -> FittedModel:
        return KerasModel.fit(task, schema, x_train, y_train, params, seed)

    return fit


def _impute_layer_class() -> type:
    """``ImputeMissing`` (defined on first use: Keras is imported lazily)."""
    import keras
    import tensorflow as tf

    class ImputeMissing(keras.layers.Layer):
        """Replace NaN with a constant (the feature's training mean)."""

        def __init__(self, value: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.value = float(value)

        def call(self, inputs: Any) -> Any:
            return tf.where(tf.math.is_nan(inputs), tf.constant(self.value, inputs.dtype), inputs)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "value": self.value}

    return ImputeMissing


def _build(
    task: str,
    schema: list[dict[str, Any]],
    names: dict[str, str],
    columns: dict[str, list[Any]],
    y_train: Any,
    classes: list[Any],
    params: dict[str, Any],
) -> Any:
    """The functional Keras model, preprocessing layers adapted on the training columns."""
    import keras
    import numpy as np

    impute_missing = _impute_layer_class()
    dtype = "float64"
    inputs, encoded = {}, []
    for feature in schema:
        name, key = feature["name"], names[feature["name"]]
        if feature["kind"] == "numeric":
            tensor = keras.Input(shape=(1,), name=key, dtype=dtype)
            values = np.array(columns[name], dtype=np.float64)
            seen = values[~np.isnan(values)].reshape(-1, 1)
            normalize = keras.layers.Normalization(name=f"normalize_{key}", dtype=dtype)
            normalize.adapt(seen)
            mean = float(seen.mean())
            imputed = impute_missing(mean, name=f"impute_{key}", dtype=dtype)(tensor)
            encoded.append(normalize(imputed))
        else:
            tensor = keras.Input(shape=(1,), name=key, dtype="string")
            lookup = keras.layers.StringLookup(
                vocabulary=feature["categories"],
                mask_token=TENSORFLOW_MISSING_STRING,
                num_oov_indices=1,
                output_mode="one_hot",
                name=f"one_hot_{key}",
                dtype=dtype,
            )
            encoded.append(lookup(tensor))
        inputs[key] = tensor
    hidden = keras.layers.Concatenate(name="features", dtype=dtype)(encoded)
    for index, units in enumerate(params["hidden_units"]):
        hidden = keras.layers.Dense(units, activation="relu", name=f"hidden_{index}", dtype=dtype)(
            hidden
        )
    if task == "classification":
        output = keras.layers.Dense(
            len(classes), activation="softmax", name="probabilities", dtype=dtype
        )(hidden)
        loss = "sparse_categorical_crossentropy"
    else:
        target = np.asarray(y_train, dtype=np.float64)
        scaled = keras.layers.Dense(1, name="standardized", dtype=dtype)(hidden)
        output = keras.layers.Rescaling(
            scale=float(target.std()) or 1.0,
            offset=float(target.mean()),
            name="value",
            dtype=dtype,
        )(scaled)
        loss = "mean_squared_error"
    model = keras.Model(inputs, output, name=f"train_to_serve_{task}")
    model.compile(optimizer=keras.optimizers.Adam(params["learning_rate"]), loss=loss)
    return model


class KerasModel(FittedModel):
    """A fitted Keras model, exported at once to a SavedModel that all predictions then use.

    ``predict``/``predict_proba`` call the exported ``serving_default`` signature through the
    server's own input encoding (``predictor.tensorflow_feed``), so the evaluation metrics
    and ``expected_predictions.jsonl`` are what the saved artifact computes.
    """

    def __init__(
        self,
        task: str,
        schema: list[dict[str, Any]],
        names: dict[str, str],
        classes: list[Any],
        params: dict[str, Any],
        export: tempfile.TemporaryDirectory[str],
    ) -> None:
        import tensorflow as tf

        self.task = task
        self.schema = schema
        self.names = names
        self.classes = classes
        self.params = params
        self._export = export
        self._saved = Path(export.name) / "saved_model"
        self._loaded = tf.saved_model.load(str(self._saved))
        self._function = self._loaded.signatures[SIGNATURE]
        self._numeric = {f["name"]: f["kind"] == "numeric" for f in schema}

    @classmethod
    def fit(
        cls,
        task: str,
        schema: list[dict[str, Any]],
        x_train: Any,
        y_train: Any,
        params: dict[str, Any],
        seed: int,
    ) -> KerasModel:
        """Build, fit (seeded, deterministic ops) and export the model."""
        import keras
        import numpy as np
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        names = input_names([f["name"] for f in schema])
        columns = _columns(x_train, schema)
        classes = sorted(set(y_train.tolist())) if task == "classification" else []
        if classes:
            index = {cls_: i for i, cls_ in enumerate(classes)}
            target = np.array([index[value] for value in y_train.tolist()], dtype=np.int64)
        else:
            target = np.asarray(y_train, dtype=np.float64)
        model = _build(task, schema, names, columns, target, classes, params)
        feed = tensorflow_feed(columns, {f["name"]: f["kind"] == "numeric" for f in schema}, names)
        batches = (
            tf.data.Dataset.from_tensor_slices((feed, target))
            .shuffle(len(target), seed=seed)
            .batch(params["batch_size"])
        )
        model.fit(batches, epochs=params["epochs"], shuffle=False, verbose=0)  # shuffled above
        export = tempfile.TemporaryDirectory(prefix="tts-keras-export-")
        model.export(str(Path(export.name) / "saved_model"), format="tf_saved_model", verbose=False)
        return cls(task, schema, names, classes, params, export)

    def _outputs(self, frame: Any) -> Any:
        feed = tensorflow_feed(_columns(frame, self.schema), self._numeric, self.names)
        return self._function(**feed)[OUTPUT].numpy()

    def predict(self, frame: Any) -> Any:
        import numpy as np

        outputs = self._outputs(frame)
        if self.task == "regression":
            return outputs.reshape(-1)
        return np.array([self.classes[i] for i in outputs.argmax(axis=1).tolist()])

    def predict_proba(self, frame: Any) -> Any:
        return self._outputs(frame)

    def save(self, model_dir: Path) -> str:
        target = model_dir / artifact.TENSORFLOW_MODEL_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self._saved, target)
        return artifact.TENSORFLOW_MODEL_DIR

    def onnx_graph(self, schema: list[dict[str, Any]]) -> Any:
        raise NotCompilable(
            "framework",
            "TensorFlow models are not compiled: the SavedModel is already one graph with its "
            "preprocessing inside, and TensorFlow serves it",
        )

    def manifest_fields(self) -> dict[str, Any]:
        import keras
        import numpy as np
        import pandas as pd
        import tensorflow as tf

        return {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "libraries": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "pandas": pd.__version__,
            },
            "estimator": {"name": "mlp", "class": "keras.Model", "hyperparameters": self.params},
            "tensorflow": {
                "format": "SavedModel",
                "signature": SIGNATURE,
                "inputs": self.names,
                "output": OUTPUT,
                "dtype": "float64",
            },
        }

"""TensorFlow models: train and export (kfp.local), reproduction in a fresh process, serving.

The train component runs with ``framework="tensorflow"`` through kfp.local on the penguins
data; the exported SavedModel is then reloaded by plain TensorFlow in a new interpreter, and
served by the real server process (``python -m serving_image.server``) over HTTP.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from components.imaging.plan import check_library_versions, requirements_files
from components.training import TrainingInputError, train_and_export
from components.training.keras_model import input_names
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from serving_image.server.predictor import SELF_CHECK_REL_TOL
from tests.support import fresh_python
from tests.training.penguins import FEATURES, run_train_component

pytest.importorskip("tensorflow", reason="the project's tensorflow extra is not installed")


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the train component once through kfp.local with the TensorFlow framework."""
    return run_train_component(tmp_path_factory.mktemp("kfp_root_tf"), framework="tensorflow")


@pytest.fixture(scope="module")
def model_dir(kfp_run: dict) -> Path:
    return Path(kfp_run["model"].path)


def test_the_model_directory_holds_a_saved_model_and_its_manifest(
    kfp_run: dict, model_dir: Path
) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [
            artifact.TENSORFLOW_MODEL_DIR,
            artifact.MANIFEST_FILE,
            artifact.INSTANCES_FILE,
            artifact.EXPECTED_FILE,
        ]
    )
    saved = model_dir / artifact.TENSORFLOW_MODEL_DIR
    assert (saved / "saved_model.pb").is_file() and (saved / "variables").is_dir()
    manifest = artifact.read_manifest(model_dir)
    assert manifest["framework"] == "tensorflow"
    assert manifest["model_file"] == artifact.TENSORFLOW_MODEL_DIR
    assert manifest["model_sha256"] == artifact.sha256_path(saved)
    assert kfp_run["model"].metadata["framework"] == "tensorflow"
    assert kfp_run["model"].metadata["model_sha256"] == manifest["model_sha256"]
    assert set(manifest["libraries"]) >= {"tensorflow", "keras", "numpy"}
    assert manifest["framework_version"] == manifest["libraries"]["tensorflow"]
    assert manifest["compiled"]["status"] == "not_compiled"
    assert manifest["compiled"]["reason"].startswith("TensorFlow models are not compiled")
    assert manifest["target_classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert [f["name"] for f in manifest["features"]] == FEATURES
    assert manifest["estimator"]["name"] == "mlp"
    assert manifest["estimator"]["hyperparameters"]["epochs"] >= 1
    spec = manifest["tensorflow"]
    assert spec["signature"] == "serving_default" and spec["dtype"] == "float64"
    assert spec["inputs"] == {name: name for name in FEATURES}


def test_metrics_and_sample(kfp_run: dict, model_dir: Path) -> None:
    metrics = kfp_run["metrics"].metadata
    assert set(metrics) == {"accuracy", "f1_macro", "roc_auc"}
    assert metrics["accuracy"] >= 0.9
    matrix = kfp_run["classification_metrics"].metadata["confusionMatrix"]
    eval_rows = artifact.read_manifest(model_dir)["training"]["eval_rows"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == eval_rows
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    kinds = artifact.read_manifest(model_dir)["sample_kinds"]
    assert len(instances) == len(expected) == len(kinds) and kinds.count("evaluation") == 8
    assert all(list(instance) == FEATURES for instance in instances)
    for prediction in expected:
        probabilities = prediction["probabilities"]
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert max(probabilities, key=probabilities.get) == prediction["label"]


def test_the_checksum_covers_every_file_of_the_saved_model(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "saved"
    shutil.copytree(model_dir / artifact.TENSORFLOW_MODEL_DIR, copy)
    before = artifact.sha256_path(copy)
    (copy / "assets" / "extra.txt").parent.mkdir(exist_ok=True)
    (copy / "assets" / "extra.txt").write_text("x")
    assert artifact.sha256_path(copy) != before


def test_a_fresh_process_reproduces_the_expected_predictions(model_dir: Path) -> None:
    """Plain TensorFlow (no project code) loads the SavedModel and predicts the sample."""
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np, tensorflow as tf

        model_dir = sys.argv[1]
        manifest = json.load(open(f"{model_dir}/model_manifest.json"))
        instances = [json.loads(line) for line in open(f"{model_dir}/instances_sample.jsonl")]
        function = tf.saved_model.load(f"{model_dir}/saved_model").signatures["serving_default"]
        feed = {}
        for feature in manifest["features"]:
            values = [row[feature["name"]] for row in instances]
            if feature["kind"] == "numeric":
                tensor = tf.constant(np.array(values, dtype=np.float64).reshape(-1, 1))
            else:
                tensor = tf.constant([["" if v is None else v] for v in values])
            feed[manifest["tensorflow"]["inputs"][feature["name"]]] = tensor
        rows = function(**feed)[manifest["tensorflow"]["output"]].numpy().tolist()
        classes = manifest["target_classes"]
        for row in rows:
            label = classes[int(np.argmax(row))]
            print(json.dumps({"label": label, "probabilities": dict(zip(classes, row))}))
        """
    )
    printed = fresh_python(script, str(model_dir))
    got = [json.loads(line) for line in printed.splitlines()]
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    assert json_difference(expected, got, rel_tol=1e-12, abs_tol=1e-15) is None


def test_the_server_serves_the_tensorflow_model_over_http(model_dir: Path, start_server) -> None:
    server = start_server(model_dir, {"SERVING_WORKERS": "1"})
    server.wait_ready(timeout=180)
    device = server.wait_for_log(lambda e: "runs the model on" in e["message"])
    assert device["device"] == "CPU"
    assert sum("runs the model on" in e["message"] for e in server.logs()) == 1
    loaded = server.wait_for_log(lambda e: e["message"].startswith("model loaded"))
    assert loaded["framework"] == loaded["predictor"] == "tensorflow"
    assert loaded["self_checked_instances"] == len(artifact.read_sample(model_dir)[0])

    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    answer = server.predict({"instances": instances})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == expected  # the same batch: bit for bit
    for instance, want in zip(instances[:3], expected, strict=False):
        one = server.predict({"instances": [instance]}).json()["predictions"]
        assert json_difference([want], one, rel_tol=SELF_CHECK_REL_TOL) is None
    labels = server.predict({"instances": instances, "parameters": {"output": "label"}})
    assert labels.json()["predictions"] == [p["label"] for p in expected]
    as_lists = server.predict({"instances": [[row[f] for f in FEATURES] for row in instances]})
    assert as_lists.json()["predictions"] == expected

    # Nulls and a category never seen in training are handled inside the model.
    odd = {**instances[0], "island": None, "sex": "unknown", "body_mass_g": None}
    answer = server.predict({"instances": [odd]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] in {"Adelie", "Chinstrap", "Gentoo"}

    wrong_type = server.predict({"instances": [{**instances[0], "island": 3}]})
    assert wrong_type.status_code == 400
    assert wrong_type.json() == {
        "error": "instances[0]: feature 'island' expects a string or null, got number 3",
        "instance": 0,
    }
    missing = {k: v for k, v in instances[0].items() if k != "year"}
    answer = server.predict({"instances": [missing]})
    assert answer.status_code == 400 and "year" in answer.json()["error"]
    assert server.predict({"rows": instances}).status_code == 400
    assert server.health().status_code == 200


def test_regression_with_odd_feature_names(tmp_path: Path) -> None:
    from palmerpenguins import load_penguins

    frame = load_penguins().rename(columns={"flipper_length_mm": "flipper length (mm)"})
    path = tmp_path / "penguins.csv"
    frame.to_csv(path, index=False)
    result = train_and_export(
        str(path),
        tmp_path / "model",
        target="body_mass_g",
        task="regression",
        feature_columns=["species", "flipper length (mm)", "sex"],
        framework="tensorflow",
        hyperparameters={"epochs": 30},
    )
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.metrics["r2"] > 0.5
    inputs = result.manifest["tensorflow"]["inputs"]
    assert inputs["flipper length (mm)"] == "flipper_length__mm_"
    expected = artifact.read_jsonl(tmp_path / "model" / artifact.EXPECTED_FILE)
    assert all(isinstance(value, float) for value in expected)


def test_input_names_are_identifiers_and_unique() -> None:
    assert input_names(["a b", "a-b", "1st", "ok"]) == {
        "a b": "a_b",
        "a-b": "a_b_1",
        "1st": "f_1st",
        "ok": "ok",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "random_forest"}, "unknown estimator 'random_forest' for the TensorFlow"),
        ({"hyperparameters": {"layers": 2}}, "unknown hyper-parameter(s) ['layers']"),
        ({"hyperparameters": {"epochs": 0}}, "epochs must be a positive integer, got 0"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "learning_rate must be a positive"),
        ({"hyperparameters": {"hidden_units": [8, -1]}}, "hidden_units must be a list"),
    ],
)
def test_bad_tensorflow_arguments_stop_before_training(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(TrainingInputError) as caught:
        train_and_export("penguins", tmp_path / "model", framework="tensorflow", **kwargs)
    assert message in str(caught.value)
    assert not (tmp_path / "model").exists()


def test_unknown_framework(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="unknown framework 'pytorch'; choose one of"):
        train_and_export("penguins", tmp_path / "model", framework="pytorch")


def test_the_serving_image_pins_the_versions_training_uses(model_dir: Path) -> None:
    manifest = artifact.read_manifest(model_dir)
    files = requirements_files("tensorflow")
    assert [f.name for f in files] == ["requirements.txt", "requirements-tensorflow.txt"]
    versions = check_library_versions(manifest, files)
    assert set(versions) == {"tensorflow", "keras", "numpy"}
    gpu = files[0].parent / "requirements-tensorflow-gpu.txt"
    assert check_library_versions(manifest, [files[0], gpu]) == versions

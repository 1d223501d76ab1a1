"""The train-and-export component: artifacts, reproduction in a fresh process, bad inputs."""

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp import compiler
from palmerpenguins import load_penguins

from components.train import train
from components.training import METRICS, TrainingInputError, train_and_export
from serving_image.server import artifact
from tests.support import fresh_python
from tests.training.penguins import FEATURES, run_train_component


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the train component once through kfp.local on the bundled penguins data."""
    return run_train_component(tmp_path_factory.mktemp("kfp_root"))


def test_kfp_local_run_writes_the_model_directory(kfp_run: dict) -> None:
    model_dir = Path(kfp_run["model"].path)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [
            artifact.MODEL_FILE,
            artifact.ONNX_FILE,
            artifact.MANIFEST_FILE,
            artifact.INSTANCES_FILE,
            artifact.EXPECTED_FILE,
        ]
    )
    manifest = artifact.read_manifest(model_dir)
    assert manifest["compiled"]["status"] == "verified"
    assert manifest["compiled"]["model_sha256"] == artifact.sha256_file(
        model_dir / artifact.ONNX_FILE
    )
    assert manifest["framework"] == "scikit-learn"
    assert manifest["task"] == "classification"
    assert manifest["target"] == "species"
    assert manifest["target_classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert manifest["model_sha256"] == artifact.sha256_file(model_dir / artifact.MODEL_FILE)
    assert kfp_run["model"].metadata["model_sha256"] == manifest["model_sha256"]
    features = {f["name"]: f for f in manifest["features"]}
    assert list(features) == FEATURES
    assert features["island"]["kind"] == "categorical"
    assert features["island"]["categories"] == ["Biscoe", "Dream", "Torgersen"]
    assert features["bill_length_mm"]["kind"] == "numeric"
    assert features["sex"]["missing_in_training"] > 0
    training = manifest["training"]
    assert training["train_rows"] + training["eval_rows"] == training["rows"] == 344
    for key in ("python_version", "created_at"):
        assert manifest[key]
    assert set(manifest["libraries"]) >= {"scikit-learn", "numpy", "pandas", "joblib"}


def test_sample_instances_are_vertex_request_objects(kfp_run: dict) -> None:
    model_dir = Path(kfp_run["model"].path)
    manifest = artifact.read_manifest(model_dir)
    names = [f["name"] for f in manifest["features"]]
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    assert len(instances) == len(expected) == len(manifest["sample_kinds"])
    # The whole file, as sent, is a valid {"instances": [...]} body.
    json.dumps({"instances": instances}, allow_nan=False)
    for instance in instances:
        assert list(instance) == names
        assert "species" not in instance
    for prediction in expected:
        assert prediction["label"] in manifest["target_classes"]
        probabilities = prediction["probabilities"]
        assert list(probabilities) == manifest["target_classes"]
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert max(probabilities, key=probabilities.get) == prediction["label"]


def test_the_sample_adds_an_edge_instance_for_every_place_skew_hides(kfp_run: dict) -> None:
    """8 evaluation rows, then one edge row per missing feature, unseen category and end of a
    numeric range, each the first complete evaluation row with one value changed."""
    model_dir = Path(kfp_run["model"].path)
    manifest = artifact.read_manifest(model_dir)
    features = {f["name"]: f for f in manifest["features"]}
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    kinds = manifest["sample_kinds"]
    numeric = [name for name, f in features.items() if f["kind"] == "numeric"]
    categorical = [name for name in features if name not in numeric]

    assert kinds[:8] == ["evaluation"] * 8 and "evaluation" not in kinds[8:]
    assert sorted(kinds[8:]) == sorted(
        [f"missing:{name}" for name in features]
        + [f"unseen:{name}" for name in categorical]
        + [f"{end}:{name}" for name in numeric for end in ("min", "max")]
    )
    base = next(row for row in instances[:8] if None not in row.values())
    for instance, kind in zip(instances[8:], kinds[8:], strict=True):
        edge, name = kind.split(":")
        changed = {key for key in instance if instance[key] != base[key]}
        assert changed <= {name}
        want = {
            "missing": None,
            "unseen": f"unseen {name}",
            "min": features[name].get("min"),
            "max": features[name].get("max"),
        }[edge]
        assert instance[name] == want
    assert features["bill_length_mm"]["min"] < features["bill_length_mm"]["max"]


def test_read_sample_adds_each_edge_instance_as_a_list_in_manifest_order(kfp_run: dict) -> None:
    model_dir = Path(kfp_run["model"].path)
    names = [f["name"] for f in artifact.read_manifest(model_dir)["features"]]
    objects = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    exported = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)

    instances, expected, kinds = artifact.read_sample(model_dir)

    edges = len(objects) - 8
    assert instances[: len(objects)] == objects and expected[: len(objects)] == exported
    assert instances[len(objects) :] == [[row[n] for n in names] for row in objects[8:]]
    assert expected[len(objects) :] == exported[8:]
    assert kinds[len(objects) :] == [f"{kind} as list" for kind in kinds[8 : 8 + edges]]


def test_metrics_artifacts(kfp_run: dict) -> None:
    metrics = kfp_run["metrics"].metadata
    assert set(metrics) == set(METRICS["classification"])  # what the gate's check allows
    assert 0.9 <= metrics["accuracy"] <= 1.0
    classification = kfp_run["classification_metrics"].metadata
    matrix = classification["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == [
        "Adelie",
        "Chinstrap",
        "Gentoo",
    ]
    eval_rows = artifact.read_manifest(kfp_run["model"].path)["training"]["eval_rows"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == eval_rows
    curve = classification["confidenceMetrics"]
    assert len(curve) >= 2
    assert all(0.0 <= point["recall"] <= 1.0 for point in curve)


def test_fresh_process_reproduces_expected_predictions_exactly(kfp_run: dict) -> None:
    """Load model.joblib in a new interpreter, predict the sample, compare byte for byte."""
    model_dir = Path(kfp_run["model"].path)
    script = textwrap.dedent(
        """
        import json, sys
        import joblib, pandas as pd
        from serving_image.server.predictions import format_classification

        model_dir = sys.argv[1]
        pipeline = joblib.load(f"{model_dir}/model.joblib")
        with open(f"{model_dir}/instances_sample.jsonl") as handle:
            instances = [json.loads(line) for line in handle]
        frame = pd.DataFrame(instances).astype(
            {name: object for name in ("island", "sex")}
        )
        frame = frame.where(frame.notna(), None)
        out = format_classification(
            pipeline.predict(frame).tolist(),
            pipeline.predict_proba(frame).tolist(),
            pipeline.classes_.tolist(),
        )
        for prediction in out:
            print(json.dumps(prediction))
        """
    )
    printed = fresh_python(script, str(model_dir))
    expected = (model_dir / artifact.EXPECTED_FILE).read_text()
    assert printed == expected


def test_regression_export(tmp_path: Path) -> None:
    result = train_and_export(
        "penguins",
        tmp_path,
        target="body_mass_g",
        task="regression",
        estimator="ridge",
        hyperparameters={"alpha": 0.5},
        feature_columns=["species", "flipper_length_mm", "sex"],
    )
    assert set(result.metrics) == set(METRICS["regression"])
    assert result.metrics["r2"] > 0.5
    manifest = artifact.read_manifest(tmp_path)
    assert manifest["target_classes"] == []
    assert [f["name"] for f in manifest["features"]] == ["species", "flipper_length_mm", "sex"]
    assert manifest["estimator"]["hyperparameters"] == {"alpha": 0.5}
    expected = artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)
    assert all(isinstance(value, float) for value in expected)


def test_parquet_input_and_integer_labels(tmp_path: Path) -> None:
    frame = load_penguins()
    frame["label"] = (frame["species"] == "Gentoo").astype(int)
    path = tmp_path / "penguins.parquet"
    frame.drop(columns=["species"]).to_parquet(path)
    result = train_and_export(
        str(path),
        tmp_path / "model",
        target="label",
        estimator="random_forest",
        hyperparameters={"n_estimators": 20},
    )
    assert result.manifest["target_classes"] == [0, 1]
    assert result.metrics["roc_auc"] > 0.9
    first = artifact.read_jsonl(tmp_path / "model" / artifact.EXPECTED_FILE)[0]
    assert first["label"] in (0, 1)
    assert set(first["probabilities"]) == {"0", "1"}


def test_component_compiles_to_reusable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    compiler.Compiler().compile(train, str(path))
    spec = yaml.safe_load(path.read_text())
    inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert inputs["data"]["defaultValue"] == "penguins"
    assert inputs["task"]["parameterType"] == "STRING"
    outputs = spec["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert outputs["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["classification_metrics"]["artifactType"]["schemaTitle"] == (
        "system.ClassificationMetrics"
    )


# --- bad input: each raises before training, naming what is wrong ---------------------------


@pytest.fixture
def csv(tmp_path: Path):
    """Write a frame to CSV and return its path as a string."""

    def write(frame: pd.DataFrame, name: str = "data.csv") -> str:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return str(path)

    return write


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "colour"}, "target column 'colour' is not in"),
        ({"feature_columns": ["island", "wingspan"]}, "feature column(s) ['wingspan'] are not in"),
        ({"estimator": "xgboost"}, "unknown estimator 'xgboost' for classification"),
        (
            {"hyperparameters": {"n_trees": 5}, "estimator": "random_forest"},
            "unknown hyper-parameter(s) ['n_trees'] for estimator 'random_forest'",
        ),
        ({"hyperparameters": {"C": -1.0}}, "invalid hyper-parameter value for estimator"),
        ({"task": "clustering"}, "unknown task 'clustering'"),
        ({"task": "regression", "target": "island"}, "target column 'island' is not numeric"),
        ({"eval_fraction": 1.5}, "eval_fraction must be between 0 and 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(TrainingInputError) as caught:
        train_and_export("penguins", tmp_path / "model", **kwargs)
    assert message in str(caught.value)
    assert not (tmp_path / "model").exists()


def test_empty_data(csv, tmp_path: Path) -> None:
    path = csv(load_penguins().head(0))
    with pytest.raises(TrainingInputError, match="has no rows"):
        train_and_export(path, tmp_path / "m", target="species")


def test_single_class_target(csv, tmp_path: Path) -> None:
    frame = load_penguins()
    path = csv(frame[frame.species == "Adelie"])
    with pytest.raises(TrainingInputError) as caught:
        train_and_export(path, tmp_path / "m", target="species")
    assert "has a single class ('Adelie')" in str(caught.value)
    assert "needs at least two" in str(caught.value)


def test_entirely_missing_feature(csv, tmp_path: Path) -> None:
    frame = load_penguins()
    frame["tag"] = None
    path = csv(frame)
    with pytest.raises(TrainingInputError) as caught:
        train_and_export(path, tmp_path / "m", target="species")
    assert "['tag'] are entirely missing" in str(caught.value)
    assert "feature_columns" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(TrainingInputError, match=f"cannot read '{missing}': no such file"):
        train_and_export(str(missing), tmp_path / "m", target="species")


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match=r"must end in \.csv or \.parquet"):
        train_and_export(str(tmp_path / "data.xlsx"), tmp_path / "m", target="species")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(TrainingInputError) as caught:
        train_and_export(str(path), tmp_path / "m", target="species")
    assert f"cannot read '{path}' as parquet" in str(caught.value)


def test_unreachable_uri(tmp_path: Path) -> None:
    uri = "nosuchscheme://bucket/data.csv"
    with pytest.raises(TrainingInputError) as caught:
        train_and_export(uri, tmp_path / "m", target="species")
    assert f"cannot read '{uri}'" in str(caught.value)


def test_missing_target_for_a_file(csv, tmp_path: Path) -> None:
    path = csv(load_penguins())
    with pytest.raises(TrainingInputError, match="no target column given"):
        train_and_export(path, tmp_path / "m")

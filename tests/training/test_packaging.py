"""package_model: a model file and a table become the artifact train writes; every refusal;
and the component through kfp.local, from URIs and from an input artifact."""

import pickle
import sys
from pathlib import Path

import joblib
import pandas as pd
import pytest
from kfp import dsl, local
from lightgbm import LGBMClassifier
from sklearn.pipeline import Pipeline

from components.package_model import package_model as package_model_component
from components.training import ExportError, one_source, package_model
from components.training.packaging import fuse_path
from serving_image.server import artifact
from tests.training.external_models import (
    logistic_regression,
    penguins,
    server_answers,
)
from tests.training.penguins import FEATURES

KFP_BASE_IMAGE_WARNING = "ignore:You may be attemping to run a task:RuntimeWarning"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fitted pipeline in ``model.joblib`` and the penguins table in ``penguins.csv``."""
    root = tmp_path_factory.mktemp("external")
    frame = penguins()
    joblib.dump(logistic_regression(frame), root / "model.joblib")
    frame.to_csv(root / "penguins.csv", index=False)
    return root / "model.joblib", root / "penguins.csv"


def test_a_joblib_file_and_a_csv_table_package(files: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, sample_path = files
    result = package_model(str(model_path), str(sample_path), tmp_path, target="species")

    manifest = artifact.read_manifest(tmp_path)
    assert manifest == result.manifest
    assert manifest["training"]["data"] == f"external: {model_path}"
    assert manifest["task"] == "classification" and manifest["target"] == "species"
    assert [f["name"] for f in manifest["features"]] == FEATURES
    assert result.metrics["accuracy"] > 0.9
    answers, _ = server_answers(tmp_path)
    assert answers == artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)


def test_directories_holding_one_pickle_and_one_parquet_table_package(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_path, sample_path = files
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("a fitted pipeline")
    with open(tmp_path / "model" / "pipeline.pkl", "wb") as handle:
        pickle.dump(joblib.load(model_path), handle)
    (tmp_path / "sample").mkdir()
    pd.read_csv(sample_path).drop(columns=["species"]).to_parquet(
        tmp_path / "sample" / "rows.parquet"
    )
    result = package_model(tmp_path / "model", tmp_path / "sample", tmp_path / "out")
    assert result.manifest["metrics"] == {}
    assert result.manifest["training"]["rows"] == 344
    server_answers(tmp_path / "out")  # loads and self-checks


def test_gs_uris_are_read_at_the_fuse_mount() -> None:
    assert fuse_path("gs://bucket/models/model.joblib") == "/gcs/bucket/models/model.joblib"
    assert fuse_path("/local/model.joblib") == "/local/model.joblib"
    with pytest.raises(ExportError, match=r"read at /gcs/no-such-bucket/model\.joblib"):
        package_model("gs://no-such-bucket/model.joblib", "penguins", "unused")


def test_one_source_of_each_input() -> None:
    assert one_source("/in/model", "", "model") == "/in/model"
    assert one_source("", "gs://b/m.joblib", "model") == "gs://b/m.joblib"
    with pytest.raises(ExportError, match=r"both model .* and model_uri='gs://b/m' are given"):
        one_source("/in/model", "gs://b/m", "model")
    with pytest.raises(
        ExportError, match=r"no sample: pass the sample input artifact or sample_uri"
    ):
        one_source("", "", "sample")


def missing_lightgbm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpickling a LightGBM model fails as where LightGBM is not installed."""
    for name in [name for name in sys.modules if name.split(".")[0] == "lightgbm"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_refusals_name_the_fault_and_what_to_do(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_path, sample_path = files
    sample = str(sample_path)

    def refused(model: str | Path, message: str, table: str = sample) -> None:
        with pytest.raises(ExportError, match=message):
            package_model(str(model), table, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    refused(tmp_path / "nothing.joblib", r"no such model file or directory: '.*nothing\.joblib'$")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, r"holds 0 model files \[\] \(all: \[\]\); it must hold exactly one")
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.joblib", "b.pkl"):
        (several / name).write_bytes(model_path.read_bytes())
    refused(several, r"holds 2 model files \['a\.joblib', 'b\.pkl'\]")
    saved_model = tmp_path / "saved"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    keras = (
        r"is a Keras model: not supported by package_model yet; .*train\(framework='tensorflow'\)"
    )
    refused(saved_model, keras)
    (tmp_path / "model.keras").write_bytes(b"")
    refused(tmp_path / "model.keras", keras)
    (tmp_path / "model.txt").write_text("weights")
    refused(tmp_path / "model.txt", r"is not a model file package_model reads")
    (tmp_path / "corrupt.joblib").write_bytes(b"not a pickle")
    refused(tmp_path / "corrupt.joblib", r"cannot unpickle .*corrupt\.joblib \(\w+Error: ")
    joblib.dump(Pipeline([("model", LGBMClassifier())]), tmp_path / "unfitted.joblib")
    refused(tmp_path / "unfitted.joblib", r"the Pipeline is not fitted")
    refused(model_path, r"sample: cannot read '.*absent\.csv': no such file", "absent.csv")
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("a.csv", "b.parquet"):
        (tables / name).write_text("")
    refused(model_path, r"holds 2 tables \['a\.csv', 'b\.parquet'\]", str(tables))
    missing_lightgbm(monkeypatch)
    refused(
        tmp_path / "unfitted.joblib",
        r"needs module 'lightgbm', which is not installed; "
        r"pip install 'train-to-serve\[boosting\]'",
    )


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_the_component_packages_from_uris(files: tuple[Path, Path], tmp_path: Path) -> None:
    model_path, sample_path = files
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    task = package_model_component(
        model_uri=str(model_path), sample_uri=str(sample_path), target="species"
    )
    packaged = task.outputs["packaged"]
    manifest = artifact.read_manifest(packaged.path)
    assert packaged.metadata == {
        "framework": "scikit-learn",
        "framework_version": manifest["framework_version"],
        "task": "classification",
        "target": "species",
        "model_sha256": manifest["model_sha256"],
    }
    assert task.outputs["metrics"].metadata == manifest["metrics"] != {}


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_the_component_packages_input_artifacts(files: tuple[Path, Path], tmp_path: Path) -> None:
    """A Model and a Dataset artifact (imported, as a pipeline would from elsewhere): their
    paths are local files under kfp.local, as under Vertex's /gcs/ mount."""
    model_path, sample_path = files
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path),
        raise_on_error=True,
    )

    @dsl.pipeline(name="package-imported")
    def package_imported() -> None:
        model = dsl.importer(artifact_uri=str(model_path), artifact_class=dsl.Model)
        sample = dsl.importer(artifact_uri=str(sample_path), artifact_class=dsl.Dataset)
        package_model_component(model=model.output, sample=sample.output, target="species")

    package_imported()
    (written,) = tmp_path.rglob(f"package-model/packaged/{artifact.MANIFEST_FILE}")
    manifest = artifact.read_manifest(written.parent)
    assert manifest["training"]["data"] == f"external: {model_path}"
    assert manifest["target"] == "species" and manifest["metrics"]["accuracy"] > 0.9
    server_answers(written.parent)  # loads and self-checks

"""XGBoost and LightGBM pipelines (exported with ``export_model``) served by scikit-learn's
predictor, and a model whose library the image lacks refused with one line that names it.

In-process (``load_predictor``, ``ModelState``), and one real server process per library with
two workers forked after the master imported the library (``preimport``).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from serving_image.server import artifact, predictor
from serving_image.server.compiled import SCIKIT_LEARN
from serving_image.server.loading import ModelState
from serving_image.server.predictor import (
    MODEL_LIBRARY_MODULES,
    ModelLoadError,
    SklearnPredictor,
    load_predictor,
    preimport,
)
from serving_image.server.validation import parse_predict_request
from tests.server.answers import answer_difference
from tests.server.boosted import LIBRARIES, export_boosted
from tests.support.servers import LaunchedServer


@pytest.fixture(scope="module", params=LIBRARIES)
def boosted_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline ending in XGBoost's, then LightGBM's classifier, exported."""
    library = str(request.param)
    return export_boosted(library, tmp_path_factory.mktemp(library) / "model")


@pytest.fixture(scope="module")
def lightgbm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_boosted("lightgbm", tmp_path_factory.mktemp("lightgbm") / "model")


def library_of(model_dir: Path) -> str:
    [library] = set(artifact.read_manifest(model_dir)["libraries"]) & set(LIBRARIES)
    return library


def answers(serving: Any, instances: list[Any], output: str) -> list[Any]:
    body = orjson.dumps({"instances": instances, "parameters": {"output": output}})
    return serving(parse_predict_request(body, serving.schema))


def test_the_manifest_records_the_library_the_image_must_install(boosted_model: Path) -> None:
    manifest = artifact.read_manifest(boosted_model)
    library = library_of(boosted_model)
    module = importlib.import_module(library)
    assert manifest["libraries"][library] == module.__version__
    assert manifest["estimator"]["class"].startswith(f"{library}.")
    assert set(MODEL_LIBRARY_MODULES) == set(LIBRARIES)


def test_a_boosted_pipeline_loads_and_answers_as_exported(boosted_model: Path) -> None:
    # scikit-learn's predictor (whether or not a compiled graph could serve instead): the
    # pipeline's transform, then the library's classifier; its self-check passed.
    serving, summary = load_predictor(boosted_model, SCIKIT_LEARN)
    assert isinstance(serving, SklearnPredictor) and summary["predictor"] == "scikit-learn"
    assert summary["self_checked_instances"] > 0
    manifest = artifact.read_manifest(boosted_model)
    classes = manifest["target_classes"]
    assert classes == (["big", "small"] if library_of(boosted_model) == "lightgbm" else [0, 1])

    instances, expected, _ = artifact.read_sample(boosted_model)
    objects = [instance for instance in instances if isinstance(instance, dict)]
    both = answers(serving, objects, "both")
    assert answer_difference(expected[: len(objects)], both) is None
    assert answers(serving, objects, "label") == [answer["label"] for answer in both]
    probabilities = answers(serving, objects, "probabilities")
    assert probabilities == [answer["probabilities"] for answer in both]
    assert all(list(row) == [str(c) for c in classes] for row in probabilities)
    assert all(abs(sum(row.values()) - 1) < 1e-6 for row in probabilities)


def test_the_master_imports_the_library_before_forking(boosted_model: Path) -> None:
    assert library_of(boosted_model) in preimport(str(boosted_model), SCIKIT_LEARN)


def test_a_missing_library_fails_the_load_naming_it_and_its_version(
    boosted_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    library = library_of(boosted_model)
    version = artifact.read_manifest(boosted_model)["libraries"][library]
    monkeypatch.setitem(sys.modules, library, None)  # as if the image had no such library
    with pytest.raises(ModelLoadError) as caught:
        load_predictor(boosted_model, SCIKIT_LEARN)
    wanted = f"the model needs {library} {version}, which this image does not have: rebuild it "
    assert str(caught.value) == wanted + "with build_image"
    assert library not in preimport(str(boosted_model), SCIKIT_LEARN)

    # What the worker logs: one ERROR line with that reason, no traceback.
    state = ModelState(str(boosted_model), tmp_path, predictor_choice=SCIKIT_LEARN)
    with caplog.at_level(logging.DEBUG, logger="serving_image.server"):
        state.load()
    assert state.status == "failed" and state.error == str(caught.value)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert wanted in record.getMessage() and "\n" not in record.getMessage()


def test_a_library_that_cannot_be_imported_says_why(
    lightgbm_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_libgomp(name: str) -> Any:
        raise OSError("libgomp.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(predictor.importlib, "import_module", no_libgomp)
    with pytest.raises(ModelLoadError, match=r"^the model needs lightgbm 4\.\d+\.\d+, which ca"):
        load_predictor(lightgbm_model, SCIKIT_LEARN)
    with pytest.raises(ModelLoadError, match=r"\(OSError: libgomp\.so\.1: cannot open .*build_im"):
        load_predictor(lightgbm_model, SCIKIT_LEARN)


def test_two_forked_workers_serve_the_boosted_model(start_server: Any, boosted_model: Path) -> None:
    env = {"SERVING_WORKERS": "2", "SERVING_PREDICTOR": SCIKIT_LEARN}
    server: LaunchedServer = start_server(boosted_model, env)
    server.wait_ready()
    [imported] = [e for e in server.logs() if e["message"] == "imported before forking the workers"]
    assert library_of(boosted_model) in imported["modules"]
    instances = artifact.read_jsonl(boosted_model / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(boosted_model / artifact.EXPECTED_FILE)
    for _ in range(4):  # requests reach both workers
        response = server.predict({"instances": instances})
        assert response.status_code == 200, response.text
        assert answer_difference(expected, response.json()["predictions"]) is None

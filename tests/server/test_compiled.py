"""Which path serves: the compiled graph when verified, scikit-learn otherwise or as the
fallback of a graph that fails its check at load, and ``SERVING_PREDICTOR`` to choose.

Real server processes (two workers, so that "once per container" means something) on real
exports: the penguins model (its graph verified), the same with ``model.onnx`` tampered, and
a pipeline with a step that has no converter.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.preprocessing import FunctionTransformer

from components.training import scikit_learn, train_and_export
from serving_image.server import artifact
from serving_image.server.config import Config, ConfigError
from serving_image.server.predictor import load_predictor, preimport
from serving_image.server.validation import parse_predict_request
from tests.server.answers import answer_difference
from tests.support.servers import LaunchedServer

StartServer = Callable[..., LaunchedServer]
TWO_WORKERS = {"SERVING_WORKERS": "2"}


@pytest.fixture(scope="module")
def other_graph(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A verified graph with the penguins inputs and outputs that answers differently
    (a decision tree's)."""
    model_dir = tmp_path_factory.mktemp("tree_model")
    train_and_export("penguins", model_dir, estimator="decision_tree")
    return (model_dir / artifact.ONNX_FILE).read_bytes()


@pytest.fixture(scope="module")
def model_without_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Penguins with ``tanh`` after the numeric scaling: no converter, so no graph."""
    build = scikit_learn.build_pipeline

    def with_tanh(schema: list[dict[str, Any]], estimator: Any) -> Any:
        pipeline = build(schema, estimator)
        pipeline.named_steps["preprocess"].transformers[0][1].steps.append(
            ("tanh", FunctionTransformer(np.tanh))
        )
        return pipeline

    model_dir = tmp_path_factory.mktemp("tanh_model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scikit_learn, "build_pipeline", with_tanh)
        train_and_export("penguins", model_dir)
    return model_dir


def tampered(penguins_model_dir: Path, target: Path, graph: bytes, record: bool) -> Path:
    """A copy of the penguins model whose ``model.onnx`` is ``graph``; with ``record`` the
    manifest's ``compiled.model_sha256`` is updated to match (only its answers then differ)."""
    shutil.copytree(penguins_model_dir, target)
    (target / artifact.ONNX_FILE).write_bytes(graph)
    if record:
        manifest = json.loads((target / artifact.MANIFEST_FILE).read_text())
        manifest["compiled"]["model_sha256"] = artifact.sha256_file(target / artifact.ONNX_FILE)
        (target / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def path_lines(server: LaunchedServer) -> list[dict[str, Any]]:
    return [e for e in server.logs() if e["message"].startswith("serving with")]


def predictions(server: LaunchedServer, model_dir: Path) -> tuple[list[Any], list[Any]]:
    """What the server answers for the exported sample, and what the export expects."""
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    answer = server.predict({"instances": instances})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"], artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)


def loaded_by(server: LaunchedServer) -> list[dict[str, Any]]:
    return [e for e in server.logs() if e["message"].startswith("model loaded")]


def test_the_verified_graph_serves_and_the_server_says_so_once(
    start_server: StartServer, penguins_model_dir: Path
) -> None:
    server = start_server(penguins_model_dir, TWO_WORKERS)
    server.wait_ready()
    [line] = path_lines(server)
    assert line["severity"] == "INFO"
    assert line["message"] == (
        "serving with the compiled graph (onnxruntime): verified at export and by the self-check"
    )
    assert {e["predictor"] for e in loaded_by(server)} == {"compiled"}
    got, expected = predictions(server, penguins_model_dir)
    assert answer_difference(expected, got) is None
    # Neither the master (nothing imported before forking) nor a worker loads scikit-learn.
    assert not [e for e in server.logs() if e["message"] == "imported before forking the workers"]
    for pid in (server.process.pid, *server.worker_pids()):
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "/sklearn/" not in maps
    assert "/onnxruntime/" in maps


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (False, "has sha256"),  # the file changed, the manifest did not
        (True, "self-check failed on sample instance"),  # both changed: the answers differ
    ],
)
def test_a_tampered_graph_falls_back_to_scikit_learn_with_one_log_line(
    start_server: StartServer,
    penguins_model_dir: Path,
    other_graph: bytes,
    tmp_path: Path,
    record: bool,
    why: str,
) -> None:
    model_dir = tampered(penguins_model_dir, tmp_path / "model", other_graph, record)
    server = start_server(model_dir, TWO_WORKERS)
    server.wait_ready()
    assert server.health().status_code == 200
    [line] = path_lines(server)
    assert line["severity"] == "WARNING"
    assert line["message"].startswith(
        "serving with scikit-learn, not the compiled graph: the compiled graph failed its "
        "check at load: "
    )
    assert why in line["message"]
    assert [e["severity"] for e in server.logs()].count("WARNING") == 1
    assert [(e["predictor"], e["fallback"]) for e in loaded_by(server)] == [
        ("scikit-learn", True)
    ] * 2
    got, expected = predictions(server, model_dir)
    assert got == expected  # scikit-learn's own answers, bit for bit


def test_serving_predictor_compiled_fails_the_load_of_a_tampered_graph(
    start_server: StartServer, penguins_model_dir: Path, other_graph: bytes, tmp_path: Path
) -> None:
    model_dir = tampered(penguins_model_dir, tmp_path / "model", other_graph, record=False)
    server = start_server(model_dir, {**TWO_WORKERS, "SERVING_PREDICTOR": "compiled"})
    failure = server.wait_for_log(lambda e: e["severity"] == "ERROR")
    assert failure["message"].startswith("model failed to load: SERVING_PREDICTOR=compiled but ")
    assert "has sha256" in failure["message"]
    time.sleep(0.5)
    health = server.health()
    assert health.status_code == 503 and "SERVING_PREDICTOR=compiled" in health.json()["error"]
    assert not path_lines(server)


def test_serving_predictor_scikit_learn_never_opens_the_graph(
    start_server: StartServer, penguins_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tampered(penguins_model_dir, tmp_path / "model", b"not a graph", record=True)
    server = start_server(model_dir, {**TWO_WORKERS, "SERVING_PREDICTOR": "scikit-learn"})
    server.wait_ready()
    [line] = path_lines(server)
    assert (line["severity"], line["message"]) == (
        "INFO",
        "serving with scikit-learn: SERVING_PREDICTOR=scikit-learn",
    )
    got, expected = predictions(server, model_dir)
    assert got == expected


def test_a_model_without_a_graph_serves_through_scikit_learn(
    start_server: StartServer, model_without_graph: Path
) -> None:
    assert not (model_without_graph / artifact.ONNX_FILE).exists()
    server = start_server(model_without_graph, TWO_WORKERS)
    server.wait_ready()
    [line] = path_lines(server)
    assert line["severity"] == "INFO"
    assert line["message"].startswith(
        "serving with scikit-learn: the export did not ship a compiled graph (not_compiled: "
    )
    assert "FunctionTransformer is not supported" in line["message"]
    got, expected = predictions(server, model_without_graph)
    assert got == expected


def test_serving_predictor_is_read_and_checked() -> None:
    assert Config.from_env({}).predictor == "auto"
    assert Config.from_env({"SERVING_PREDICTOR": "Compiled"}).predictor == "compiled"
    with pytest.raises(ConfigError, match="SERVING_PREDICTOR='onnx' is not one of"):
        Config.from_env({"SERVING_PREDICTOR": "onnx"})


def test_scikit_learn_is_imported_before_forking_only_where_it_will_serve(
    penguins_model_dir: Path,
) -> None:
    assert preimport(str(penguins_model_dir), "auto") == []
    assert "sklearn.pipeline" in preimport(str(penguins_model_dir), "scikit-learn")


@pytest.fixture
def both_paths(penguins_model_dir: Path) -> dict[str, Any]:
    """The penguins model loaded on each path, in-process."""
    return {
        choice: load_predictor(penguins_model_dir, choice)[0]
        for choice in ("scikit-learn", "compiled")
    }


def test_both_paths_answer_alike_in_process_and_the_time_per_call_is_printed(
    both_paths: dict[str, Any], penguins_model_dir: Path
) -> None:
    """In-process, the whole chain (preprocess, predict, postprocess) per call; printed with
    ``pytest -s``, not asserted (machines differ)."""
    instances = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    for count in (1, 100):
        body = orjson.dumps({"instances": list(islice(cycle(instances), count))})
        answers = {}
        for choice, predictor in both_paths.items():
            request = parse_predict_request(body, predictor.schema)
            answers[choice] = predictor(request)
            calls = 20 if choice == "scikit-learn" else 500
            started = time.perf_counter()
            for _ in range(calls):
                predictor(request)
            per_call = (time.perf_counter() - started) / calls
            print(f"\n{choice:>12}, {count:>3} instances: {per_call * 1e6:8.1f} µs per call")
        assert answer_difference(answers["scikit-learn"], answers["compiled"]) is None

"""``compile.py run-local`` end to end: the README's main command, on the penguins data.

Runs the real command line in a subprocess (kfp.local, podman/docker, the serving image, the
contract check, the local registry, a local endpoint container and a local batch job), then
checks the summary, a prediction from the endpoint it left running, and the batch output
files against the input. A retrain run then becomes version 2 of the same model, deployed to the
same endpoint (found by display name), where it takes all the traffic and replaces the first
deployed model. Whatever endpoints the runs leave are undeployed afterwards.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from components import release, stand_ins
from components.runners import ENGINE_ENV, Engine
from pipelines.local_run import STEPS
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from tests.server.answers import answer_difference
from tests.support import REPO_ROOT, compile_cli


def run_local(output_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "compile.py", "run-local", "--output-dir", str(output_dir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def failure_details(result: Any, output_dir: Path) -> str:
    """The end of the run's output, and the contract check reports, for a failed run."""
    reports = sorted(output_dir.glob("train-to-serve-local-*/contract-check/report"))
    return "\n".join(
        [result.stdout[-4000:], result.stderr[-2000:], *(r.read_text()[:4000] for r in reports)]
    )


def read_summary(stdout: str) -> dict[str, Any]:
    path = stdout.strip().splitlines()[-1].removeprefix("summary: ")
    return json.loads(Path(path).read_text())


def jsonl(directory: Path, pattern: str) -> list[Any]:
    return [
        json.loads(line)
        for path in sorted(directory.glob(pattern))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("run-local")
    yield directory
    endpoints = directory / "endpoints"
    for endpoint in stand_ins.list_endpoints(endpoints) if endpoints.exists() else []:
        stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
        assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []


@pytest.fixture(scope="module")
def first_run(output_dir: Path) -> dict[str, Any]:
    result = run_local(output_dir)
    assert result.returncode == 0, failure_details(result, output_dir)
    for step in STEPS:
        assert f"==> step {step}: SUCCESS" in result.stdout, f"no progress line for {step}"
    summary = read_summary(result.stdout)
    # Readable: a line per step and the summary; each step's whole log in a file.
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    logs = Path(summary["run_dir"]) / "logs"
    for step in STEPS:
        assert f"Task '{step}' finished with status SUCCESS" in (logs / f"{step}.log").read_text()
    return summary


@pytest.mark.container
def test_the_summary_names_every_result_and_times_every_step(
    first_run: dict[str, Any], output_dir: Path
) -> None:
    summary = first_run
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == output_dir and (run_dir / "summary.json").is_file()
    assert set(summary["step_seconds"]) == set(STEPS)
    assert all(seconds > 0 for seconds in summary["step_seconds"].values())
    assert summary["wall_seconds"] >= sum(summary["step_seconds"].values()) * 0.9
    assert summary["metrics"]["accuracy"] >= 0.8 and summary["gate_passed"] is True
    assert "@sha256:" in summary["image"]
    assert summary["contract_check"]["passed"] == 1.0
    assert summary["contract_check"]["rules_failed"] == 0.0
    report = Path(summary["contract_report"]).read_text()
    assert "**PASS:" in report
    version = summary["model_version"]
    assert version["resourceName"].startswith("projects/local/locations/local/models/")
    assert version["versionId"] == "1" and version["versionAliases"] == ["default"]
    assert summary["rollout"]["decision"] == "promoted"
    capacity = summary["capacity"]
    assert capacity["machine_type"] == "n1-standard-2" and capacity["cold_start_s"] > 0
    assert capacity["deploy"]["min_replica_count"] >= 1
    assert capacity["batch_size"] >= 1 and Path(capacity["report"]).is_file()
    assert summary["rollout"]["smoke_latency_ms"] > 0
    assert summary["endpoint"]["url"].startswith("http://127.0.0.1:")
    assert (Path(summary["model_dir"]) / artifact.MANIFEST_FILE).is_file()


@pytest.mark.container
def test_the_chained_contract_check_emits_the_unmanaged_container_model_for_upload(
    first_run: dict[str, Any],
) -> None:
    """train -> build -> check under kfp.local: the checked image's spec, the trained model."""
    written = json.loads(
        (Path(first_run["run_dir"]) / "contract-check" / "executor_output.json").read_text()
    )
    (artifact,) = written["artifacts"]["unmanaged_container_model"]["artifacts"]
    assert artifact["uri"].removeprefix("file://") == first_run["model_dir"]
    spec = artifact["metadata"]["containerSpec"]
    assert spec["imageUri"] == first_run["image"]
    assert [int(p["containerPort"]) for p in spec["ports"]] == [8080]
    assert (spec["healthRoute"], spec["predictRoute"]) == ("/health", "/predict")
    assert "startupProbe" not in spec  # a small model that starts at once


@pytest.mark.container
def test_the_endpoint_left_running_predicts_the_exported_sample(
    first_run: dict[str, Any], output_dir: Path
) -> None:
    model_dir = Path(first_run["model_dir"])
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    endpoint_id = first_run["endpoint"]["resourceName"].rsplit("/", 1)[-1]
    answer = stand_ins.predict(endpoint_id, instances, endpoints_dir=output_dir / "endpoints")
    assert answer_difference(expected, answer["predictions"]) is None  # the compiled graph's
    assert answer["model"] == first_run["model_version"]["resourceName"].split("@")[0]


@pytest.mark.container
def test_batch_output_has_one_line_per_input_row_in_vertex_format(
    first_run: dict[str, Any], output_dir: Path
) -> None:
    inputs = jsonl(output_dir / "batch-input", "penguins.jsonl")
    assert len(inputs) == 344  # every row of the bundled data set
    batch = first_run["batch"]
    directory = Path(batch["output_dir"])
    assert directory.parent == output_dir / "batch-predictions"
    assert directory.name.startswith("prediction-train-to-serve-")
    results = jsonl(directory, "prediction.results-*")
    errors = jsonl(directory, "prediction.errors_stats-*")
    assert len(results) + len(errors) == len(inputs)
    assert errors == [] and batch["prediction_lines"] == len(inputs)
    assert batch["completionStats"] == {
        "successfulCount": len(inputs),
        "failedCount": 0,
        "incompleteCount": 0,
    }
    assert sorted(json.dumps(r["instance"], sort_keys=True) for r in results) == sorted(
        json.dumps(i, sort_keys=True) for i in inputs
    )
    assert all(set(r["prediction"]) == {"label", "probabilities"} for r in results)


class SteadyLoad:
    """A client calling the endpoint's predict URL without pause, every answer checked against
    the expected predictions of the version that answered it (``model``, ``modelVersionId``);
    a request without a right answer is a failure."""

    def __init__(self, url: str, instances: list[Any], registry: Path) -> None:
        self.url, self.instances, self.registry = url, instances, registry
        self.expected: dict[str, list[Any]] = {}
        self.answers: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.client = httpx.Client(timeout=30)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def expected_for(self, version: str) -> list[Any]:
        """The version's expected predictions for the load's instances (from its sample)."""
        if version not in self.expected:
            model_dir = stand_ins.get_version(self.registry, version).model_dir
            sample = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
            expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
            by_instance = {
                json.dumps(i, sort_keys=True): e for i, e in zip(sample, expected, strict=True)
            }
            self.expected[version] = [
                by_instance[json.dumps(i, sort_keys=True)] for i in self.instances
            ]
        return self.expected[version]

    def one(self) -> str:
        """Send one request; the deployed model that answered (or "" on a failure)."""
        try:
            response = self.client.post(self.url, json={"instances": self.instances})
        except httpx.HTTPError as exc:
            self.failures.append(f"no answer: {exc!r}")
            return ""
        if response.status_code != 200:
            self.failures.append(f"{response.status_code}: {response.text[:300]}")
            return ""
        answer = response.json()
        version = f"{answer['model']}@{answer['modelVersionId']}"
        difference = json_difference(self.expected_for(version), answer["predictions"])
        if difference:
            self.failures.append(f"{version} answered wrong: {difference}")
            return ""
        self.answers.append(answer["deployedModelId"])
        return answer["deployedModelId"]

    def run(self) -> None:
        while not self.stop.is_set():
            self.one()
            time.sleep(0.01)

    def __enter__(self) -> "SteadyLoad":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.client.close()


@pytest.mark.container
def test_retrains_roll_out_under_load_and_a_broken_version_is_rolled_back(
    first_run: dict[str, Any], output_dir: Path, wrong_answers_image: str
) -> None:
    """The second version rolls out on the same endpoint (canary, smoke test, promotion); a
    split set by the CLI is honoured over 2,000 requests; a version whose server answers wrong
    is smoke-tested and rolled back; a client calling all along never fails and every answer
    is the answering version's expected one."""
    registry, endpoints = output_dir / "registry", output_dir / "endpoints"
    model = first_run["model_version"]["resourceName"].split("@")[0]
    endpoint = first_run["endpoint"]["resourceName"]
    endpoint_id = endpoint.rsplit("/", 1)[-1]
    first = first_run["endpoint"]["deployedModelId"]
    assert first_run["rollout"]["decision"] == "promoted"
    instances = artifact.read_jsonl(Path(first_run["model_dir"]) / artifact.INSTANCES_FILE)[:5]

    with SteadyLoad(first_run["endpoint"]["url"], instances, registry) as load:
        # 1. Version 2 at a 10% canary, smoke-tested, promoted; version 1 kept at 0%.
        result = run_local(
            output_dir,
            "--parent-model", model,
            "--estimator", "random_forest",
            "--canary-traffic-percent", "10",
            "--keep-previous-deployments",
            "--batch-instances", str(output_dir / "batch-input" / "penguins.jsonl"),
        )  # fmt: skip
        assert result.returncode == 0, failure_details(result, output_dir)
        summary = read_summary(result.stdout)
        second = summary["endpoint"]["deployedModelId"]
        assert summary["model_version"]["resourceName"] == f"{model}@2"
        assert summary["model_version"]["parentModel"] == f"{model}@1"
        assert summary["endpoint"]["resourceName"] == endpoint  # the same endpoint
        rollout = summary["rollout"]
        assert rollout["decision"] == "promoted" and rollout["default_alias_moved"] is True
        assert rollout["traffic_before"] == {first: 100}
        assert rollout["traffic_after"] == {second: 100}
        assert stand_ins.get_version(registry, model).version_id == "2"
        record = Path(rollout["record"]).read_text()
        assert f"Traffic before: {first}=100; after: {second}=100" in record

        # 2. A split set with the CLI, honoured within 5 points over 2,000 requests.
        split = f"{first}=30,{second}=70"
        cli = ["--endpoints-dir", str(endpoints)]
        changed = compile_cli("endpoints", "traffic", endpoint_id, "--split", split, *cli)
        assert changed.returncode == 0, changed.stderr
        # The router splits all requests; count every client's answers in the window.
        mark = len(load.answers)
        for _ in range(2000):
            load.one()
        counts = Counter(load.answers[mark:])
        total = sum(counts.values())
        assert total >= 2000
        assert abs(counts[first] / total - 0.30) <= 0.05, counts
        assert abs(counts[second] / total - 0.70) <= 0.05, counts
        restored = compile_cli("endpoints", "rollback", endpoint_id, *cli)
        assert restored.returncode == 0, restored.stderr
        assert stand_ins.get_endpoint(endpoint_id, endpoints).traffic_split == {second: 100}

        # 3. A broken version 3 (same model, a server that answers wrong) rolls out as the
        # pipeline's steps do it: deployed at 0%, smoke-tested, rolled back.
        spec = {**stand_ins.get_version(registry, model).container_spec}
        spec["imageUri"] = wrong_answers_image
        model_dir = stand_ins.get_version(registry, model).model_dir
        broken = stand_ins.upload_model(
            registry, "broken", model_dir, spec, parent_model=model, version_aliases=[]
        )
        deployment = stand_ins.deploy(
            broken.resource_name, registry, endpoints, display_name="", traffic_percent=0,
            endpoint_id=endpoint_id,
        )  # fmt: skip
        live, _ = release.targets(
            {"resourceName": endpoint, "endpointsDir": str(endpoints)},
            {"registryDir": str(registry)},
        )
        smoke = release.smoke_test_version(live, broken.resource_name, str(model_dir))
        assert not smoke.passed
        assert "prediction(s) differ" in smoke.failures[0]
        evidence = {"metrics": {}, "gate": {}, "image_uri": wrong_answers_image}
        evidence |= {"contract_report_uri": "", "smoke": smoke.to_json()}
        record = release.roll_back_version(
            live, broken.resource_name, traffic_before=deployment.traffic_before, evidence=evidence
        )
        assert record["decision"] == "rolled back"
        time.sleep(1)  # the load keeps going after the rollback
    assert load.failures == [], load.failures[:5]
    assert len(load.answers) > 2000
    assert deployment.deployed_model.id not in load.answers  # 0%: no client ever reached it
    after = stand_ins.get_endpoint(endpoint_id, endpoints)
    assert after.traffic_split == {second: 100}
    assert deployment.deployed_model.id not in after.deployed_ids
    assert stand_ins.get_version(registry, model).version_id == "2"  # default stays


@pytest.mark.container
def test_a_tensorflow_model_goes_the_same_way_end_to_end(
    tmp_path: Path, engine: Engine, output_dir: Path
) -> None:
    instances = output_dir / "batch-input" / "penguins.jsonl"  # written by the first run
    if not instances.exists():
        run_local(output_dir)
    result = run_local(tmp_path, "--framework", "tensorflow", "--batch-instances", str(instances))
    try:
        assert result.returncode == 0, failure_details(result, tmp_path)
        summary = read_summary(result.stdout)
        assert summary["framework"] == "tensorflow"
        assert summary["contract_check"]["passed"] == 1.0
        assert summary["gate_passed"] is True
        assert (Path(summary["model_dir"]) / "saved_model").is_dir()
        batch = summary["batch"]
        assert batch["prediction_lines"] == 344 and batch["error_lines"] == 0
        endpoint_id = summary["endpoint"]["resourceName"].rsplit("/", 1)[-1]
        model_dir = Path(summary["model_dir"])
        answer = stand_ins.predict(
            endpoint_id,
            artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE),
            endpoints_dir=tmp_path / "endpoints",
        )
        expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
        assert [p["label"] for p in answer["predictions"]] == [e["label"] for e in expected]
    finally:
        for endpoint in stand_ins.list_endpoints(tmp_path / "endpoints"):
            stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=tmp_path / "endpoints")


@pytest.mark.container
def test_a_run_that_fails_after_deploying_undeploys_what_it_deployed(
    tmp_path: Path, engine: Engine
) -> None:
    """The batch step cannot write its folder (a file is in the way): the run fails after
    its deploy, and the new endpoint it created goes again, router and server."""
    (tmp_path / "batch-predictions").write_text("a file where the batch step writes a folder")
    result = run_local(tmp_path)
    assert result.returncode == 2
    assert "step 'local-batch-predict' failed" in result.stderr, result.stderr[-3000:]
    run_dir = next(tmp_path.glob("train-to-serve-local-*"))
    # The failed step's log tail on the terminal, its whole log in the run's logs/.
    log = run_dir / "logs" / "local-batch-predict.log"
    assert f"--- the last lines of {log} ---" in result.stdout
    assert "NotADirectoryError" in result.stdout.split(str(log))[-1]
    assert "NotADirectoryError" in log.read_text()
    assert len(result.stdout.splitlines()) < 60
    written = json.loads((run_dir / "local-model-deploy" / "executor_output.json").read_text())
    metadata = written["artifacts"]["endpoint"]["artifacts"][0]["metadata"]
    endpoint_id = metadata["resourceName"].rsplit("/", 1)[-1]
    assert (
        f"Its deployed model {metadata['deployedModelId']} and endpoint {endpoint_id}, which "
        "served nothing else, were undeployed." in result.stderr
    )
    assert stand_ins.list_endpoints(tmp_path / "endpoints") == []
    assert stand_ins.labelled_containers(engine, endpoint_id) == []


def test_without_a_container_engine_it_stops_before_training_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    result = run_local(tmp_path, env={ENGINE_ENV: "/nonexistent/podman"})
    assert result.returncode == 2
    assert "needs podman or docker" in result.stderr
    assert "scripts/setup-container-engine.sh" in result.stderr
    assert not list(tmp_path.glob("train-to-serve-local-*")), "nothing ran"


@pytest.mark.container
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "regression", "--gate-metric", "rsme"],
            "gate_metric 'rsme': a regression model's evaluation logs rmse, mae, r2",
        ),
        (["--target", "specis"], "target column 'specis' is not in 'penguins'; its columns"),
        (["--estimator", "random_forrest"], "unknown estimator 'random_forrest' for classif"),
        (
            ["--hyperparameters", '{"C2": 1}'],
            "unknown hyper-parameter(s) ['C2'] for estimator 'logistic_regression'",
        ),
    ],
)
def test_a_mistyped_option_stops_the_run_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_local(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not list(tmp_path.glob("train-to-serve-local-*"))  # nothing ran


def test_a_missing_batch_input_stops_the_run_before_anything_runs(tmp_path: Path) -> None:
    result = run_local(tmp_path, "--batch-instances", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2
    assert "--batch-instances" in result.stderr and "missing.jsonl" in result.stderr
    assert not list(tmp_path.glob("train-to-serve-local-*")), "nothing ran"

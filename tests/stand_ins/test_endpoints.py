"""Local endpoints: deploy a registered version as a real container, call it, undeploy it.

The container tests build the serving image once (``imaging.build_serving_image``,
no model baked in: the registry's copy is mounted and named by ``AIP_STORAGE_URI``) and
deploy the penguins model from a local registry. Without a working engine they are skipped
on a workstation and FAIL in CI (``CI=true``). Every test checks with the engine's ``ps``
that its endpoints left no container behind. ``pytest -m container -s`` shows timings.
"""

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import compile as cli
from components import stand_ins, vertex
from components.local_model_deploy import local_model_deploy
from components.runners import Engine
from components.stand_ins.resources import ENDPOINTS_PREFIX
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from tests.support.stand_ins import HEALTH_ROUTE, PREDICT_ROUTE, container_spec, upload_checked

TIMINGS: dict[str, float] = {}


# --- without a container ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, instances, parameters",
    [
        ("a.jsonl", '{"x": 1}\n\n[2, 3]\n', [{"x": 1}, [2, 3]], None),
        ("a.json", '[{"x": 1}, {"x": 2}]', [{"x": 1}, {"x": 2}], None),
        (
            "a.json",
            '{"instances": [1], "parameters": {"output": "label"}}',
            [1],
            {"output": "label"},
        ),
    ],
)
def test_instances_files(
    tmp_path: Path, name: str, text: str, instances: list[Any], parameters: Any
) -> None:
    (tmp_path / name).write_text(text)
    assert stand_ins.read_instances(tmp_path / name) == (instances, parameters)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.jsonl", '{"x": 1}\n{"x": \n', "line 2 is not valid JSON"),
        ("a.json", '{"x": 1}', r'a JSON list of instances or \{"instances"'),
        ("a.json", "[]", "holds no instances"),
        ("a.json", "[1,", "is not valid JSON"),
        ("a.csv", "x\n1\n", r"end in \.json or \.jsonl"),
    ],
)
def test_malformed_instances_files_are_named(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(stand_ins.EndpointInputError, match=message):
        stand_ins.read_instances(tmp_path / name)


def test_cli_names_unknown_endpoints_and_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoints = str(tmp_path / "endpoints")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "ok.jsonl").write_text("{}\n")

    assert cli.main(["endpoints", "undeploy", "123", "--endpoints-dir", endpoints]) == 2
    assert "no endpoint '123'" in capsys.readouterr().err
    args = ["endpoints", "predict", "123", "--endpoints-dir", endpoints, "--instances"]
    assert cli.main([*args, str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl line 1 is not valid JSON" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "ok.jsonl")]) == 2
    assert "(none deployed there)" in capsys.readouterr().err
    assert cli.main(["endpoints", "list", "--endpoints-dir", endpoints]) == 0
    assert "no endpoints in" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither an endpoint nor --all
        cli.main(["endpoints", "undeploy", "--endpoints-dir", endpoints])


# --- with the real container engine ----------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("endpoint-registry")


@pytest.fixture(scope="module")
def version(image: str, model_dir: Path, registry: Path) -> stand_ins.RegisteredVersion:
    """The penguins model registered with the spec the contract check emits."""
    return stand_ins.upload_model(registry, "penguins", model_dir, container_spec(image))


@pytest.fixture
def endpoints_dir(tmp_path: Path, engine: Engine) -> Iterator[Path]:
    """Where the test's endpoints are recorded; whatever a test leaves is undeployed after it,
    and no container of those endpoints may be left."""
    directory = tmp_path / "endpoints"
    yield directory
    left = stand_ins.list_endpoints(directory) if directory.exists() else []
    for endpoint in left:
        stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=directory)
        assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []


@pytest.fixture
def deploy(
    version: stand_ins.RegisteredVersion, registry: Path, endpoints_dir: Path
) -> Callable[..., stand_ins.LocalEndpoint]:
    """Deploy the registered penguins version to a new endpoint of the test's."""
    return lambda **options: stand_ins.deploy(
        version.resource_name, registry, endpoints_dir, **options
    )


def _samples(model_dir: Path) -> tuple[list[Any], list[Any]]:
    return (
        artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE),
        artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE),
    )


@pytest.mark.container
def test_deploy_predict_list_undeploy_leaves_nothing_running(
    engine: Engine, version: stand_ins.RegisteredVersion, registry: Path, endpoints_dir: Path
) -> None:
    started = time.monotonic()
    endpoint = stand_ins.deploy(version.model_name, registry, endpoints_dir)  # the default version
    TIMINGS["deploy (run to health 200)"] = time.monotonic() - started

    assert endpoint.model == version.resource_name
    assert endpoint.url == f"{endpoint.base_url}{PREDICT_ROUTE}"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint.base_url)
    record = json.loads((endpoints_dir / f"{endpoint.endpoint_id}.json").read_text())
    assert record["container_name"] == endpoint.container_name
    assert record["startup_seconds"] > 0

    instances, expected = _samples(version.model_dir)
    started = time.monotonic()
    response = stand_ins.predict(endpoint.endpoint_id, instances, endpoints_dir=endpoints_dir)
    TIMINGS["predict (sample instances)"] = time.monotonic() - started
    assert json_difference(expected, response["predictions"]) is None
    assert response["deployedModelId"] == endpoint.deployed_model_id
    assert response["model"] == version.model_name
    assert response["modelVersionId"] == version.version_id

    assert stand_ins.list_endpoints(endpoints_dir) == [endpoint]
    assert stand_ins.container_status(endpoint) == "running"
    container = endpoint.container()
    env = dict(line.split("=", 1) for line in container.exec("env").stdout.splitlines())
    assert env["AIP_HTTP_PORT"] == "8080"
    assert env["AIP_HEALTH_ROUTE"] == HEALTH_ROUTE
    assert env["AIP_PREDICT_ROUTE"] == PREDICT_ROUTE
    assert env["AIP_STORAGE_URI"] == "/mnt/model"
    assert env["AIP_ENDPOINT_ID"] == env["AIP_MODEL_NAME"] == endpoint.endpoint_id
    assert env["AIP_DEPLOYED_MODEL_ID"] == env["AIP_VERSION_NAME"] == endpoint.deployed_model_id
    assert (env["AIP_MODE"], env["AIP_FRAMEWORK"]) == ("PREDICTION", "CUSTOM_CONTAINER")
    assert env["MODEL_HOME"] == "/mnt/model"  # $(AIP_STORAGE_URI) expanded
    assert container.exec("touch", "/mnt/model/x", check=False).returncode != 0  # read-only
    policy = engine.command(
        "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", container.id
    ).stdout.strip()
    assert policy == "on-failure"

    started = time.monotonic()
    seconds = stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints_dir)
    TIMINGS["undeploy (SIGTERM to removed)"] = time.monotonic() - started
    assert seconds is not None and seconds < vertex.GRACE_PERIOD_S  # the server honours SIGTERM
    assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []
    assert list(endpoints_dir.iterdir()) == []
    with pytest.raises(stand_ins.EndpointInputError, match="none deployed there"):
        stand_ins.predict(endpoint.endpoint_id, instances, endpoints_dir=endpoints_dir)


@pytest.mark.container
def test_cli_lists_predicts_with_parameters_and_undeploys_all(
    engine: Engine,
    version: stand_ins.RegisteredVersion,
    deploy: Callable[..., stand_ins.LocalEndpoint],
    endpoints_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = deploy(display_name="cli")
    where = ["--endpoints-dir", str(endpoints_dir)]

    assert cli.main(["endpoints", "list", *where]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["endpoint"] == endpoint.endpoint_id
    assert (row["display_name"], row["status"]) == ("cli", "running")
    assert row["url"] == endpoint.url

    instances, expected = _samples(version.model_dir)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": instances[:3]}))
    options = ["--instances", str(request), "--parameters", '{"output": "label"}']
    assert cli.main(["endpoints", "predict", endpoint.endpoint_id, *options, *where]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["predictions"] == [row["label"] for row in expected[:3]]

    shutil.copy(version.model_dir / artifact.INSTANCES_FILE, tmp_path / "instances.jsonl")
    options = ["--instances", str(tmp_path / "instances.jsonl")]
    assert cli.main(["endpoints", "predict", endpoint.resource_name, *options, *where]) == 0
    response = json.loads(capsys.readouterr().out)
    assert json_difference(expected, response["predictions"]) is None

    assert cli.main(["endpoints", "undeploy", "--all", *where]) == 0
    assert f"undeployed {endpoint.endpoint_id} (container stopped in" in capsys.readouterr().out
    assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []
    assert cli.main(["endpoints", "list", *where]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.container
def test_predict_on_a_stopped_container_says_so_and_undeploy_cleans_up(
    engine: Engine,
    deploy: Callable[..., stand_ins.LocalEndpoint],
    endpoints_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = deploy()
    engine.command("stop", endpoint.container_id)  # behind the endpoint's back
    (tmp_path / "one.json").write_text("[{}]")

    with pytest.raises(stand_ins.EndpointError, match=r"has stopped: exited \(code 0\)") as caught:
        stand_ins.predict(endpoint.endpoint_id, [{}], endpoints_dir=endpoints_dir)
    assert "compile.py endpoints undeploy" in str(caught.value)
    where = ["--endpoints-dir", str(endpoints_dir)]
    predict = [
        "endpoints",
        "predict",
        endpoint.endpoint_id,
        "--instances",
        str(tmp_path / "one.json"),
    ]
    assert cli.main([*predict, *where]) == 1
    assert "has stopped" in capsys.readouterr().err
    assert cli.main(["endpoints", "list", *where]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "exited (code 0)"

    assert stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints_dir) is None
    assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []


@pytest.mark.container
def test_a_server_that_crashes_at_start_fails_the_deploy_and_leaves_nothing(
    engine: Engine, image: str, model_dir: Path, registry: Path, endpoints_dir: Path
) -> None:
    spec = vertex.unmanaged_container_model_metadata(
        image,
        port=8080,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
        env={"SERVING_WORKERS": "0"},  # the server refuses this setting and exits
    )["containerSpec"]
    broken = stand_ins.upload_model(registry, "broken", model_dir, spec)

    started = time.monotonic()
    with pytest.raises(stand_ins.EndpointError, match="never became ready") as caught:
        stand_ins.deploy(broken.resource_name, registry, endpoints_dir, timeout_s=60)
    TIMINGS["failed deploy (crash, 3 restarts)"] = time.monotonic() - started
    message = str(caught.value)
    assert "exited with code" in message
    assert "SERVING_WORKERS" in message  # from the container's log
    endpoint_id = re.search(r"tts-endpoint-(\d+)", message)[1]
    assert stand_ins.labelled_containers(engine, endpoint_id) == []
    assert list(endpoints_dir.iterdir()) == []


@pytest.mark.container
def test_kfp_local_upload_then_deploy_and_the_endpoint_outlives_the_task(
    engine: Engine, image: str, model_dir: Path, tmp_path: Path, endpoints_dir: Path
) -> None:
    from kfp import dsl, local
    from kfp.dsl import Artifact

    spec = container_spec(image)

    @dsl.pipeline
    def serve(source: str, registry_dir: str, endpoints_dir: str) -> Artifact:
        uploaded = upload_checked(source, registry_dir, spec)
        deployed = local_model_deploy(
            model=uploaded.outputs["model"],
            registry_dir=registry_dir,
            endpoints_dir=endpoints_dir,
            endpoint_display_name="kfp-local",
        )
        return deployed.outputs["endpoint"]

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "runs"),
        raise_on_error=True,
    )
    started = time.monotonic()
    result = serve(
        source=str(model_dir),
        registry_dir=str(tmp_path / "registry"),
        endpoints_dir=str(endpoints_dir),
    ).output
    TIMINGS["kfp.local upload + deploy"] = time.monotonic() - started

    endpoint_id = result.metadata["resourceName"].rsplit("/", 1)[-1]
    assert result.metadata["resourceName"] == ENDPOINTS_PREFIX + endpoint_id
    assert result.metadata["model"].endswith("@1")
    assert result.uri == str(endpoints_dir / f"{endpoint_id}.json")
    instances, expected = _samples(model_dir)
    response = stand_ins.predict(endpoint_id, instances, endpoints_dir=endpoints_dir)
    assert json_difference(expected, response["predictions"]) is None
    assert stand_ins.get_endpoint(endpoint_id, endpoints_dir).display_name == "kfp-local"

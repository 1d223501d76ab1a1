"""Local endpoints: deploy registered versions as real containers behind the endpoint's router,
split the traffic between them, call them, undeploy them.

The container tests build the serving image once (``imaging.build_serving_image``,
no model baked in: the registry's copy is mounted and named by ``AIP_STORAGE_URI``) and
deploy the penguins model from a local registry. Without a working engine they are skipped
on a workstation and FAIL in CI (``CI=true``). Every test checks with the engine's ``ps``
that its endpoints left no container behind, and that their routers are gone.
``pytest -m container -s`` shows timings. The router itself is tested in ``test_router.py``.
"""

import json
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import compile as cli
from components import stand_ins, vertex
from components.local_model_deploy import local_model_deploy
from components.runners import Engine
from components.stand_ins import endpoints as le
from components.stand_ins.endpoint_records import LOCK_FILE
from components.stand_ins.resources import ENDPOINTS_PREFIX
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from tests.support.stand_ins import (
    HEALTH_ROUTE,
    PREDICT_ROUTE,
    container_spec,
    process_alive,
    upload_checked,
)

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
    where = ["--endpoints-dir", endpoints]
    assert cli.main(["endpoints", "traffic", "123", "--split", "1=100", *where]) == 2
    assert "no endpoint '123'" in capsys.readouterr().err
    assert cli.main(["endpoints", "traffic", "123", "--split", "1:100", *where]) == 2
    assert "write DEPLOYED_MODEL_ID=PERCENT" in capsys.readouterr().err
    assert cli.main(["endpoints", "rollback", "123", *where]) == 2
    assert "no endpoint '123'" in capsys.readouterr().err
    assert cli.main(["endpoints", "undeploy", "123", "--deployed-model", "4", *where]) == 2
    assert "no endpoint '123'" in capsys.readouterr().err
    assert cli.main(["endpoints", "undeploy", "--all", "--deployed-model", "4", *where]) == 2
    assert "leave out --all" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither an endpoint nor --all
        cli.main(["endpoints", "undeploy", "--endpoints-dir", endpoints])


def test_a_record_from_before_traffic_splits_reads_as_one_model_with_all_traffic(
    tmp_path: Path,
) -> None:
    old = {
        "endpoint_id": "1234",
        "display_name": "old",
        "deployed_model_id": "5678",
        "model": "projects/local/locations/local/models/9@1",
        "model_display_name": "penguins",
        "base_url": "http://127.0.0.1:1",
        "predict_route": "/predict",
        "health_route": "/health",
        "container_id": "c",
        "container_name": "tts-endpoint-1234",
        "image": "i",
        "engine": "podman",
        "create_time": "2026-01-01T00:00:00.000000Z",
        "startup_seconds": 1.5,
    }
    (tmp_path / "1234.json").write_text(json.dumps(old))
    (endpoint,) = stand_ins.list_endpoints(tmp_path)
    assert endpoint.traffic_split == {"5678": 100} and endpoint.router_port == 0
    (deployed,) = endpoint.deployed_models
    assert (deployed.id, deployed.version_id, deployed.ready) == ("5678", "1", True)


def test_an_unreadable_record_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "1234.json").write_text('{"endpoint_id": "1234"}')
    with pytest.raises(stand_ins.EndpointError, match=r"1234\.json is unreadable .*remove it"):
        stand_ins.get_endpoint("1234", tmp_path)


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
    and no container or router of those endpoints may be left."""
    directory = tmp_path / "endpoints"
    yield directory
    left = stand_ins.list_endpoints(directory) if directory.exists() else []
    for endpoint in left:
        stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=directory)
        assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []
        assert not process_alive(endpoint.router_pid)


def files_left(directory: Path) -> list[str]:
    """What an endpoints directory holds besides its lock file."""
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK_FILE)


@pytest.fixture
def deploy(
    version: stand_ins.RegisteredVersion, registry: Path, endpoints_dir: Path
) -> Callable[..., stand_ins.Deployment]:
    """Deploy the registered penguins version to an endpoint of the test's."""
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
    done = stand_ins.deploy(version.model_name, registry, endpoints_dir)  # the default version
    TIMINGS["deploy (new endpoint and router, run to health 200)"] = time.monotonic() - started
    endpoint, deployed = done.endpoint, done.deployed_model

    assert done.endpoint_created and done.traffic_before == {}
    assert endpoint.display_name == version.display_name
    assert deployed.model == version.resource_name
    assert endpoint.traffic_split == {deployed.id: 100}  # all of it: the only model
    assert endpoint.url == (
        f"{endpoint.base_url}/v1/{ENDPOINTS_PREFIX}{endpoint.endpoint_id}:predict"
    )
    assert deployed.url == f"{deployed.base_url}{PREDICT_ROUTE}"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint.base_url)
    assert endpoint.base_url != deployed.base_url
    record = json.loads((endpoints_dir / f"{endpoint.endpoint_id}.json").read_text())
    assert record["deployed_models"][0]["container_name"] == deployed.container_name
    assert record["deployed_models"][0]["startup_seconds"] > 0
    assert record["router_pid"] == endpoint.router_pid and process_alive(endpoint.router_pid)

    instances, expected = _samples(version.model_dir)
    started = time.monotonic()
    response = stand_ins.predict(endpoint.endpoint_id, instances, endpoints_dir=endpoints_dir)
    TIMINGS["predict (sample instances, through the router)"] = time.monotonic() - started
    assert json_difference(expected, response["predictions"]) is None
    assert response["deployedModelId"] == deployed.id
    assert response["model"] == version.model_name
    assert response["modelVersionId"] == version.version_id
    assert response["modelDisplayName"] == "penguins"

    assert stand_ins.list_endpoints(endpoints_dir) == [endpoint]
    assert stand_ins.container_status(deployed) == "running"
    assert stand_ins.router_status(endpoint, endpoints_dir) == "running"
    container = deployed.container()
    env = dict(line.split("=", 1) for line in container.exec("env").stdout.splitlines())
    assert env["AIP_HTTP_PORT"] == "8080"
    assert env["AIP_HEALTH_ROUTE"] == HEALTH_ROUTE
    assert env["AIP_PREDICT_ROUTE"] == PREDICT_ROUTE
    assert env["AIP_STORAGE_URI"] == "/mnt/model"
    assert env["AIP_ENDPOINT_ID"] == env["AIP_MODEL_NAME"] == endpoint.endpoint_id
    assert env["AIP_DEPLOYED_MODEL_ID"] == env["AIP_VERSION_NAME"] == deployed.id
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
    assert not process_alive(endpoint.router_pid)
    assert files_left(endpoints_dir) == []  # no record, no router log
    with pytest.raises(stand_ins.EndpointInputError, match="none deployed there"):
        stand_ins.predict(endpoint.endpoint_id, instances, endpoints_dir=endpoints_dir)


@pytest.mark.container
def test_cli_lists_predicts_with_parameters_and_undeploys_all(
    engine: Engine,
    version: stand_ins.RegisteredVersion,
    deploy: Callable[..., stand_ins.Deployment],
    endpoints_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = deploy(display_name="cli").endpoint
    where = ["--endpoints-dir", str(endpoints_dir)]

    assert cli.main(["endpoints", "list", *where]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["endpoint"] == endpoint.endpoint_id
    assert (row["display_name"], row["router"]) == ("cli", "running")
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
    assert not process_alive(endpoint.router_pid)
    assert cli.main(["endpoints", "list", *where]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.container
def test_a_container_with_grpc_ports_answers_cli_predict_over_grpc_as_over_http(
    engine: Engine,
    image: str,
    model_dir: Path,
    registry: Path,
    endpoints_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = container_spec(image)  # as the contract check emits it with gRPC on
    spec["grpcPorts"] = [{"containerPort": 8081}]
    spec["env"].append({"name": vertex.GRPC_PORT_VARIABLE, "value": "8081"})
    version = stand_ins.upload_model(registry, "penguins-grpc", model_dir, spec)
    done = stand_ins.deploy(version.resource_name, registry, endpoints_dir)
    endpoint, deployed = done.endpoint, done.deployed_model
    published = engine.command("port", deployed.container_id, "8081/tcp").stdout.strip()
    assert deployed.grpc_target == published != endpoint.grpc_target
    env = deployed.container().exec("env").stdout.splitlines()
    assert f"{vertex.GRPC_PORT_VARIABLE}=8081" in env
    where = ["--endpoints-dir", str(endpoints_dir)]
    assert cli.main(["endpoints", "list", *where]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["grpc"] == endpoint.grpc_target
    assert row["deployed_models"][0]["grpc"] == deployed.grpc_target

    shutil.copy(version.model_dir / artifact.INSTANCES_FILE, tmp_path / "instances.jsonl")
    predict = ["endpoints", "predict", endpoint.endpoint_id, *where]
    predict += ["--instances", str(tmp_path / "instances.jsonl")]
    assert cli.main(predict) == 0
    over_http = json.loads(capsys.readouterr().out)
    started = time.monotonic()
    assert cli.main([*predict, "--grpc"]) == 0
    TIMINGS["endpoints predict --grpc (sample instances, container)"] = time.monotonic() - started
    over_grpc = json.loads(capsys.readouterr().out)
    assert over_grpc == over_http
    assert over_grpc["deployedModelId"] == deployed.id
    _, expected = _samples(version.model_dir)
    assert json_difference(expected, over_grpc["predictions"]) is None


@pytest.mark.container
def test_predict_on_a_stopped_container_says_so_and_undeploy_cleans_up(
    engine: Engine,
    deploy: Callable[..., stand_ins.Deployment],
    endpoints_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    done = deploy()
    endpoint, deployed = done.endpoint, done.deployed_model
    engine.command("stop", deployed.container_id)  # behind the endpoint's back
    (tmp_path / "one.json").write_text("[{}]")

    with pytest.raises(stand_ins.EndpointError, match=r"has stopped: exited \(code 0\)") as caught:
        stand_ins.predict(endpoint.endpoint_id, [{}], endpoints_dir=endpoints_dir)
    assert f"deployed model {deployed.id} at {deployed.url} failed before answering" in (
        str(caught.value)
    )
    assert f"compile.py endpoints undeploy {endpoint.endpoint_id} --deployed-model" in (
        str(caught.value)
    )
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
    (listed,) = json.loads(capsys.readouterr().out)["deployed_models"]
    assert (listed["id"], listed["status"], listed["traffic"]) == (
        deployed.id,
        "exited (code 0)",
        100,
    )

    assert stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints_dir) is None
    assert stand_ins.labelled_containers(engine, endpoint.endpoint_id) == []


@pytest.fixture(scope="module")
def broken(image: str, model_dir: Path, registry: Path) -> stand_ins.RegisteredVersion:
    """A version whose server exits at start."""
    spec = vertex.unmanaged_container_model_metadata(
        image,
        port=8080,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
        env={"SERVING_WORKERS": "0"},  # the server refuses this setting and exits
    )["containerSpec"]
    return stand_ins.upload_model(registry, "broken", model_dir, spec)


@pytest.mark.container
def test_a_server_that_crashes_at_start_fails_the_deploy_and_leaves_nothing(
    engine: Engine, broken: stand_ins.RegisteredVersion, registry: Path, endpoints_dir: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(stand_ins.EndpointError, match="never became ready") as caught:
        stand_ins.deploy(broken.resource_name, registry, endpoints_dir, timeout_s=60)
    TIMINGS["failed deploy (crash, 3 restarts)"] = time.monotonic() - started
    message = str(caught.value)
    assert "exited with code" in message
    assert "SERVING_WORKERS" in message  # from the container's log
    endpoint_id = re.search(r"tts-endpoint-(\d+)", message)[1]
    assert stand_ins.labelled_containers(engine, endpoint_id) == []
    assert files_left(endpoints_dir) == []  # the endpoint it created is gone, router and all


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
    (deployed,) = stand_ins.get_endpoint(endpoint_id, endpoints_dir).deployed_models
    assert result.metadata["deployedModelId"] == deployed.id
    assert result.metadata["trafficAfter"] == {deployed.id: 100}  # the first model: all
    assert Path(result.metadata["endpointsDir"]) == endpoints_dir.resolve()


@pytest.mark.container
def test_two_versions_share_an_endpoint_by_the_split_set_rolled_back_and_undeployed_by_the_cli(
    engine: Engine,
    version: stand_ins.RegisteredVersion,
    broken: stand_ins.RegisteredVersion,
    registry: Path,
    endpoints_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    second = stand_ins.upload_model(
        registry,
        "penguins",
        version.model_dir,
        version.container_spec,
        parent_model=version.model_name,
    )
    first = stand_ins.deploy(version.resource_name, registry, endpoints_dir, display_name="two")
    started = time.monotonic()
    canary = stand_ins.deploy(
        second.resource_name, registry, endpoints_dir, display_name="two", traffic_percent=20
    )
    TIMINGS["deploy a second version to the endpoint"] = time.monotonic() - started
    endpoint = canary.endpoint
    old, new = first.deployed_model.id, canary.deployed_model.id
    assert not canary.endpoint_created and endpoint.endpoint_id == first.endpoint.endpoint_id
    assert endpoint.router_pid == first.endpoint.router_pid
    assert canary.traffic_before == {old: 100}
    assert endpoint.traffic_split == {old: 80, new: 20}
    assert [d.id for d in endpoint.deployed_models] == [old, new]

    instances, expected = _samples(version.model_dir)

    def versions(count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            answer = stand_ins.predict(
                endpoint.endpoint_id, instances[:1], endpoints_dir=endpoints_dir
            )
            assert json_difference(expected[:1], answer["predictions"]) is None
            assert answer["modelVersionId"] == {old: "1", new: "2"}[answer["deployedModelId"]]
            seen[answer["deployedModelId"]] += 1
        return seen

    assert versions(50) == {old: 40, new: 10}
    exchange = stand_ins.raw_predict(
        endpoint.endpoint_id,
        json.dumps({"instances": instances[:1]}).encode(),
        deployed_model_id=new,
        endpoints_dir=endpoints_dir,
    )
    assert exchange.ok and exchange.headers["x-vertex-ai-deployed-model-id"] == new
    assert exchange.headers["x-vertex-ai-model-version-id"] == "2"

    where = ["--endpoints-dir", str(endpoints_dir)]
    assert cli.main(["endpoints", "list", *where]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["endpoint"], row["router"]) == (endpoint.endpoint_id, "running")
    assert row["traffic_split"] == {old: 80, new: 20}
    rows = [(version, old, 80), (second, new, 20)]  # no grpcPorts: no gRPC address
    assert row["deployed_models"] == [
        {"id": i, "model": v.resource_name, "status": "running", "traffic": t, "grpc": None}
        for v, i, t in rows
    ]

    # A deploy that fails on the endpoint leaves it as it was.
    with pytest.raises(stand_ins.EndpointError, match="never became ready"):
        stand_ins.deploy(
            broken.resource_name, registry, endpoints_dir, endpoint_id=endpoint.endpoint_id
        )
    assert stand_ins.get_endpoint(endpoint.endpoint_id, endpoints_dir) == endpoint
    assert len(stand_ins.labelled_containers(engine, endpoint.endpoint_id)) == 2

    traffic = ["endpoints", "traffic", endpoint.endpoint_id, *where]
    assert cli.main([*traffic, "--split", f"{old}=10,{new}=90"]) == 0
    assert capsys.readouterr().out == (
        f"endpoint {endpoint.endpoint_id}: traffic {new}=90,{old}=10 (was {old}=80,{new}=20)\n"
    )
    assert versions(10) == {old: 1, new: 9}
    assert cli.main([*traffic, "--split", f"{old}=10,{new}=85"]) == 2
    assert "adds up to 95%, not 100%" in capsys.readouterr().err
    assert cli.main(["endpoints", "rollback", endpoint.endpoint_id, *where]) == 0
    assert f"traffic {old}=80,{new}=20" in capsys.readouterr().out
    assert versions(10) == {old: 8, new: 2}

    # Undeploying the first version under load fails no request: its share goes to the
    # second, the router stops picking it, then its server drains and stops.
    failures: list[str] = []
    answered: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                answer = stand_ins.predict(
                    endpoint.endpoint_id, instances[:1], endpoints_dir=endpoints_dir
                )
                answered[answer["deployedModelId"]] += 1
            except stand_ins.EndpointError as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    undeploy = ["endpoints", "undeploy", endpoint.endpoint_id, "--deployed-model", old, *where]
    try:
        assert cli.main(undeploy) == 0
    finally:
        TIMINGS["undeploy one deployed model under load"] = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join()
    assert f"undeployed {old} from {endpoint.endpoint_id} (container stopped in" in (
        capsys.readouterr().out
    )
    assert failures == [] and answered[old] > 0 and answered[new] > 0
    assert engine.labelled(f"{le.DEPLOYED_MODEL_LABEL}={old}") == []
    now = stand_ins.get_endpoint(endpoint.endpoint_id, endpoints_dir)
    assert now.traffic_split == {new: 100} and [d.id for d in now.deployed_models] == [new]
    assert versions(3) == {new: 3}

    assert cli.main(["endpoints", "rollback", endpoint.endpoint_id, *where]) == 2
    assert "cannot be restored" in capsys.readouterr().err  # it names the undeployed model
    assert (
        cli.main(["endpoints", "undeploy", endpoint.endpoint_id, "--deployed-model", "9", *where])
        == 2
    )
    assert f"has no deployed model '9' (deployed: {new})" in capsys.readouterr().err

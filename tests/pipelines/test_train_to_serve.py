"""The compiled train-to-serve pipeline, read as Vertex AI Pipelines would read it.

The DAG order, the evaluation gate and the parameters are checked in the YAML; then GCPC's own
launcher code (the upload and batch-prediction remote runners that run inside GCPC's image on
Vertex) is run on the executor input our pipeline produces, with only the one API call that
would leave this machine patched to capture its request.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import BatchPredictionJob, JobState, ModelContainerSpec
from google.protobuf import json_format
from google_cloud_pipeline_components.container.v1.batch_prediction_job import (
    remote_runner as batch_runner,
)
from google_cloud_pipeline_components.container.v1.endpoint.deploy_model import (
    remote_runner as deploy_runner,
)
from google_cloud_pipeline_components.container.v1.gcp_launcher import lro_remote_runner
from google_cloud_pipeline_components.container.v1.model.upload_model import (
    remote_runner as upload_runner,
)

import compile as cli
from components.vertex import (
    GRPC_PORT_VARIABLE,
    startup_probe,
    unmanaged_container_model_metadata,
)

RUN_VALUES = {
    "project": "my-project",
    "location": "europe-west4",
    "staging_bucket": "gs://my-bucket/staging",
    "batch_gcs_source_uris": ["gs://my-bucket/batch/input.jsonl"],
    "batch_output_uri_prefix": "gs://my-bucket/batch/out",
    "model_display_name": "penguins-classifier",
    "resource_labels": {"team": "ml", "run": "nightly"},
}
IMAGE = "europe-west4-docker.pkg.dev/my-project/train-to-serve/serving@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("compiled")
    assert (
        cli.main(
            [
                "compile",
                "--output",
                str(out / "pipeline.yaml"),
                "--project",
                "my-project",
                "--region",
                "europe-west4",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "components").iterdir()) == [
        "build_and_check.yaml",
        "build_image.yaml",
        "canary_traffic_split.yaml",
        "contract_check.yaml",
        "endpoint_get_or_create.yaml",
        "evaluation_gate.yaml",
        "package_model.yaml",
        "promote.yaml",
        "roll_back.yaml",
        "set_autoscaling.yaml",
        "smoke_test.yaml",
        "train.yaml",
    ]
    return yaml.safe_load((out / "pipeline.yaml").read_text())


def _tasks(spec: dict, component: str = "root") -> dict[str, dict]:
    """Every task in the DAG, flattened across condition groups: name -> task (+ its group)."""
    dag = spec["root"]["dag"] if component == "root" else spec["components"][component]["dag"]
    found = {}
    for name, task in dag["tasks"].items():
        ref = task["componentRef"]["name"]
        found[name] = {**task, "group": component}
        if "dag" in spec["components"][ref]:
            found.update(_tasks(spec, ref))
    return found


def _upstream(tasks: dict, name: str) -> set[str]:
    """All tasks ``name`` transitively depends on, through condition groups too."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        task = tasks[todo.pop()]
        deps = set(task.get("dependentTasks", []))
        if task["group"] != "root":
            deps.add(
                next(n for n, t in tasks.items() if t["componentRef"]["name"] == task["group"])
            )
        for dep in deps - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_dag_order(spec: dict) -> None:
    tasks = _tasks(spec)
    by_component = {n: t["componentRef"]["name"] for n, t in tasks.items()}
    uploads = [n for n, c in by_component.items() if c.startswith("comp-model-upload")]
    assert len(uploads) == 2  # new model, or new version of parent_model
    for upload in uploads:
        assert {"train", "build-and-check", "evaluation-gate"} <= _upstream(tasks, upload)
    assert "train" in _upstream(tasks, "build-and-check")
    # On Vertex no task checks an image it did not build: no process-mode contract check.
    assert not {"build-image", "contract-check"} & set(tasks)
    deploy, batch, gpu_batch = "model-deploy", "model-batch-predict-2", "model-batch-predict"
    for task in (deploy, batch):
        assert "evaluation-gate" in _upstream(tasks, task)
        # upload feeds both, through dsl.OneOf of the two upload branches
        model_input = tasks[task]["inputs"]["artifacts"]["model"]
        assert "taskOutputArtifact" in model_input or "componentInputArtifact" in model_input
    for one, other in [(deploy, batch), (deploy, gpu_batch)]:
        assert one not in _upstream(tasks, other) and other not in _upstream(tasks, one)
    assert "endpoint-get-or-create" not in _upstream(tasks, batch)
    # A TensorFlow model's batch job: the GPU variant of the image, checked, after the gate.
    assert tasks[gpu_batch]["inputs"]["artifacts"] == {
        "unmanaged_container_model": {
            "taskOutputArtifact": {
                "outputArtifactKey": "unmanaged_container_model",
                "producerTask": "build-and-check-2",
            }
        }
    }
    assert "evaluation-gate" in _upstream(tasks, "build-and-check-2")
    assert tasks["build-and-check-2"]["inputs"]["parameters"]["gpu"] == {
        "runtimeValue": {"constant": True}
    }
    conditions = {_condition(spec, tasks, task) for task in (gpu_batch, batch)}
    assert conditions == {
        "inputs.parameter_values['pipelinechannel--framework'] == 'tensorflow'",
        "!(inputs.parameter_values['pipelinechannel--framework'] == 'tensorflow')",
    }


def _condition(spec: dict, tasks: dict, name: str) -> str:
    """The trigger condition of the condition group a task sits in."""
    group = tasks[name]["group"]
    parent = next(t for t in tasks.values() if t["componentRef"]["name"] == group)
    return parent["triggerPolicy"]["condition"]


def test_rollout_steps_in_order(spec: dict) -> None:
    """Deploy at the canary's split, the smoke test through the endpoint, then promote on a
    pass (the only step that moves the alias) or roll back on a failure."""
    tasks = _tasks(spec)
    deploy = "model-deploy"
    assert "canary-traffic-split" in _upstream(tasks, deploy)
    assert tasks[deploy]["inputs"]["parameters"]["traffic_split"] == {
        "taskOutputParameter": {
            "outputParameterKey": "traffic_split",
            "producerTask": "canary-traffic-split",
        }
    }
    assert deploy in _upstream(tasks, "smoke-test")
    for step in ("promote", "roll-back"):
        assert {"smoke-test", deploy} <= _upstream(tasks, step)
        inputs = tasks[step]["inputs"]
        assert inputs["parameters"]["traffic_before"] == {
            "componentInputParameter": "pipelinechannel--canary-traffic-split-traffic_before"
        }
    assert _condition(spec, tasks, "promote") == (
        "inputs.parameter_values['pipelinechannel--smoke-test-Output'] == true"
    )
    assert _condition(spec, tasks, "roll-back") == (
        "!(inputs.parameter_values['pipelinechannel--smoke-test-Output'] == true)"
    )
    assert tasks["promote"]["inputs"]["parameters"]["keep_previous"] == {
        "componentInputParameter": "pipelinechannel--keep_previous_deployments"
    }
    # The upload does not move ``default``: the version aliases are the user's extra ones.
    for upload in ("model-upload", "model-upload-2"):
        assert tasks[upload]["inputs"]["parameters"]["version_aliases"] == {
            "componentInputParameter": "pipelinechannel--version_aliases"
        }


def test_the_autoscaling_target_is_set_between_the_deploy_and_the_smoke_test(spec: dict) -> None:
    """GCPC's deploy takes no autoscaling target: ``set-autoscaling`` sets it on the deployed
    model (the endpoint and the version the deploy got), with the run's replica range, before
    the smoke test, inside the gate."""
    tasks = _tasks(spec)
    step = tasks["set-autoscaling"]
    assert step["componentRef"]["name"] == "comp-set-autoscaling"
    assert "model-deploy" in step["dependentTasks"]
    assert "model-deploy" in _upstream(tasks, "set-autoscaling")
    assert "set-autoscaling" in tasks["smoke-test"]["dependentTasks"]
    assert "smoke-test" not in _upstream(tasks, "set-autoscaling")
    assert tasks["set-autoscaling"]["group"] == tasks["model-deploy"]["group"]
    assert step["inputs"]["parameters"] == {
        "cpu_target": {"componentInputParameter": "pipelinechannel--deploy_autoscaling_target"},
        "min_replicas": {"componentInputParameter": "pipelinechannel--deploy_min_replicas"},
        "max_replicas": {"componentInputParameter": "pipelinechannel--deploy_max_replicas"},
    }
    # the same endpoint and model artifacts the deploy and the smoke test take
    for name in ("endpoint", "model"):
        source = step["inputs"]["artifacts"][name]
        assert source == tasks["model-deploy"]["inputs"]["artifacts"][name]
        assert source == tasks["smoke-test"]["inputs"]["artifacts"][name]
    run = {
        **RUN_VALUES,
        "deploy_autoscaling_target": 45,
        "deploy_min_replicas": 2,
        "deploy_max_replicas": 7,
    }
    inputs = _task_inputs(spec, "exec-set-autoscaling", run)
    assert (inputs["cpu_target"], inputs["min_replicas"], inputs["max_replicas"]) == (45, 2, 7)
    assert _task_inputs(spec, "exec-set-autoscaling", RUN_VALUES)["cpu_target"] == 0


def test_gcpc_deploy_request_carries_the_canary_split(spec: dict, tmp_path: Path) -> None:
    """GCPC's own deploy launcher, given the split ``canary_traffic_split`` computes for an
    endpoint serving one model, sends Vertex's ``DeployModelRequest`` with it."""
    from components.rollout import deploy_traffic_split

    endpoint = "projects/my-project/locations/europe-west4/endpoints/77"
    model = "projects/my-project/locations/europe-west4/models/42@4"
    split = deploy_traffic_split({"111": 100}, ["111"], 10)
    inputs = {**_task_inputs(spec, "exec-model-deploy", RUN_VALUES), "traffic_split": split}
    artifacts = {
        "model": {"uri": model, "metadata": {"resourceName": model}},
        "endpoint": {"uri": endpoint, "metadata": {"resourceName": endpoint}},
    }
    payload = _payload(spec, "exec-model-deploy", inputs, artifacts)
    sent = {}

    def create_lro(self, url, request, gcp_resources):
        sent["url"], sent["request"] = url, json.loads(request)
        return {"name": "operations/1"}

    with (
        mock.patch.object(lro_remote_runner.LroRemoteRunner, "create_lro", create_lro),
        mock.patch.object(lro_remote_runner.LroRemoteRunner, "poll_lro", return_value={}),
        mock.patch("google.auth.default", return_value=(AnonymousCredentials(), "my-project")),
    ):
        deploy_runner.deploy_model(
            type="DeployModel",
            project="my-project",
            location="europe-west4",
            payload=payload,
            gcp_resources=str(tmp_path / "gcp_resources"),
        )
    assert (
        sent["url"] == f"https://europe-west4-aiplatform.googleapis.com/v1/{endpoint}:deployModel"
    )
    request = sent["request"]
    assert request["endpoint"] == endpoint
    assert request["traffic_split"] == {"111": 90, "0": 10}
    assert request["deployed_model"]["model"] == model
    resources = request["deployed_model"]["dedicated_resources"]
    assert resources["machine_spec"]["machine_type"] == "n1-standard-2"
    assert resources["min_replica_count"] == 1


def test_upload_takes_its_container_spec_only_from_a_passing_checked_build(spec: dict) -> None:
    """Every upload's (and the GPU batch job's) ``unmanaged_container_model`` is the output of
    ``build_and_check``, which writes it only when the check of the pushed digest passed, and
    whose check runs in the components image, strictly."""
    tasks = _tasks(spec)
    image = "europe-west4-docker.pkg.dev/my-project/train-to-serve/components:0.1.0"
    for name in ("build-and-check", "build-and-check-2"):
        parameters = tasks[name]["inputs"]["parameters"]
        assert parameters["checker_image"] == {"runtimeValue": {"constant": image}}
        assert parameters["strict"] == {"runtimeValue": {"constant": True}}
    consumers = {
        name: task["inputs"]["artifacts"]["unmanaged_container_model"]
        for name, task in tasks.items()
        if "unmanaged_container_model" in task.get("inputs", {}).get("artifacts", {})
    }
    assert len(consumers) == 3  # two uploads (new model, new version), the GPU batch job
    for name, source in consumers.items():
        group = tasks[name]["group"]
        while "componentInputArtifact" in source:  # passed into a condition group: follow it
            parent = next(t for t in tasks.values() if t["componentRef"]["name"] == group)
            source = parent["inputs"]["artifacts"][source["componentInputArtifact"]]
            group = parent["group"]
        producer = source["taskOutputArtifact"]["producerTask"]
        assert tasks[producer]["componentRef"]["name"].startswith("comp-build-and-check"), name


def test_the_gate_guards_upload_deploy_and_batch(spec: dict) -> None:
    root = spec["root"]["dag"]["tasks"]
    gate_groups = [t for t in root.values() if "triggerPolicy" in t]
    assert len(gate_groups) == 1
    condition = gate_groups[0]["triggerPolicy"]["condition"]
    assert "evaluation-gate" in condition and "== true" in condition
    inside = {n for n, t in _tasks(spec).items() if t["group"] != "root"}
    assert {
        "model-deploy",
        "model-batch-predict",
        "model-batch-predict-2",
        "endpoint-get-or-create",
        "canary-traffic-split",
        "set-autoscaling",
        "smoke-test",
        "promote",
        "roll-back",
        "build-and-check-2",
    } <= inside
    assert not {"train", "build-and-check", "evaluation-gate"} & inside


def test_the_local_backend_compiles_the_same_dag_with_the_stand_ins(tmp_path: Path) -> None:
    from kfp import compiler

    from pipelines.train_to_serve import build_pipeline

    compiler.Compiler().compile(build_pipeline(backend="local"), str(tmp_path / "local.yaml"))
    local = yaml.safe_load((tmp_path / "local.yaml").read_text())
    tasks = _tasks(local)
    first_half = {"train", "build-image", "contract-check", "capacity-check", "evaluation-gate"}
    upload, deploy, batch = "local-model-upload", "local-model-deploy", "local-batch-predict"
    # The capacity step measures the checked image; the gate waits for it; batch takes its
    # advice (used when the run leaves batch_size unset: 0).
    assert "contract-check" in _upstream(tasks, "capacity-check")
    assert "capacity-check" in _upstream(tasks, "evaluation-gate")
    assert tasks[batch]["inputs"]["parameters"]["advised_batch_size"] == {
        "componentInputParameter": "pipelinechannel--capacity-check-batch_size"
    }
    rollout = {"smoke-test", "promote", "roll-back"}
    assert set(tasks) == first_half | {upload, deploy, batch} | rollout | {
        n for n, t in tasks.items() if n.startswith("condition")
    }
    # The same rollout as on Vertex, after the local deploy: its split before goes on.
    assert deploy in _upstream(tasks, "smoke-test")
    for step in ("promote", "roll-back"):
        assert "smoke-test" in _upstream(tasks, step)
        assert tasks[step]["inputs"]["parameters"]["traffic_before"] == {
            "componentInputParameter": "pipelinechannel--local-model-deploy-traffic_before"
        }
    assert tasks[deploy]["inputs"]["parameters"]["canary_traffic_percent"] == {
        "componentInputParameter": "pipelinechannel--canary_traffic_percent"
    }
    assert first_half <= _upstream(tasks, upload)
    for task in (deploy, batch):
        assert upload in _upstream(tasks, task)
    assert deploy not in _upstream(tasks, batch) and batch not in _upstream(tasks, deploy)
    inside = {n for n, t in tasks.items() if t["group"] != "root"}
    assert {upload, deploy, batch} <= inside and not first_half & inside
    checked = tasks[upload]["inputs"]["artifacts"]["unmanaged_container_model"]
    # inside the gate's condition group, passed in from the contract check's output
    assert checked == {
        "componentInputArtifact": "pipelinechannel--contract-check-unmanaged_container_model"
    }


def test_an_unknown_backend_is_refused() -> None:
    from pipelines.train_to_serve import build_pipeline

    with pytest.raises(ValueError, match="unknown backend 'kubeflow'"):
        build_pipeline(backend="kubeflow")


def test_parameters(spec: dict) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    required = sorted(n for n, p in params.items() if "defaultValue" not in p)
    assert required == ["batch_output_uri_prefix", "project", "staging_bucket"]
    defaults = {n: p.get("defaultValue") for n, p in params.items()}
    assert defaults["location"] == "us-central1"
    assert defaults["batch_machine_type"] == "n1-standard-8"
    assert defaults["batch_accelerator_type"] == "NVIDIA_TESLA_T4"
    assert defaults["batch_accelerator_count"] == 1
    assert defaults["version_aliases"] == []  # default moves only after the smoke test
    assert defaults["canary_traffic_percent"] == 0
    assert defaults["deploy_autoscaling_target"] == 0  # Vertex's default target
    assert defaults["promote"] == "all"
    assert defaults["keep_previous_deployments"] is False
    assert defaults["gate_metric"] == "accuracy"


def test_location_is_passed_to_every_vertex_op(spec: dict) -> None:
    for name, task in _tasks(spec).items():
        ref = task["componentRef"]["name"]
        if ref in (
            "comp-model-upload",
            "comp-model-upload-2",
            "comp-endpoint-get-or-create",
            "comp-model-batch-predict",
            "comp-model-batch-predict-2",
        ):
            location = task["inputs"]["parameters"]["location"]
            assert location == {"componentInputParameter": "pipelinechannel--location"}, name


def test_our_tasks_run_in_the_components_image(spec: dict) -> None:
    executors = spec["deploymentSpec"]["executors"]
    ours = [
        "exec-train",
        "exec-build-and-check",
        "exec-evaluation-gate",
        "exec-build-and-check-2",  # the GPU variant for a TensorFlow model's batch job
        "exec-endpoint-get-or-create",
        "exec-canary-traffic-split",
        "exec-set-autoscaling",
        "exec-smoke-test",
        "exec-promote",
        "exec-roll-back",
    ]
    for name in ours:
        assert executors[name]["container"]["image"] == (
            "europe-west4-docker.pkg.dev/my-project/train-to-serve/components:0.1.0"
        )
    gcpc = {
        e["container"]["image"]
        for n, e in executors.items()
        if n not in ours and "importer" not in e
    }
    assert gcpc == {"gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"}


# --- GCPC's launchers on our executor input ---------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")


def _task_inputs(spec: dict, executor: str, run: dict) -> dict[str, Any]:
    """The parameter values one task receives, resolved through the condition groups."""
    params = spec["root"]["inputDefinitions"]["parameters"]
    env = {n: p.get("defaultValue") for n, p in params.items()} | run

    def walk(component: str, scope: dict) -> dict | None:
        dag = spec["root"]["dag"] if component == "root" else spec["components"][component]["dag"]
        for task in dag["tasks"].values():
            ref = task["componentRef"]["name"]
            target = spec["components"][ref]
            values = {
                n: p.get("defaultValue")
                for n, p in target.get("inputDefinitions", {}).get("parameters", {}).items()
            }
            for name, source in task.get("inputs", {}).get("parameters", {}).items():
                if "componentInputParameter" in source:
                    values[name] = scope[source["componentInputParameter"]]
                elif "runtimeValue" in source:
                    values[name] = source["runtimeValue"]["constant"]
            if "dag" in target:
                found = walk(ref, values)
                if found is not None:
                    return found
            elif target.get("executorLabel") == executor:
                return values
        return None

    found = walk("root", env)
    assert found is not None, executor
    return found


def _render(value: Any) -> str:
    """A parameter as Vertex's backend pastes it into a placeholder."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _evaluate(node: Any, inputs: dict, artifacts: dict) -> str:
    if isinstance(node, str):
        text = _PLACEHOLDER.sub(lambda m: _render(inputs[m.group(1)]), node)
        text = re.sub(
            r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}",
            lambda m: artifacts[m.group(1)]["metadata"][m.group(2)],
            text,
        )
        return text.replace("{{$.pipeline_job_uuid}}", "1234")
    if "Concat" in node:
        return "".join(_evaluate(part, inputs, artifacts) for part in node["Concat"])
    if "IfPresent" in node:
        clause = node["IfPresent"]
        present = clause["InputName"] in artifacts or inputs.get(clause["InputName"])
        return _evaluate(clause["Then"], inputs, artifacts) if present else ""
    raise AssertionError(f"unknown placeholder {node}")


def _payload(spec: dict, executor: str, inputs: dict, artifacts: dict) -> str:
    args = spec["deploymentSpec"]["executors"][executor]["container"]["args"]
    raw = args[args.index("--payload") + 1]
    return _evaluate(json.loads(raw), inputs, artifacts)


def _executor_input(tmp_path: Path, artifacts: dict, outputs: tuple[str, ...] = ()) -> str:
    return json.dumps(
        {
            "inputs": {
                "artifacts": {
                    name: {"artifacts": [{"uri": a["uri"], "metadata": a["metadata"]}]}
                    for name, a in artifacts.items()
                }
            },
            "outputs": {
                "outputFile": str(tmp_path / "executor_output.json"),
                "artifacts": {
                    name: {"artifacts": [{"name": name, "uri": f"gs://my-bucket/root/{name}"}]}
                    for name in outputs
                },
            },
        }
    )


def _launch(
    launcher: Callable[..., Any],
    request_type: str,
    inputs: dict[str, Any],
    payload: str,
    tmp_path: Path,
    artifacts: dict,
    outputs: tuple[str, ...] = (),
    **extra: Any,
) -> None:
    """Run a GCPC launcher as the task would, with anonymous credentials (the caller replaces
    the requests it sends)."""
    credentials = (AnonymousCredentials(), "my-project")
    with mock.patch("google.auth.default", return_value=credentials):
        launcher(
            type=request_type,
            project=inputs["project"],
            location=inputs["location"],
            payload=payload,
            gcp_resources=str(tmp_path / "gcp_resources"),
            executor_input=_executor_input(tmp_path, artifacts, outputs),
            **extra,
        )


@pytest.mark.parametrize("executor", ["exec-model-upload", "exec-model-upload-2"])
def test_gcpc_upload_request(spec: dict, tmp_path: Path, executor: str) -> None:
    metadata = unmanaged_container_model_metadata(
        IMAGE,
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env={"SERVING_LOG_LEVEL": "info"},
    )
    # kfp.local and Vertex hand numbers in artifact metadata over as floats.
    metadata["containerSpec"]["ports"] = [{"containerPort": 8080.0}]
    artifacts = {
        "unmanaged_container_model": {
            "uri": "gs://my-bucket/root/123/train/model",
            "metadata": metadata,
        }
    }
    parent = UPLOADED_MODEL
    if executor == "exec-model-upload":  # the new-version branch (see dsl.If)
        artifacts["parent_model"] = {"uri": parent, "metadata": {"resourceName": parent + "@3"}}
    sent = _upload(spec, executor, artifacts, tmp_path)
    assert sent["url"] == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project/locations/"
        "europe-west4/models:upload"
    )
    model = sent["request"]["model"]
    assert model["display_name"] == "penguins-classifier"
    assert model["artifact_uri"] == "gs://my-bucket/root/123/train/model"
    assert "version_aliases" not in model  # empty: GCPC drops it; default moves at promotion
    assert model["labels"] == {"team": "ml", "run": "nightly"}
    container = model["container_spec"]
    assert container["image_uri"] == IMAGE
    assert container["ports"] == [{"container_port": 8080.0}]
    assert container["predict_route"] == "/predict"
    assert container["health_route"] == "/health"
    assert container["env"] == [{"name": "SERVING_LOG_LEVEL", "value": "info"}]
    if executor == "exec-model-upload":
        assert sent["request"]["parent_model"] == parent  # version suffix stripped by GCPC
    else:
        assert "parent_model" not in sent["request"]
    output = json.loads((tmp_path / "executor_output.json").read_text())
    assert output["artifacts"]["model"]["artifacts"][0]["metadata"]["resourceName"] == (
        parent + "@4"
    )


UPLOADED_MODEL = "projects/my-project/locations/europe-west4/models/42"
"""The model ``_upload``'s answer names (version 4)."""


def _upload(spec: dict, executor: str, artifacts: dict, tmp_path: Path) -> dict[str, Any]:
    """Run GCPC's upload launcher on ``executor``'s payload and ``artifacts``; the url and
    request it sent to models.upload."""
    inputs = _task_inputs(spec, executor, RUN_VALUES)
    payload = _payload(spec, executor, inputs, artifacts)
    sent: dict[str, Any] = {}

    def create_lro(self, url, request, gcp_resources):
        sent["url"], sent["request"] = url, json.loads(request)
        return {"name": "operations/1"}

    poll = {"response": {"model": UPLOADED_MODEL, "modelVersionId": "4"}}
    with (
        mock.patch.object(lro_remote_runner.LroRemoteRunner, "create_lro", create_lro),
        mock.patch.object(lro_remote_runner.LroRemoteRunner, "poll_lro", return_value=poll),
    ):
        _launch(
            upload_runner.upload_model,
            "UploadModel",
            inputs,
            payload,
            tmp_path,
            artifacts,
            outputs=("model",),
            parent_model_name=artifacts.get("parent_model", {})
            .get("metadata", {})
            .get("resourceName"),
        )
    return sent


def test_gcpc_upload_request_carries_the_grpc_port_and_probes(spec: dict, tmp_path: Path) -> None:
    """A gRPC check's metadata through GCPC's own launcher: grpcPorts and the grpc probes
    arrive in the upload request field by field, as the aiplatform types read them."""
    metadata = unmanaged_container_model_metadata(
        IMAGE,
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env={GRPC_PORT_VARIABLE: "8081"},
        probe=startup_probe("/health", 8080, startup_deadline_s=600, grpc_port=8081),
        grpc_port=8081,
    )
    # kfp.local and Vertex hand numbers in artifact metadata over as floats.
    metadata = json.loads(json.dumps(metadata), parse_int=float)
    artifacts = {"unmanaged_container_model": {"uri": "gs://b/model", "metadata": metadata}}

    container = _upload(spec, "exec-model-upload-2", artifacts, tmp_path)["request"]["model"][
        "container_spec"
    ]

    assert container["grpc_ports"] == [{"container_port": 8081.0}]
    assert container["health_probe"]["grpc"] == {"port": 8081.0}  # GCPC drops the empty service
    parsed = ModelContainerSpec.pb(ModelContainerSpec())
    json_format.ParseDict(container, parsed)  # raises for a field models.upload does not know
    assert [port.container_port for port in parsed.grpc_ports] == [8081]
    assert [port.container_port for port in parsed.ports] == [8080]
    assert [(e.name, e.value) for e in parsed.env] == [("SERVING_GRPC_PORT", "8081")]
    health, startup = parsed.health_probe, parsed.startup_probe
    assert health.WhichOneof("probe_type") == startup.WhichOneof("probe_type") == "grpc"
    assert (health.grpc.port, health.grpc.service) == (8081, "")  # "": the whole server
    assert (health.period_seconds, health.timeout_seconds, health.failure_threshold) == (10, 10, 4)
    assert (startup.grpc.port, startup.period_seconds, startup.failure_threshold) == (8081, 10, 60)


def test_upload_display_name_is_checked_before_submit() -> None:
    from pipelines.train_to_serve import check_run_parameters

    values = {**_defaults(), **RUN_VALUES, "model_display_name": 'my "best" model'}
    with pytest.raises(ValueError, match="no quotes or backslashes"):
        check_run_parameters(values)


def _defaults() -> dict:
    from pipelines.train_to_serve import build_pipeline

    return {
        name: spec.default
        for name, spec in build_pipeline().component_spec.inputs.items()
        if spec.default is not None
    }


@pytest.mark.parametrize("framework", ["scikit-learn", "tensorflow"])
def test_gcpc_batch_prediction_request(spec: dict, tmp_path: Path, framework: str) -> None:
    run = {
        **RUN_VALUES,
        "batch_accelerator_count": 2,
        "batch_size": 200,
        "batch_replica_count": 3,
        "framework": framework,
    }
    model = "projects/my-project/locations/europe-west4/models/42@4"
    gpu_image = IMAGE.replace("serving@", "serving-gpu@")
    if framework == "tensorflow":  # the GPU image's checked UnmanagedContainerModel
        executor = "exec-model-batch-predict"
        metadata = unmanaged_container_model_metadata(
            gpu_image, port=8080, health_route="/health", predict_route="/predict"
        )
        artifacts = {
            "unmanaged_container_model": {"uri": "gs://my-bucket/root/model", "metadata": metadata}
        }
    else:  # the uploaded model version
        executor = "exec-model-batch-predict-2"
        artifacts = {"model": {"uri": "https://x/v1/" + model, "metadata": {"resourceName": model}}}
    inputs = _task_inputs(spec, executor, run)
    payload = _payload(spec, executor, inputs, artifacts)
    sent = {}

    def create(self, *, parent, batch_prediction_job, **_):
        sent["parent"], sent["job"] = parent, batch_prediction_job
        return BatchPredictionJob(name=f"{parent}/batchPredictionJobs/7")

    def get(self, *, name, **_):
        return BatchPredictionJob(name=name, state=JobState.JOB_STATE_SUCCEEDED)

    with (
        mock.patch.object(JobServiceClient, "create_batch_prediction_job", create),
        mock.patch.object(JobServiceClient, "get_batch_prediction_job", get),
    ):
        _launch(
            batch_runner.create_batch_prediction_job,
            "BatchPredictionJob",
            inputs,
            payload,
            tmp_path,
            artifacts,
        )
    assert sent["parent"] == "projects/my-project/locations/europe-west4"
    job = sent["job"]
    job = job if isinstance(job, dict) else BatchPredictionJob.to_dict(job)
    assert job["display_name"] == "penguins-classifier"
    if framework == "tensorflow":
        assert "model" not in job or not job["model"]
        unmanaged = job["unmanaged_container_model"]
        assert unmanaged["container_spec"]["image_uri"] == gpu_image
        assert unmanaged["artifact_uri"] == "gs://my-bucket/root/model"
    else:
        assert job["model"] == model
    assert job["input_config"]["instances_format"] == "jsonl"
    assert job["input_config"]["gcs_source"]["uris"] == ["gs://my-bucket/batch/input.jsonl"]
    assert job["output_config"]["predictions_format"] == "jsonl"
    assert job["output_config"]["gcs_destination"]["output_uri_prefix"] == (
        "gs://my-bucket/batch/out"
    )
    resources = job["dedicated_resources"]
    assert resources["machine_spec"]["machine_type"] == "n1-standard-8"
    if framework == "tensorflow":  # the GPU image on the GPU asked for
        assert resources["machine_spec"]["accelerator_type"] == "NVIDIA_TESLA_T4"
        assert resources["machine_spec"]["accelerator_count"] == 2
    else:  # a scikit-learn image on the CPU, whatever the accelerator parameters say
        assert not resources["machine_spec"].get("accelerator_type")
        assert not resources["machine_spec"].get("accelerator_count")
    assert resources["starting_replica_count"] == 3
    assert resources["max_replica_count"] == 3
    assert job["manual_batch_tuning_parameters"]["batch_size"] == 200
    assert job["labels"] == {"team": "ml", "run": "nightly"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"framework": "tensorflow", "batch_accelerator_count": 3},
            "n1-standard-8 takes [1, 2, 4] x NVIDIA_TESLA_T4",
        ),
        (
            {"framework": "tensorflow", "batch_machine_type": "e2-standard-8"},
            "cannot carry GPUs",
        ),
        ({"deploy_min_replicas": 0}, "deploy_min_replicas must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"staging_bucket": "my-bucket"}, "staging_bucket 'my-bucket' must be a gs:// URI"),
        ({"batch_gcs_source_uris": []}, "needs batch_gcs_source_uris"),
        ({"deploy_max_replicas": 0, "deploy_min_replicas": 1}, "deploy_max_replicas must be"),
        ({"grpc_port": 8080}, "grpc_port 8080: that is the HTTP port"),
        ({"grpc_port": 65536}, "grpc_port 65536: a port from 1 to 65535 (e.g. 8081), or 0"),
        ({"grpc_port": -1}, "grpc_port -1: a port from 1 to 65535"),
        ({"grpc_port": True}, "grpc_port True: a port from 1 to 65535"),
        (
            {"deploy_autoscaling_target": 101},
            "deploy_autoscaling_target 101: the CPU utilization target is a whole percent from "
            "1 to 100, or 0 for Vertex's default (60%)",
        ),
        ({"deploy_autoscaling_target": -5}, "deploy_autoscaling_target -5: the CPU utilization"),
        ({"deploy_autoscaling_target": 45.5}, "deploy_autoscaling_target 45.5: the CPU"),
    ],
)
def test_run_parameters_vertex_would_refuse(change: dict, message: str) -> None:
    from pipelines.train_to_serve import check_run_parameters

    with pytest.raises(ValueError) as caught:
        check_run_parameters({**_defaults(), **RUN_VALUES, **change})
    assert message in str(caught.value)


def test_a_gpu_asked_for_a_scikit_learn_models_batch_job_is_refused() -> None:
    from pipelines.train_to_serve import check_run_parameters

    values = {**_defaults(), **RUN_VALUES, "batch_accelerator_type": "NVIDIA_L4"}
    with pytest.raises(ValueError, match="batch_accelerator_type given for a scikit-learn model"):
        check_run_parameters(values, explicit={"batch_accelerator_type"})
    check_run_parameters(values)  # the pipeline's own default applies to TensorFlow only


def test_grpc_port_reaches_the_checked_builds_on_vertex_and_the_contract_check_locally(
    spec: dict, tmp_path: Path
) -> None:
    """The run's ``grpc_port`` is what both checked builds (the endpoint's image and the GPU
    batch image) and, locally, the contract check are given; its default, 0, is HTTP only."""
    from kfp import compiler

    from pipelines.train_to_serve import build_pipeline

    for executor in ("exec-build-and-check", "exec-build-and-check-2"):
        assert _task_inputs(spec, executor, RUN_VALUES)["grpc_port"] == 0
        assert _task_inputs(spec, executor, {**RUN_VALUES, "grpc_port": 8081})["grpc_port"] == 8081
    compiler.Compiler().compile(build_pipeline(backend="local"), str(tmp_path / "local.yaml"))
    local = yaml.safe_load((tmp_path / "local.yaml").read_text())
    assert _tasks(local)["contract-check"]["inputs"]["parameters"]["grpc_port"] == {
        "componentInputParameter": "grpc_port"
    }


def test_a_grpc_port_vertex_would_serve_is_accepted_and_run_local_checks_it_first(
    tmp_path: Path,
) -> None:
    from pipelines.local_run import LocalRunError, LocalRunOptions, run_local
    from pipelines.train_to_serve import check_run_parameters

    check_run_parameters({**_defaults(), **RUN_VALUES, "grpc_port": 8081})
    check_run_parameters({**_defaults(), **RUN_VALUES, "grpc_port": 0.0})  # a compiled default
    options = LocalRunOptions(tmp_path, parameters={"grpc_port": 8080}, serving="process")
    with pytest.raises(LocalRunError, match="grpc_port 8080: that is the HTTP port"):
        run_local(options)
    assert not list(tmp_path.iterdir()), "nothing ran"


def test_tasks_that_create_or_change_resources_are_never_cached(spec: dict) -> None:
    """A scheduled run with the same parameters retrains, rebuilds, uploads and deploys: only
    the gate and the importers (no resource made) may come from the cache."""
    tasks = _tasks(spec)
    leaves = {n for n, t in tasks.items() if not n.startswith("condition")}
    cached = {n for n in leaves if tasks[n].get("cachingOptions", {}).get("enableCache")}
    assert cached == {"evaluation-gate", "importer", "importer-2"}
    never = {"train", "build-and-check", "model-upload", "endpoint-get-or-create"}
    never |= {"model-deploy", "canary-traffic-split", "smoke-test", "promote", "roll-back"}
    never |= {"set-autoscaling"}
    never |= {"model-batch-predict"}
    assert never <= leaves - cached


def test_train_is_cached_only_when_compiled_so(tmp_path: Path) -> None:
    from pipelines.parameters import cached_tasks, caching_note

    out = tmp_path / "cached.yaml"
    assert cli.main(["compile", "--output", str(out), "--cache-training"]) == 0

    assert set(cached_tasks(out)) == {"importer", "importer-2", "evaluation-gate", "train"}
    assert caching_note(out, None).startswith("caching: only ")
    assert caching_note(out, False) == "caching: off for every task (--no-cache)"


def test_our_components_never_pip_install_at_run_time(spec: dict) -> None:
    """kfp is in the components image: no run needs PyPI (VPC Service Controls)."""
    executors = spec["deploymentSpec"]["executors"]
    image = "europe-west4-docker.pkg.dev/my-project/train-to-serve/components:0.1.0"
    ours = [e for e in executors.values() if e.get("container", {}).get("image") == image]
    assert ours
    for executor in ours:
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command and "kfp.dsl.executor_main" in command


def test_the_build_runs_as_the_identity_and_on_the_machine_given(spec: dict) -> None:
    run = {
        **RUN_VALUES,
        "build_service_account": "builder@my-project.iam.gserviceaccount.com",
        "build_machine_type": "E2_HIGHCPU_8",
        "base_image": "europe-west4-docker.pkg.dev/my-project/docker-hub/python:3.11-slim",
    }
    for executor in ("exec-build-and-check", "exec-build-and-check-2"):
        inputs = _task_inputs(spec, executor, run)
        assert inputs["service_account"] == run["build_service_account"]
        assert inputs["machine_type"] == "E2_HIGHCPU_8"
        assert inputs["base_image"] == run["base_image"]
    endpoint = _task_inputs(spec, "exec-endpoint-get-or-create", run)
    assert endpoint["labels"] == run["resource_labels"]

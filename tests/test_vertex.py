"""Vertex AI's contract as data: the environment it sets and the containerSpec upload reads."""

import pytest

from components import vertex


def test_vertex_environment_sets_every_aip_variable_of_the_contract():
    env = vertex.vertex_environment(8080, "/h", "/p", "/mnt/model", machine_type="n1-standard-2")
    assert env["AIP_HTTP_PORT"] == "8080"
    assert (env["AIP_HEALTH_ROUTE"], env["AIP_PREDICT_ROUTE"]) == ("/h", "/p")
    assert env["AIP_STORAGE_URI"] == "/mnt/model"
    assert env["AIP_MODE"] == "PREDICTION" and env["AIP_FRAMEWORK"] == "CUSTOM_CONTAINER"
    assert env["AIP_MODEL_NAME"] == env["AIP_ENDPOINT_ID"]
    assert env["AIP_VERSION_NAME"] == env["AIP_DEPLOYED_MODEL_ID"]
    assert env["AIP_MACHINE_TYPE"] == "n1-standard-2"
    assert all(env[name].isdigit() for name in ("AIP_ENDPOINT_ID", "AIP_PROJECT_NUMBER"))
    assert "AIP_ACCELERATOR_TYPE" not in env  # unset on a replica without a GPU
    assert vertex.DEFAULT_PREDICT_ROUTE == vertex.DEFAULT_HEALTH_ROUTE + ":predict"


def test_the_container_spec_is_what_model_upload_reads():
    metadata = vertex.unmanaged_container_model_metadata(
        "europe-docker.pkg.dev/p/r/server:1",
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env={"SERVING_WORKERS": "2"},
        probe=vertex.startup_probe("/health", 8080, startup_deadline_s=600),
    )
    assert metadata == {
        "containerSpec": {
            "imageUri": "europe-docker.pkg.dev/p/r/server:1",
            "ports": [{"containerPort": 8080}],
            "predictRoute": "/predict",
            "healthRoute": "/health",
            "env": [{"name": "SERVING_WORKERS", "value": "2"}],
            "startupProbe": {
                "httpGet": {"path": "/health", "port": 8080},
                "periodSeconds": 10,
                "timeoutSeconds": 10,
                "failureThreshold": 60,
            },
        },
        "predictSchemata": {},
    }
    small = vertex.unmanaged_container_model_metadata(
        "i", port=1, health_route="/h", predict_route="/p"
    )
    assert "env" not in small["containerSpec"] and "startupProbe" not in small["containerSpec"]


def test_with_grpc_the_spec_declares_the_port_and_probes_it_with_grpc_health():
    startup = vertex.startup_probe("/health", 8080, startup_deadline_s=600, grpc_port=8081)
    metadata = vertex.unmanaged_container_model_metadata(
        "europe-docker.pkg.dev/p/r/server:1",
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env={vertex.GRPC_PORT_VARIABLE: "8081"},
        probe=startup,
        grpc_port=8081,
    )
    spec = metadata["containerSpec"]
    assert spec["ports"] == [{"containerPort": 8080}]  # HTTP stays on its own port
    assert spec["grpcPorts"] == [{"containerPort": 8081}]
    assert spec["env"] == [{"name": "SERVING_GRPC_PORT", "value": "8081"}]
    assert spec["startupProbe"] == {
        "grpc": {"port": 8081, "service": ""},
        "periodSeconds": 10,
        "timeoutSeconds": 10,
        "failureThreshold": 60,
    }
    assert spec["healthProbe"] == {
        "grpc": {"port": 8081, "service": ""},
        "periodSeconds": 10,
        "timeoutSeconds": 10,
        "failureThreshold": 4,
    }
    http_only = vertex.unmanaged_container_model_metadata(
        "i", port=8080, health_route="/h", predict_route="/p", grpc_port=None
    )["containerSpec"]
    assert "grpcPorts" not in http_only and "healthProbe" not in http_only


@pytest.mark.parametrize(
    ("model_bytes", "startup_s", "needed"),
    [
        (10_000, 4.8, False),
        (vertex.LARGE_MODEL_BYTES, 1.0, True),
        (10_000, vertex.SLOW_STARTUP_S, True),
        (10_000, None, False),
    ],
)
def test_a_startup_probe_is_added_for_large_or_slow_models(
    model_bytes: int, startup_s: float | None, needed: bool
):
    assert vertex.needs_startup_probe(model_bytes, startup_s) is needed


def test_references_expand_as_in_kubernetes() -> None:
    env = {"AIP_STORAGE_URI": "/mnt/model", "A": "x"}
    assert vertex.expand_references("$(AIP_STORAGE_URI)/m.joblib", env) == "/mnt/model/m.joblib"
    assert vertex.expand_references("$(UNKNOWN)-$(A)", env) == "$(UNKNOWN)-x"
    assert vertex.expand_references("$$(A) costs $$5", env) == "$(A) costs $5"


def test_spec_env_follows_aip_and_command_replaces_the_entrypoint() -> None:
    spec = {
        "env": [{"name": "BASE", "value": "$(AIP_HTTP_PORT)"}, {"name": "B", "value": "$(BASE)1"}],
        "command": ["python", "-m", "server"],
        "args": ["--port", "$(AIP_HTTP_PORT)"],
    }
    env, entrypoint, args = vertex.container_env(spec, {"AIP_HTTP_PORT": "8080"})
    assert env == {"AIP_HTTP_PORT": "8080", "BASE": "8080", "B": "80801"}
    assert entrypoint == "python"
    assert args == ["-m", "server", "--port", "8080"]
    assert vertex.container_env({"args": ["--x"]}, {}) == ({}, "", ["--x"])

"""The server's environment contract: defaults, overrides and refusals of bad values."""

from __future__ import annotations

import os

import pytest

from serving_image.server.config import Config, ConfigError


def test_defaults_follow_vertex_and_the_baked_in_model() -> None:
    config = Config.from_env({})
    assert (config.port, config.health_route, config.predict_route) == (8080, "/health", "/predict")
    assert config.model_source == "/model"
    assert config.workers == os.cpu_count()
    assert config.max_body_bytes == 10 * 1024 * 1024  # the most Vertex forwards online
    assert config.drain_s == 1 and config.grace_period_s == 20
    assert not config.access_log


def test_the_default_drain_leaves_a_second_of_a_short_grace_period() -> None:
    assert Config.from_env({"SERVING_GRACE_PERIOD_S": "1"}).drain_s == 0
    assert Config.from_env({"SERVING_GRACE_PERIOD_S": "2"}).drain_s == 1


def test_an_empty_storage_uri_means_the_baked_in_model() -> None:
    env = {"AIP_STORAGE_URI": "", "SERVING_MODEL_DIR": "/opt/model"}
    assert Config.from_env(env).model_source == "/opt/model"
    env["AIP_STORAGE_URI"] = "gs://bucket/model"
    assert Config.from_env(env).model_source == "gs://bucket/model"


def test_overrides() -> None:
    config = Config.from_env(
        {
            "AIP_HTTP_PORT": "9000",
            "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
            "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
            "SERVING_WORKERS": "3",
            "SERVING_MAX_BODY_BYTES": "1500000",
            "SERVING_GRACE_PERIOD_S": "5",
            "SERVING_ACCESS_LOG": "true",
            "SERVING_LOG_LEVEL": "DEBUG",
        }
    )
    assert config.port == 9000 and config.workers == 3 and config.grace_period_s == 5
    assert config.predict_route.endswith(":predict") and config.max_body_bytes == 1_500_000
    assert config.access_log and config.log_level == "debug"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AIP_HTTP_PORT": "http"}, "AIP_HTTP_PORT='http' is not an integer"),
        ({"AIP_HTTP_PORT": "70000"}, "AIP_HTTP_PORT=70000 must be between 1 and 65535"),
        ({"AIP_PREDICT_ROUTE": "predict"}, "AIP_PREDICT_ROUTE='predict' must be a URL path"),
        ({"AIP_HEALTH_ROUTE": "/health?x=1"}, "AIP_HEALTH_ROUTE='/health?x=1' must be a URL path"),
        ({"AIP_STORAGE_URI": "gs://"}, "AIP_STORAGE_URI='gs://' names no bucket"),
        ({"SERVING_WORKERS": "0"}, "SERVING_WORKERS=0 must be at least 1"),
        ({"SERVING_ACCESS_LOG": "maybe"}, "SERVING_ACCESS_LOG='maybe' is not a boolean"),
        ({"SERVING_LOG_LEVEL": "loud"}, "SERVING_LOG_LEVEL='loud' is not one of"),
        ({"SERVING_GRACE_PERIOD_S": "1.5"}, "SERVING_GRACE_PERIOD_S='1.5' is not an integer"),
        (
            {"SERVING_GRACE_PERIOD_S": "5", "SERVING_DRAIN_S": "5"},
            "SERVING_DRAIN_S=5 must be below SERVING_GRACE_PERIOD_S=5",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("?", r"\?")):
        Config.from_env(env)


def test_grpc_is_off_unless_a_port_is_given_and_the_model_has_a_default_name() -> None:
    config = Config.from_env({})
    assert (config.grpc_port, config.model_name) == (0, "model")
    # Blank values count as unset, as for every variable.
    assert Config.from_env({"SERVING_GRPC_PORT": " ", "SERVING_MODEL_NAME": ""}) == config
    config = Config.from_env({"SERVING_GRPC_PORT": "8081", "SERVING_MODEL_NAME": "penguins"})
    assert (config.grpc_port, config.model_name) == (8081, "penguins")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVING_GRPC_PORT": "grpc"}, "SERVING_GRPC_PORT='grpc' is not an integer"),
        ({"SERVING_GRPC_PORT": "-1"}, "SERVING_GRPC_PORT=-1 must be between 0 and 65535"),
        ({"SERVING_GRPC_PORT": "65536"}, "SERVING_GRPC_PORT=65536 must be between 0 and 65535"),
        (
            {"AIP_HTTP_PORT": "9000", "SERVING_GRPC_PORT": "9000"},
            "SERVING_GRPC_PORT=9000 is AIP_HTTP_PORT too: gRPC needs a port of its own",
        ),
        (
            {"SERVING_GRPC_PORT": "8080"},
            "SERVING_GRPC_PORT=8080 is AIP_HTTP_PORT too: gRPC needs a port of its own",
        ),
    ],
)
def test_bad_grpc_ports_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        Config.from_env(env)

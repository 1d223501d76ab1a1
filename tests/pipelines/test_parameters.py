"""The parameters both pipelines share are declared once: the compiled pipelines, run-local's
flags and its options all take them from ``SHARED_PARAMETERS``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import compiler

import compile as cli
from pipelines.local_run import DEFAULT_GATES, LocalRunOptions
from pipelines.parameters import DEFAULTS, SHARED_PARAMETERS, TRAINING_PARAMETERS
from pipelines.train_to_serve import build_pipeline


@pytest.mark.parametrize("backend", ["vertex", "local"])
def test_each_compiled_pipeline_declares_the_shared_parameters_with_their_defaults(
    backend: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{backend}.yaml"
    compiler.Compiler().compile(build_pipeline(backend=backend), str(path))
    declared = yaml.safe_load(path.read_text())["root"]["inputDefinitions"]["parameters"]
    for name, default in DEFAULTS.items():
        assert declared[name]["defaultValue"] == default, name
    assert set(TRAINING_PARAMETERS) <= set(DEFAULTS)


def test_run_local_has_one_flag_per_shared_parameter_and_passes_only_those_given() -> None:
    args = cli.build_parser().parse_args(
        [
            "run-local",
            "--feature-columns",
            "bill_length_mm, island",
            "--hyperparameters",
            '{"C": 0.5}',
            "--seed",
            "7",
            "--task",
            "regression",
            "--version-aliases",
            "default,candidate",
        ]
    )
    given = {p.name: getattr(args, p.name) for p in SHARED_PARAMETERS if hasattr(args, p.name)}
    assert given == {
        "feature_columns": ["bill_length_mm", "island"],
        "hyperparameters": {"C": 0.5},
        "seed": 7,
        "task": "regression",
        "version_aliases": ["default", "candidate"],
    }
    arguments = LocalRunOptions(parameters=given).pipeline_arguments()
    metric, threshold = DEFAULT_GATES["regression"]
    assert (arguments["gate_metric"], arguments["gate_threshold"]) == (metric, threshold)
    assert arguments["data"] == DEFAULTS["data"] and arguments["seed"] == 7


def test_run_local_refuses_a_value_outside_a_parameter_s_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run-local", "--framework", "pytorch"])
    assert "invalid choice: 'pytorch'" in capsys.readouterr().err


def test_a_gate_given_on_the_command_line_wins_over_the_task_s() -> None:
    options = LocalRunOptions(parameters={"task": "regression", "gate_metric": "rmse"})
    arguments = options.pipeline_arguments()
    assert arguments["gate_metric"] == "rmse"
    assert arguments["gate_threshold"] == DEFAULT_GATES["regression"][1]


# --- a capacity report's advice as a Vertex run's parameters ---------------------------------


def capacity_report(**changes: object) -> dict:
    """A capacity.json as ``compile.py capacity`` writes it, from a measured capacity."""
    from components.capacity import batch_advice, capacity_document, deploy_advice
    from tests.capacity import capacity, step

    measured = capacity([step(1, 40.0, 30.0), step(2, 75.0, 45.0), step(4, 120.0, 300.0)])
    document = capacity_document(
        measured,
        latency_slo_ms=100.0,
        deploy=deploy_advice(measured, 300.0, latency_slo_ms=100.0),
        batch=batch_advice(
            measured,
            instance_bytes=500,
            instances_total=2_000_000,
            deadline_minutes=90,
            max_body_bytes=1_500_000,
        ),
    )
    return {**document, **changes}


def test_a_capacity_report_fills_what_the_run_leaves_unset() -> None:
    from pipelines.parameters import advised_parameters

    report = capacity_report()
    deploy, batch = report["deploy"], report["batch"]
    advised = advised_parameters(report, {"framework": "scikit-learn", "batch_size": 32})
    assert advised.values == {
        "deploy_machine_type": "n1-standard-2",
        "deploy_min_replicas": deploy["min_replica_count"],
        "deploy_max_replicas": deploy["max_replica_count"],
        "deploy_autoscaling_target": deploy["autoscaling_target"],
        "batch_machine_type": "n1-standard-2",
        "batch_replica_count": batch["replica_count"],
    }
    # 300 requests/s at 60% of the 75 requests/s a replica serves within the SLO
    assert (deploy["min_replica_count"], deploy["max_replica_count"]) == (7, 14)
    assert type(advised.values["deploy_autoscaling_target"]) is int
    assert 1 <= deploy["autoscaling_target"] <= 100
    assert (
        f"deploy_autoscaling_target: {deploy['autoscaling_target']} from the capacity report"
        in advised.notes
    )
    assert f"batch_size: 32 as given (advised: {batch['batch_size']})" in advised.notes
    assert not any("takes no target" in note for note in advised.notes)


@pytest.mark.parametrize("given", [0, 75])
def test_a_given_autoscaling_target_stays(given: int) -> None:
    from pipelines.parameters import advised_parameters

    report = capacity_report()
    advised = advised_parameters(report, {"deploy_autoscaling_target": given})
    assert "deploy_autoscaling_target" not in advised.values
    advised_target = report["deploy"]["autoscaling_target"]
    assert (
        f"deploy_autoscaling_target: {given!r} as given (advised: {advised_target!r})"
        in advised.notes
    )


@pytest.mark.parametrize("target", [0, 1, 60, 100, 45.0])
def test_an_autoscaling_target_vertex_takes_is_accepted(target: float) -> None:
    from pipelines.parameters import check_autoscaling_target

    check_autoscaling_target({"deploy_autoscaling_target": target})  # 45.0: a compiled default
    check_autoscaling_target({})  # the local pipeline has none


@pytest.mark.parametrize("target", [-1, 101, 45.5, True, "60"])
def test_an_autoscaling_target_out_of_range_is_refused(target: object) -> None:
    from pipelines.parameters import check_autoscaling_target

    with pytest.raises(ValueError) as refused:
        check_autoscaling_target({"deploy_autoscaling_target": target})
    assert str(refused.value) == (
        f"deploy_autoscaling_target {target!r}: the CPU utilization target is a whole percent "
        "from 1 to 100, or 0 for Vertex's default (60%)"
    )


def test_a_given_minimum_above_the_advised_maximum_raises_the_maximum() -> None:
    from pipelines.parameters import advised_parameters

    advised = advised_parameters(capacity_report(), {"deploy_min_replicas": 20})
    assert advised.values["deploy_max_replicas"] == 20
    assert "deploy_min_replicas" not in advised.values


def test_a_tensorflow_model_s_batch_job_is_not_sized_by_the_cpu_measurement() -> None:
    from pipelines.parameters import advised_parameters

    advised = advised_parameters(
        capacity_report(), {"framework": "tensorflow", "batch_machine_type": "n1-standard-8"}
    )
    assert not {"batch_size", "batch_replica_count", "batch_machine_type"} & set(advised.values)
    assert advised.values["deploy_machine_type"] == "n1-standard-2"


@pytest.mark.parametrize(
    ("report", "given", "message"),
    [
        (
            {"refusal": "needs 3.1 GiB; n1-highmem-2 fits"},
            {},
            "refuses n1-standard-2: needs 3.1 GiB; n1-highmem-2 fits",
        ),
        ({}, {"deploy_machine_type": "n1-standard-4"}, "measured n1-standard-2: measure that"),
        ({"schema_version": 9}, {}, "schema_version 9, expected 1"),
    ],
)
def test_a_capacity_report_that_does_not_apply_is_refused(
    report: dict, given: dict, message: str
) -> None:
    from pipelines.parameters import advised_parameters

    with pytest.raises(ValueError, match=None) as caught:
        advised_parameters(capacity_report(**report), given)
    assert message in str(caught.value)

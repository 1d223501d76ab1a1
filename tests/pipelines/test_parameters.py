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

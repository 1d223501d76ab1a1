"""The pipeline's parameters: those both backends share, declared once, and the checks of
parameter values against a compiled pipeline spec.

``SHARED_PARAMETERS`` gives the Vertex and the local pipeline their common parameters' defaults
and ``compile.py run-local`` its flags. The aiplatform SDK accepts wrong types and missing
required values and lets the run fail on Vertex minutes later; ``validate_parameters`` and
friends run before any request is sent.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components import vertex
from components.capacity import SCHEMA_VERSION
from components.rollout.steps import DEFAULT_ALIAS, PROMOTE_ALL, PROMOTE_CHOICES
from components.stand_ins.batch_inputs import FORMATS
from components.stand_ins.batch_runner import DEFAULT_BATCH_SIZE
from components.training import FRAMEWORKS
from serving_image.server.artifact import TASKS


@dataclass(frozen=True)
class SharedParameter:
    """A parameter both pipelines take, with the same default; ``run-local`` offers it as a
    flag."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """``--feature-columns`` for ``feature_columns``."""
        return "--" + self.name.replace("_", "-")


SHARED_PARAMETERS = (
    SharedParameter(
        "framework",
        "scikit-learn",
        "scikit-learn Pipeline, or a Keras model with its preprocessing layers",
        FRAMEWORKS,
    ),
    SharedParameter("data", "penguins", "CSV/Parquet path or URI, or 'penguins'"),
    SharedParameter("target", "", "column to predict (empty: the bundled data set's default)"),
    SharedParameter("task", "classification", "what to predict", TASKS),
    SharedParameter("feature_columns", [], "feature columns (empty: all but the target)"),
    SharedParameter("estimator", "auto", "estimator name, or 'auto' (tensorflow: 'mlp')"),
    SharedParameter("hyperparameters", {}, 'estimator keyword arguments, e.g. {"C": 0.5}'),
    SharedParameter("seed", 42, "seed for the split and the estimator"),
    SharedParameter(
        "gate_metric", "accuracy", "metric the evaluation gate judges (rmse/mae: lower is better)"
    ),
    SharedParameter("gate_threshold", 0.8, "bar for that metric (rmse/mae: at most this)"),
    SharedParameter("model_display_name", "train-to-serve", "the model's display name"),
    SharedParameter(
        "parent_model", "", "resource name of an existing model: upload as its new version"
    ),
    SharedParameter(
        "version_aliases",
        [],
        f"more aliases of the new version ({DEFAULT_ALIAS!r} moves to it only after its smoke "
        "test on the endpoint passes)",
    ),
    SharedParameter("endpoint_display_name", "train-to-serve", "the endpoint, found by name"),
    SharedParameter(
        "canary_traffic_percent",
        0,
        "the new version's share of the endpoint's traffic until its smoke test passes (0: "
        "smoke test only; Vertex routes by the split alone, so 0 becomes 1% there when the "
        "endpoint serves another model)",
    ),
    SharedParameter(
        "promote",
        PROMOTE_ALL,
        "after a passed smoke test: all traffic to the new version, or stay at the canary share",
        PROMOTE_CHOICES,
    ),
    SharedParameter(
        "keep_previous_deployments",
        False,
        "keep the previous deployed models on the endpoint (at 0%) after a promotion",
    ),
    SharedParameter("batch_instances_format", "jsonl", "format of the batch input", FORMATS),
    SharedParameter(
        "batch_size", DEFAULT_BATCH_SIZE, "instances per request to the container (Vertex's)"
    ),
    SharedParameter(
        "grpc_port",
        0,
        "serve and check gRPC on this container port too (containerSpec.grpcPorts, e.g. "
        f"8081; not {vertex.DEFAULT_PORT}, the HTTP port); 0: HTTP only",
    ),
)
"""The parameters whose name, default and meaning are the same in both pipelines."""
DEFAULTS: dict[str, Any] = {parameter.name: parameter.default for parameter in SHARED_PARAMETERS}
TRAINING_PARAMETERS = (
    "framework",
    "data",
    "target",
    "task",
    "feature_columns",
    "estimator",
    "hyperparameters",
    "seed",
)
"""Pipeline parameters passed on to ``train`` unchanged, the same in both backends."""


def with_shared_parameters(pipeline: Callable[..., None]) -> Callable[..., None]:
    """Declare ``SHARED_PARAMETERS`` on a pipeline function, after its own parameters.

    KFP reads a pipeline's parameters from ``inspect.signature`` and calls it with one
    argument per parameter, in order; the function itself takes its own parameters by name
    and the shared ones as ``**shared``.
    """
    signature = inspect.signature(pipeline)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    shared = [
        inspect.Parameter(
            parameter.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=parameter.default,
            annotation=type(parameter.default),
        )
        for parameter in SHARED_PARAMETERS
    ]
    declared = signature.replace(parameters=[*own, *shared])

    @functools.wraps(pipeline)
    def call(*args: Any, **kwargs: Any) -> None:
        bound = declared.bind(*args, **kwargs)
        bound.apply_defaults()
        return pipeline(**bound.arguments)

    call.__signature__ = declared  # type: ignore[attr-defined]
    return call


# Compiled KFP parameter types and the Python types that satisfy them.
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}
_TYPE_WORDS = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


class ParameterError(ValueError):
    """A parameter value does not fit the compiled pipeline; the message says which and why."""


def _spec(template: str | Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(template).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"cannot read the compiled pipeline {template}: {exc}") from None
    if not isinstance(spec, dict) or "root" not in spec:
        raise ParameterError(f"{template} is not a compiled KFP pipeline (no 'root')")
    return spec


def root_parameters(template: str | Path) -> dict[str, dict[str, Any]]:
    """The pipeline's root input parameters from a compiled YAML: name -> spec."""
    spec = _spec(template)
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def cached_tasks(template: str | Path) -> list[str]:
    """The tasks of a compiled pipeline whose caching is on (a run with the same inputs reuses
    their earlier outputs), in the order the DAGs list them, condition groups left out."""
    spec = _spec(template)
    components = spec.get("components", {})
    found: list[str] = []

    def walk(dag: dict[str, Any]) -> None:
        for name, task in dag.get("tasks", {}).items():
            component = components.get(task["componentRef"]["name"], {})
            if "dag" in component:
                walk(component["dag"])
            elif task.get("cachingOptions", {}).get("enableCache"):
                found.append(name)

    walk(spec["root"]["dag"])
    return found


def caching_note(template: str | Path, enable_caching: bool | None) -> str:
    """One line on what a run of ``template`` may take from the cache."""
    if enable_caching is False:
        return "caching: off for every task (--no-cache)"
    cached = cached_tasks(template)
    if not cached:
        return "caching: off for every task"
    return (
        f"caching: only {', '.join(cached)} may reuse an earlier run's outputs (same inputs); "
        "every task that creates or changes a resource runs each time"
    )


def pipeline_name(template: str | Path) -> str:
    """The ``pipelineInfo.name`` of a compiled pipeline."""
    return str(_spec(template).get("pipelineInfo", {}).get("name", ""))


def _from_text(name: str, text: str, kind: str) -> Any:
    """Convert a command-line string to the parameter's type."""
    try:
        if kind == "STRING":
            return text
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(text)
        return json.loads(text)
    except ValueError:
        raise ParameterError(
            f"parameter {name!r} must be {_TYPE_WORDS[kind]}, got {text!r}"
        ) from None


def coerce_text_values(
    values: Mapping[str, str], declared: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Convert command-line strings (``--param k=v``) to their declared types.

    Names the pipeline does not declare are passed through unchanged, for
    ``validate_parameters`` to report together with any other unknown name.
    """
    return {
        name: _from_text(name, text, declared[name].get("parameterType", "STRING"))
        if name in declared
        else text
        for name, text in values.items()
    }


def validate_parameters(
    values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Check ``values`` against the declared parameters; raise ``ParameterError`` on any fault.

    Args:
        values: parameter name -> value, already typed (from a file, or ``coerce_text_values``).
        declared: the compiled pipeline's root parameters (``root_parameters``).
    """
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParameterError(
            f"unknown pipeline parameter(s) {unknown}; the pipeline takes {sorted(declared)}"
        )
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind = declared[name].get("parameterType", "STRING")
        allowed = _PYTHON_TYPES.get(kind, (object,))
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ParameterError(
                f"parameter {name!r} must be {_TYPE_WORDS.get(kind, kind)}, "
                f"got {type(value).__name__} {value!r}"
            )
        checked[name] = value
    missing = sorted(
        name
        for name, spec in declared.items()
        if name not in checked and "defaultValue" not in spec and not spec.get("isOptional")
    )
    if missing:
        raise ParameterError(
            f"missing required pipeline parameter(s) {missing}; pass them with --param NAME=VALUE"
        )
    return checked


def parse_assignments(pairs: list[str], what: str = "--param") -> dict[str, str]:
    """Parse ``NAME=VALUE`` strings from repeated command-line flags."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParameterError(f"{what} expects NAME=VALUE, got {pair!r}")
        parsed[name] = value
    return parsed


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """Read parameter values from a YAML or JSON file holding one mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ParameterError(f"cannot read parameter file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameter file {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"parameter file {path} must hold a mapping of name: value")
    return data


def _whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (a compiled spec's integer default is a float)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def check_grpc_port(values: Mapping[str, Any]) -> None:
    """``grpc_port``: 0 (HTTP only) or a port of its own; ``ValueError`` naming the fault.

    The server refuses a gRPC port equal to ``AIP_HTTP_PORT`` at start, which on Vertex
    would fail the checked build minutes into the run.
    """
    port = values.get("grpc_port", 0)
    if not _whole(port) or not 0 <= port <= 65535:
        raise ValueError(f"grpc_port {port!r}: a port from 1 to 65535 (e.g. 8081), or 0 for none")
    if port == vertex.DEFAULT_PORT:
        raise ValueError(
            f"grpc_port {port}: that is the HTTP port (containerSpec.ports, AIP_HTTP_PORT); "
            "gRPC needs a port of its own, e.g. 8081 (0: HTTP only)"
        )


def check_rollout(values: Mapping[str, Any]) -> None:
    """The parameters both pipelines take for what they roll out (aliases, traffic, the
    serving ports: ``check_grpc_port``); ``ValueError`` naming the fault."""
    aliases = values.get("version_aliases") or []
    if DEFAULT_ALIAS in aliases:
        raise ValueError(
            f"version_aliases names {DEFAULT_ALIAS!r}: the rollout moves it to the new version "
            "only after its smoke test on the endpoint passes (an upload with it would make "
            "the unchecked version the model's default); drop it"
        )
    share = values.get("canary_traffic_percent", 0)
    if not _whole(share) or not 0 <= share <= 100:
        raise ValueError(f"canary_traffic_percent {share!r}: a whole percent from 0 to 100")
    if values.get("promote", PROMOTE_ALL) not in PROMOTE_CHOICES:
        raise ValueError(
            f"promote {values.get('promote')!r}: use one of {', '.join(PROMOTE_CHOICES)}"
        )
    check_grpc_port(values)


def check_autoscaling_target(values: Mapping[str, Any]) -> None:
    """``deploy_autoscaling_target`` (the Vertex pipeline's): 0 (Vertex's default,
    ``vertex.DEFAULT_TARGET_UTILIZATION``) or a whole percent from 1 to 100, the range Vertex
    takes for an ``AutoscalingMetricSpec``; ``ValueError`` naming the fault."""
    target = values.get("deploy_autoscaling_target", 0)
    if not _whole(target) or not 0 <= target <= 100:
        raise ValueError(
            f"deploy_autoscaling_target {target!r}: the CPU utilization target is a whole "
            "percent from 1 to 100, or 0 for Vertex's default "
            f"({vertex.DEFAULT_TARGET_UTILIZATION}%)"
        )


@dataclass(frozen=True)
class Advised:
    """What a capacity report sets for a Vertex run, and one line per choice made."""

    values: dict[str, Any]
    """Run parameters the run left unset, filled from the advice."""
    notes: list[str]
    """What was filled from where, and what was not (and why)."""


def advised_parameters(document: Mapping[str, Any], given: Mapping[str, Any]) -> Advised:
    """The Vertex run's deploy and batch sizes from ``capacity.json`` (``compile.py
    capacity``), for the parameters ``given`` leaves unset; what ``given`` sets stays.

    The deploy advice fills ``deploy_machine_type`` (the machine measured),
    ``deploy_min_replicas``, ``deploy_max_replicas`` and ``deploy_autoscaling_target`` (the
    CPU target the pipeline's ``set_autoscaling`` step sets after GCPC's deploy); the batch
    advice ``batch_machine_type``, ``batch_replica_count`` and ``batch_size`` for a
    scikit-learn model (a TensorFlow model's batch job runs its GPU image, which the CPU
    measurement does not describe).

    Raises:
        ValueError: a report of another layout, one that refuses the machine type, or a
            machine type in ``given`` other than the one measured.
    """
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"capacity report schema_version {document.get('schema_version')!r}, expected "
            f"{SCHEMA_VERSION}: write it again with this version's compile.py capacity"
        )
    machine = str(document["machine_type"])
    if document.get("refusal"):
        raise ValueError(f"the capacity report refuses {machine}: {document['refusal']}")
    for name in ("deploy_machine_type", "batch_machine_type"):
        if name == "batch_machine_type" and given.get("framework") == "tensorflow":
            continue
        if given.get(name, machine) != machine:
            raise ValueError(
                f"{name} {given[name]!r}, but the capacity report measured {machine}: measure "
                f"that machine type (compile.py capacity --machine-type {given[name]}) or "
                f"leave {name} unset"
            )
    values: dict[str, Any] = {}
    notes: list[str] = []

    def fill(name: str, value: Any) -> None:
        if name in given:
            notes.append(f"{name}: {given[name]!r} as given (advised: {value!r})")
        else:
            values[name] = value
            notes.append(f"{name}: {value!r} from the capacity report")

    deploy, batch = document.get("deploy"), document.get("batch")
    if deploy is None:
        notes.append(f"no deploy advice: {document.get('no_best_step_reason')}")
    else:
        fill("deploy_machine_type", machine)
        fill("deploy_min_replicas", int(deploy["min_replica_count"]))
        low = int(given.get("deploy_min_replicas", deploy["min_replica_count"]))
        fill("deploy_max_replicas", max(low, int(deploy["max_replica_count"])))
        fill("deploy_autoscaling_target", int(deploy["autoscaling_target"]))
    if given.get("framework") == "tensorflow":
        notes.append(
            "batch: not from the report (a TensorFlow model's batch job runs its GPU image)"
        )
    elif batch is None:
        notes.append(f"no batch advice: {document.get('no_best_step_reason')}")
    else:
        fill("batch_machine_type", machine)
        fill("batch_replica_count", int(batch["replica_count"]))
        fill("batch_size", int(batch["batch_size"]))
    return Advised(values, notes)

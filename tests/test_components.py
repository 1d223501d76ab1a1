"""Every component module is thin: one KFP component, documented per input and output, whose
literal defaults (KFP needs literals) are the library's constants."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest

from components import vertex
from components.build_and_check import build_and_check
from components.build_image import build_image
from components.canary_traffic_split import canary_traffic_split
from components.capacity import measure_capacity
from components.capacity_check import capacity_check
from components.contract import CheckSettings
from components.contract_check import contract_check
from components.endpoint_get_or_create import endpoint_get_or_create
from components.evaluation_gate import evaluation_gate
from components.imaging import DEFAULT_IMAGE_NAME
from components.local_batch_predict import local_batch_predict
from components.local_model_deploy import local_model_deploy
from components.local_model_upload import local_model_upload
from components.package_model import package_model
from components.promote import promote
from components.roll_back import roll_back
from components.rollout import PROMOTE_ALL
from components.set_autoscaling import set_autoscaling
from components.smoke_test import smoke_test
from components.stand_ins.batch_inputs import FORMATS
from components.stand_ins.batch_runner import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS
from components.train import train
from components.training import train_and_export
from pipelines.parameters import DEFAULTS
from tests.support import REPO_ROOT

COMPONENTS = {
    "train": train,
    "build_image": build_image,
    "contract_check": contract_check,
    "build_and_check": build_and_check,
    "evaluation_gate": evaluation_gate,
    "endpoint_get_or_create": endpoint_get_or_create,
    "canary_traffic_split": canary_traffic_split,
    "set_autoscaling": set_autoscaling,
    "capacity_check": capacity_check,
    "smoke_test": smoke_test,
    "promote": promote,
    "roll_back": roll_back,
    "local_model_upload": local_model_upload,
    "local_model_deploy": local_model_deploy,
    "local_batch_predict": local_batch_predict,
    "package_model": package_model,
}
MAX_LINES = 250


def defaults(component: Any) -> dict[str, Any]:
    """The component's parameter defaults, as its function declares them."""
    signature = inspect.signature(component.python_func)
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def test_the_component_modules_are_exactly_these() -> None:
    found = {
        path.stem
        for path in (REPO_ROOT / "components").glob("*.py")
        if "@dsl.component" in path.read_text(encoding="utf-8")
    }
    assert found == set(COMPONENTS)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_a_component_module_holds_one_documented_component_and_nothing_else(name: str) -> None:
    path = REPO_ROOT / "components" / f"{name}.py"
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_LINES
    tree = ast.parse(source)
    definitions = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert [node.name for node in definitions] == [name]
    (function,) = definitions
    assert [ast.unparse(d).split("(")[0] for d in function.decorator_list] == ["dsl.component"]
    docstring = ast.get_docstring(function) or ""
    component = COMPONENTS[name]
    documented = [*component.component_spec.inputs, *(component.component_spec.outputs or {})]
    # A single return value is KFP's "Output", described under "Returns:".
    missing = [
        item
        for item in documented
        if f"{item}:" not in docstring and not (item == "Output" and "Returns:" in docstring)
    ]
    assert not missing, f"{name}'s docstring does not describe {missing}"


def test_literal_defaults_are_the_library_constants() -> None:
    check = defaults(contract_check)
    settings = CheckSettings()
    assert check["port"] == vertex.DEFAULT_PORT
    assert check["startup_deadline_s"] == settings.startup_deadline_s
    assert check["grace_period_s"] == settings.grace_period_s == vertex.GRACE_PERIOD_S
    assert check["large_model_bytes"] == vertex.LARGE_MODEL_BYTES
    assert defaults(build_image)["image_name"] == DEFAULT_IMAGE_NAME
    checked = defaults(build_and_check)
    same = ("port", "health_route", "predict_route", "startup_deadline_s", "grace_period_s")
    same += ("strict", "large_model_bytes", "env")
    assert {name: checked[name] for name in same} == {name: check[name] for name in same}
    built = defaults(build_image)
    for name in ("image_name", "bake_model", "gpu", "repository", "service_account"):
        assert checked[name] == built[name], name
    assert defaults(smoke_test)["rel_tol"] == settings.rel_tol
    measured = inspect.signature(measure_capacity).parameters
    capacity = defaults(capacity_check)
    assert capacity["machine_type"] == measured["machine"].default == vertex.MACHINE_TYPE
    for name in ("latency_slo_ms", "expected_qps", "instances_per_request", "batch_instances"):
        assert capacity[name] == measured[name].default, name
    assert capacity["batch_deadline_minutes"] == measured["batch_deadline_minutes"].default
    assert defaults(promote)["promote"] == DEFAULTS["promote"] == PROMOTE_ALL
    assert defaults(promote)["keep_previous"] == DEFAULTS["keep_previous_deployments"]
    assert (
        defaults(canary_traffic_split)["canary_traffic_percent"]
        == (DEFAULTS["canary_traffic_percent"])
    )
    batch = defaults(local_batch_predict)
    assert batch["batch_size"] == DEFAULT_BATCH_SIZE
    assert batch["workers"] == DEFAULT_WORKERS
    assert batch["instances_format"] == FORMATS[0]


def test_train_defaults_are_the_pipeline_s_and_the_library_s() -> None:
    declared = defaults(train)
    library = {
        name: parameter.default
        for name, parameter in inspect.signature(train_and_export).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    for name, value in declared.items():
        expected = DEFAULTS.get(name, library.get(name))
        if name in ("feature_columns", "hyperparameters"):  # None in the function: empty
            expected = DEFAULTS[name]
        assert value == expected, f"train's {name} default {value!r} is not {expected!r}"

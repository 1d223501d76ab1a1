"""The local model registry: versions, aliases and retrain lineage as Vertex AI keeps them.

No containers here: the registry only stores files. One test runs the ``local_model_upload``
component in ``kfp.local`` behind a component that emits a GCPC ``UnmanagedContainerModel``.
"""

import json
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kfp.dsl import Artifact

from components import stand_ins
from components.images import COMPONENTS_IMAGE
from components.local_model_upload import local_model_upload
from components.stand_ins.resources import MODELS_PREFIX

SPEC = {
    "imageUri": "localhost/penguins-server:1",
    "ports": [{"containerPort": 8080.0}],  # as kfp.local hands metadata on
    "predictRoute": "/predict",
    "healthRoute": "/health",
    "env": [{"name": "SERVING_WORKERS", "value": "1"}],
    "startupProbe": {"httpGet": {"path": "/health", "port": 8080.0}, "periodSeconds": 10.0},
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "trained"
    (model / "nested").mkdir(parents=True)
    (model / "model.joblib").write_bytes(b"weights")
    (model / "nested" / "notes.txt").write_text("x")
    for path in (model, *model.rglob("*")):  # as pytest's 0700 directories are
        path.chmod(0o700 if path.is_dir() else 0o600)
    return model


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def upload(registry: Path, model_dir: Path, **kwargs: Any) -> stand_ins.RegisteredVersion:
    return stand_ins.upload_model(registry, "penguins", model_dir, SPEC, **kwargs)


def aliases_by_version(registry: Path, model: str) -> dict[str, tuple[str, ...]]:
    return {v.version_id: v.version_aliases for v in stand_ins.list_versions(registry, model)}


def test_first_upload_creates_a_model_whose_version_1_is_default(
    registry: Path, model_dir: Path
) -> None:
    version = upload(registry, model_dir, version_aliases=["candidate"], labels={"team": "ml"})

    assert version.model_id.isdigit() and len(version.model_id) == 19
    assert version.version_id == "1"
    assert version.version_aliases == ("default", "candidate")
    assert version.resource_name == f"projects/local/locations/local/models/{version.model_id}@1"
    assert version.parent_model == ""
    copy = registry.resolve() / "models" / version.model_id / "versions" / "1" / "model"
    assert version.model_dir == copy
    assert (copy / "model.joblib").read_bytes() == b"weights"
    assert (copy / "nested" / "notes.txt").read_text() == "x"
    for path in (copy, *copy.rglob("*")):  # the container's non-root user reads it
        assert path.stat().st_mode & stat.S_IROTH, path

    resource = json.loads((copy.parent / "model.json").read_text())
    assert resource["name"] == version.model_name
    assert resource["versionId"] == "1"
    assert resource["versionAliases"] == ["default", "candidate"]
    assert resource["artifactUri"] == str(copy)
    assert resource["labels"] == {"team": "ml"}
    assert resource["versionCreateTime"].endswith("Z")
    assert "parentModel" not in resource
    # kfp.local's floats are whole numbers again; the rest of the spec is kept as given.
    assert resource["containerSpec"]["ports"] == [{"containerPort": 8080}]
    assert resource["containerSpec"]["startupProbe"]["httpGet"]["port"] == 8080
    assert resource["containerSpec"]["env"] == SPEC["env"]
    assert stand_ins.get_version(registry, version.model_name) == version


def test_uploads_without_parent_create_separate_models(registry: Path, model_dir: Path) -> None:
    first, second = upload(registry, model_dir), upload(registry, model_dir)
    assert first.model_id != second.model_id
    assert second.version_id == "1" and second.version_aliases == ("default",)
    assert [v.model_id for v in stand_ins.list_versions(registry)] == [
        first.model_id,
        second.model_id,
    ]


def test_a_retrain_that_asks_for_default_takes_it_and_records_its_parent(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir)
    second = upload(registry, model_dir, parent_model=first.model_name)

    assert (second.model_id, second.version_id) == (first.model_id, "2")
    assert second.parent_model == first.resource_name
    assert aliases_by_version(registry, first.model_name) == {"1": (), "2": ("default",)}
    assert stand_ins.get_version(registry, first.model_name).version_id == "2"
    # The old version's own model.json follows the move too.
    old = json.loads((first.model_dir.parent / "model.json").read_text())
    assert old["versionAliases"] == []


def test_a_retrain_without_default_leaves_the_default_where_it_was(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir)
    second = upload(registry, model_dir, parent_model=first.model_name, version_aliases=[])

    assert second.version_aliases == ()
    assert stand_ins.get_version(registry, first.model_name).version_id == "1"
    assert stand_ins.get_version(registry, second.resource_name) == second


def test_an_alias_held_by_another_version_moves_to_the_new_one(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir)
    name = first.model_name
    upload(registry, model_dir, parent_model=name, version_aliases=["candidate", "v-2"])
    upload(registry, model_dir, parent_model=name, version_aliases=["candidate"])

    assert aliases_by_version(registry, name) == {
        "1": ("default",),
        "2": ("v-2",),
        "3": ("candidate",),
    }
    assert stand_ins.get_version(registry, f"{name}@candidate").version_id == "3"
    assert stand_ins.get_version(registry, f"{name}@v-2").version_id == "2"


@pytest.mark.parametrize("suffix, parent_version", [("@1", "1"), ("@golden", "1"), ("", "2")])
def test_parent_model_suffix_names_the_version_retrained_from(
    registry: Path, model_dir: Path, suffix: str, parent_version: str
) -> None:
    first = upload(registry, model_dir, version_aliases=["golden"])
    upload(registry, model_dir, parent_model=first.model_name)  # v2 takes default

    third = upload(registry, model_dir, parent_model=first.model_name + suffix)

    assert third.version_id == "3"
    assert third.parent_model == f"{first.model_name}@{parent_version}"


def test_a_bare_model_id_names_a_model_too(registry: Path, model_dir: Path) -> None:
    first = upload(registry, model_dir)
    assert stand_ins.get_version(registry, f"{first.model_id}@1") == first
    assert upload(registry, model_dir, parent_model=first.model_id).version_id == "2"


@pytest.mark.parametrize("alias", ["Default", "1st", "a", "ab-", "with_underscore", "v1.2", ""])
def test_aliases_must_have_vertex_format(registry: Path, model_dir: Path, alias: str) -> None:
    with pytest.raises(stand_ins.RegistryError, match=r"\[a-z\]\[a-zA-Z0-9-\]"):
        upload(registry, model_dir, version_aliases=[alias])
    assert not (registry / "index.json").exists()


def test_aliases_given_as_one_string_are_refused(registry: Path, model_dir: Path) -> None:
    with pytest.raises(stand_ins.RegistryError, match="must be a list"):
        upload(registry, model_dir, version_aliases="default")


@pytest.mark.parametrize(
    "parent, message",
    [
        ("projects/local/locations/local/models/123", "does not exist"),
        ("projects/my-proj/locations/us-central1/models/123", "only holds projects/local"),
        ("models/123", "is not a model name"),
    ],
)
def test_parent_model_must_exist_in_this_registry(
    registry: Path, model_dir: Path, parent: str, message: str
) -> None:
    upload(registry, model_dir)
    with pytest.raises(stand_ins.RegistryError, match=message):
        upload(registry, model_dir, parent_model=parent)
    assert len(stand_ins.list_versions(registry)) == 1
    assert list((registry / "staging").iterdir()) == []  # the copy was cleaned up


@pytest.mark.parametrize(
    "ref, message",
    [("@7", r"has no version 7 \(versions: 1\)"), ("@golden", r"no version with alias 'golden'")],
)
def test_unknown_versions_and_aliases_are_named(
    registry: Path, model_dir: Path, ref: str, message: str
) -> None:
    first = upload(registry, model_dir)
    with pytest.raises(stand_ins.RegistryError, match=message):
        stand_ins.get_version(registry, first.model_name + ref)
    with pytest.raises(stand_ins.RegistryError, match=message):
        upload(registry, model_dir, parent_model=first.model_name + ref)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"imageUri": ""}, "needs imageUri"),
        ({"ports": [8080]}, "ports are objects"),
        ({"ports": [{"containerPort": 70000}]}, "from 1 to 65535"),
        ({"ports": [{"containerPort": 8080.5}]}, "ports are objects"),
        ({"predictRoute": "predict"}, "must be a path starting with /"),
        ({"env": [{"name": "AIP_HTTP_PORT", "value": "1"}]}, "reserves the AIP_ prefix"),
        ({"env": ["A=1"]}, "env entry 'A=1' is invalid"),
    ],
)
def test_container_specs_that_could_not_serve_are_refused(
    registry: Path, model_dir: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(stand_ins.RegistryError, match=message):
        stand_ins.upload_model(registry, "penguins", model_dir, {**SPEC, **change})


def test_ports_default_to_8080(registry: Path, model_dir: Path) -> None:
    spec = {"imageUri": "img"}
    version = stand_ins.upload_model(registry, "penguins", model_dir, spec)
    assert version.container_spec["ports"] == [{"containerPort": 8080}]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"display_name": ""}, "1 to 128 characters"),
        ({"display_name": "x" * 129}, "1 to 128 characters"),
        ({"labels": {"Team": "ml"}}, "label 'Team'"),
        ({"labels": {"team": "M L"}}, "label 'team'"),
    ],
)
def test_display_names_and_labels_follow_vertex_rules(
    registry: Path, model_dir: Path, kwargs: dict[str, Any], message: str
) -> None:
    arguments = {"display_name": "penguins", **kwargs}
    with pytest.raises(stand_ins.RegistryError, match=message):
        stand_ins.upload_model(registry, model_dir=model_dir, container_spec=SPEC, **arguments)


def test_a_missing_model_directory_is_named(registry: Path, tmp_path: Path) -> None:
    with pytest.raises(stand_ins.RegistryError, match="nowhere does not exist"):
        stand_ins.upload_model(registry, "penguins", tmp_path / "nowhere", SPEC)


def _upload_version(registry: str, model_dir: str, parent: str) -> str:
    return stand_ins.upload_model(
        registry, "penguins", model_dir, SPEC, parent_model=parent, version_aliases=["default"]
    ).version_id


def test_concurrent_uploads_get_distinct_versions_and_one_default(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir)
    with ProcessPoolExecutor(max_workers=6) as pool:
        jobs = [
            pool.submit(_upload_version, str(registry), str(model_dir), first.model_name)
            for _ in range(12)
        ]
        versions = sorted(int(job.result()) for job in jobs)

    assert versions == list(range(2, 14))
    aliases = aliases_by_version(registry, first.model_name)
    assert len(aliases) == 13
    assert sum("default" in held for held in aliases.values()) == 1
    for version in stand_ins.list_versions(registry):  # index and each model.json agree
        resource = json.loads((version.model_dir.parent / "model.json").read_text())
        assert tuple(resource["versionAliases"]) == version.version_aliases


# --- aliases and evaluations of existing versions (what a rollout does) ----------------------


def _move_default(registry: str, version_name: str) -> None:
    stand_ins.LocalRegistryOps(registry).move_alias(version_name, "default")


def test_merging_aliases_moves_them_from_the_version_that_held_them(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir, version_aliases=["default", "stable"])
    second = upload(registry, model_dir, parent_model=first.model_name, version_aliases=[])
    assert aliases_by_version(registry, first.model_name) == {"1": ("default", "stable"), "2": ()}

    merged = stand_ins.merge_version_aliases(registry, second.resource_name, ["default", "canary"])
    assert merged.version_aliases == ("default", "canary")
    assert aliases_by_version(registry, first.model_name) == {
        "1": ("stable",),
        "2": ("default", "canary"),
    }
    assert stand_ins.get_version(registry, first.model_name).version_id == "2"  # serves now
    for version in stand_ins.list_versions(registry):  # index and each model.json agree
        resource = json.loads((version.model_dir.parent / "model.json").read_text())
        assert tuple(resource["versionAliases"]) == version.version_aliases

    # Moving it back through the rollout's interface; again is a no-op.
    registry_ops = stand_ins.LocalRegistryOps(registry)
    registry_ops.move_alias(first.resource_name, "default")
    registry_ops.move_alias(f"{first.model_name}@stable", "default")  # an alias names it too
    assert aliases_by_version(registry, first.model_name) == {
        "1": ("stable", "default"),
        "2": ("canary",),
    }
    with pytest.raises(stand_ins.RegistryError, match="version alias 'Default' is invalid"):
        stand_ins.merge_version_aliases(registry, first.resource_name, ["Default"])
    with pytest.raises(stand_ins.RegistryError, match="has no version 9"):
        stand_ins.merge_version_aliases(registry, f"{first.model_name}@9", ["x1"])


def test_concurrent_alias_moves_leave_exactly_one_default(registry: Path, model_dir: Path) -> None:
    first = upload(registry, model_dir)
    names = [
        upload(registry, model_dir, parent_model=first.model_name, version_aliases=[]).resource_name
        for _ in range(5)
    ]
    with ProcessPoolExecutor(max_workers=5) as pool:
        for job in [pool.submit(_move_default, str(registry), name) for name in names * 2]:
            job.result()
    aliases = aliases_by_version(registry, first.model_name)
    assert sum("default" in held for held in aliases.values()) == 1
    for version in stand_ins.list_versions(registry):
        resource = json.loads((version.model_dir.parent / "model.json").read_text())
        assert tuple(resource["versionAliases"]) == version.version_aliases


def test_an_evaluation_is_imported_into_the_version_as_vertex_names_it(
    registry: Path, model_dir: Path
) -> None:
    first = upload(registry, model_dir)
    second = upload(registry, model_dir, parent_model=first.model_name)
    evaluation = {
        "displayName": "gate",
        "metricsSchemaUri": "gs://google-cloud-aiplatform/schema/modelevaluation/x.yaml",
        "metrics": {"accuracy": 0.97},
    }
    name = stand_ins.LocalRegistryOps(registry).import_evaluation(second.resource_name, evaluation)
    model_id, evaluation_id = first.model_id, name.rsplit("/", 1)[-1]
    assert name == f"{MODELS_PREFIX}{model_id}/evaluations/{evaluation_id}"
    path = second.model_dir.parent / "evaluations" / f"{evaluation_id}.json"
    written = json.loads(path.read_text())
    assert written["metrics"] == {"accuracy": 0.97} and written["name"] == name
    assert written["modelVersionId"] == "2" and written["createTime"].endswith("Z")
    assert stand_ins.list_evaluations(registry, second.resource_name) == [written]
    assert stand_ins.list_evaluations(registry, first.resource_name) == []

    with pytest.raises(stand_ins.RegistryError, match="is not JSON"):
        stand_ins.import_evaluation(registry, second.resource_name, {"metrics": {1, 2}})
    with pytest.raises(stand_ins.RegistryError, match="a ModelEvaluation object"):
        stand_ins.import_evaluation(registry, second.resource_name, [1])  # type: ignore[arg-type]
    with pytest.raises(stand_ins.RegistryError, match="does not exist"):
        stand_ins.import_evaluation(registry, f"{MODELS_PREFIX}123@1", evaluation)


# --- the component ---------------------------------------------------------------------------


def _call_component(registry: Path, artifact: Artifact, **kwargs: Any) -> Artifact:
    output = Artifact(name="model", uri=str(registry.parent / "model-output"))
    local_model_upload.python_func(
        display_name="penguins",
        unmanaged_container_model=artifact,
        registry_dir=str(registry),
        model=output,
        **kwargs,
    )
    return output


def test_component_output_is_version_pinned_like_gcpc_vertex_model(
    registry: Path, model_dir: Path
) -> None:
    checked = Artifact(uri=str(model_dir), metadata={"containerSpec": SPEC})
    first = _call_component(registry, checked, parent_model="", version_aliases=[])
    second = _call_component(
        registry, checked, parent_model=first.metadata["resourceName"], version_aliases=[]
    )

    model_id = first.metadata["resourceName"].split("/")[-1].split("@")[0]
    assert first.metadata["resourceName"] == f"{MODELS_PREFIX}{model_id}@1"
    assert first.metadata["versionAliases"] == ["default"]  # the first version's, always
    assert second.metadata["resourceName"] == f"{MODELS_PREFIX}{model_id}@2"
    assert second.metadata["versionAliases"] == []  # as ModelUploadOp: default stays on 1
    assert second.metadata["parentModel"] == first.metadata["resourceName"]
    assert second.uri == str(registry.resolve() / "models" / model_id / "versions" / "2")


def test_component_refuses_artifacts_that_are_not_a_checked_container_model(
    registry: Path, model_dir: Path
) -> None:
    from kfp.dsl import Model

    with pytest.raises(stand_ins.RegistryError, match=r"is a system\.Model"):
        _call_component(registry, Model(uri=str(model_dir), metadata={"containerSpec": SPEC}))
    with pytest.raises(stand_ins.RegistryError, match=r"has no metadata\.containerSpec"):
        _call_component(registry, Artifact(uri=str(model_dir)))


def test_component_runs_in_kfp_local_after_a_gcpc_unmanaged_container_model(
    tmp_path: Path,
) -> None:
    from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
    from kfp import dsl, local
    from kfp.dsl import Output

    @dsl.component(base_image=COMPONENTS_IMAGE)
    def checked_model(ucm: Output[UnmanagedContainerModel], spec: dict):
        from pathlib import Path

        Path(ucm.path).mkdir(parents=True)
        (Path(ucm.path) / "model.joblib").write_text("weights")
        ucm.metadata["containerSpec"] = spec

    @dsl.pipeline
    def upload_pipeline(registry_dir: str) -> Artifact:
        made = checked_model(spec=SPEC)
        uploaded = local_model_upload(
            display_name="penguins",
            unmanaged_container_model=made.outputs["ucm"],
            registry_dir=registry_dir,
        )
        return uploaded.outputs["model"]

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "runs"),
        raise_on_error=True,
    )
    result = upload_pipeline(registry_dir=str(tmp_path / "registry")).output

    version = stand_ins.get_version(tmp_path / "registry", result.metadata["resourceName"])
    assert result.metadata["resourceName"].endswith("@1")
    assert version.container_spec["ports"] == [{"containerPort": 8080}]
    assert (version.model_dir / "model.joblib").read_text() == "weights"

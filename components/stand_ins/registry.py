"""A directory-based model registry: the local stand-in for Vertex AI's Model Registry.

``kfp.local`` cannot run GCPC's ``ModelUploadOp`` (a container component), so
``compile.py run-local`` registers models here instead. It mirrors Vertex AI's model
versions:

* an upload without ``parent_model`` creates a model; with ``parent_model`` (a resource name,
  with or without ``@version`` or ``@alias``) it adds a version to that model;
* versions are numbered ``1``, ``2``, ... per model, and referenced as
  ``projects/local/locations/local/models/<id>@<version or alias>``; without a suffix the
  model's ``default`` version is meant;
* aliases match ``[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]``, are unique within a model (giving an
  alias held by another version moves it), the first version gets ``default`` automatically
  and exactly one version holds ``default`` at any time; a later version takes ``default``
  only when it is asked for (GCPC adds nothing, so pass ``version_aliases=["default"]``).

One local extension: each version records ``parentModel``, the exact version that
``parent_model`` resolved to when it was uploaded (Vertex keeps no lineage between versions),
so the chain of retrains can be followed.

Layout::

    <registry>/
      index.json        models, their versions and aliases (the source of truth for aliases)
      .lock             taken (flock) by every upload; index.json is replaced atomically
      models/<model_id>/versions/<n>/
        model/          a copy of the uploaded model directory (world-readable: the serving
                        container's non-root user reads it through a read-only mount)
        model.json      the version as a Vertex ``Model`` resource (camelCase fields)

``upload_model``, ``get_version`` and ``list_versions`` are the plain functions;
``components/local_model_upload.py`` is the KFP component mirroring ``ModelUploadOp``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import vertex
from components.files import write_json_atomically
from components.stand_ins.errors import RegistryError
from components.stand_ins.resources import (
    LOCATION,
    MODELS_PREFIX,
    PROJECT,
    new_resource_id,
    now_rfc3339,
)

DEFAULT_ALIAS = vertex.DEFAULT_ALIAS
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
MODEL_FILE = "model.json"

_ALIAS_RE = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
_NAME_RE = re.compile(
    r"(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/models/)?"
    r"(?P<model>[a-z0-9][a-z0-9_-]*)(?:@(?P<ref>[a-zA-Z0-9-]+))?"
)


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, as ``upload_model`` and ``get_version`` return it."""

    model_id: str
    version_id: str
    display_name: str
    version_aliases: tuple[str, ...]
    container_spec: dict[str, Any]
    model_dir: Path
    """The registry's copy of the model directory (the version's ``artifactUri``)."""
    create_time: str
    parent_model: str = ""
    """The version this one was retrained from (``...models/<id>@<n>``), or empty."""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """``projects/local/locations/local/models/<id>``."""
        return MODELS_PREFIX + self.model_id

    @property
    def resource_name(self) -> str:
        """The version-pinned name, ``projects/local/locations/local/models/<id>@<n>``, like
        the ``resourceName`` of GCPC's ``VertexModel`` output."""
        return f"{self.model_name}@{self.version_id}"

    def to_resource(self) -> dict[str, Any]:
        """The version as a Vertex ``Model`` resource (what ``model.json`` holds)."""
        resource: dict[str, Any] = {
            "name": self.model_name,
            "displayName": self.display_name,
            "description": self.description,
            "versionId": self.version_id,
            "versionAliases": list(self.version_aliases),
            "versionCreateTime": self.create_time,
            "containerSpec": self.container_spec,
            "artifactUri": str(self.model_dir),
            "labels": self.labels,
        }
        if self.parent_model:
            resource["parentModel"] = self.parent_model
        return resource

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> RegisteredVersion:
        """Read a ``model.json`` resource back."""
        return cls(
            model_id=str(resource["name"]).rsplit("/", 1)[-1],
            version_id=str(resource["versionId"]),
            display_name=str(resource["displayName"]),
            version_aliases=tuple(resource.get("versionAliases", ())),
            container_spec=dict(resource["containerSpec"]),
            model_dir=Path(resource["artifactUri"]),
            create_time=str(resource["versionCreateTime"]),
            parent_model=str(resource.get("parentModel", "")),
            description=str(resource.get("description", "")),
            labels=dict(resource.get("labels", {})),
        )


@dataclass(frozen=True)
class ModelReference:
    """A parsed model name: the model id and, optionally, a version id or alias."""

    model_id: str
    ref: str = ""
    """Version id (digits), alias, or empty for the ``default`` version."""


def parse_model_name(name: str) -> ModelReference:
    """Parse ``projects/local/locations/local/models/<id>[@<version or alias>]`` (the prefix
    may be left out, as with ``ModelGetOp``'s ``model_name``)."""
    match = _NAME_RE.fullmatch(name.strip())
    if match is None:
        raise RegistryError(
            f"{name!r} is not a model name; expected {MODELS_PREFIX}<id>, optionally with "
            "@<version id> or @<alias>"
        )
    if match["project"] is not None and (match["project"], match["location"]) != (
        PROJECT,
        LOCATION,
    ):
        raise RegistryError(
            f"{name!r} names a model in project {match['project']!r}, location "
            f"{match['location']!r}; the local registry only holds {MODELS_PREFIX}<id>"
        )
    return ModelReference(match["model"], match["ref"] or "")


# --- validation ------------------------------------------------------------------------------


def check_aliases(aliases: Iterable[str]) -> tuple[str, ...]:
    """Validate version aliases (Vertex's format); returns them without duplicates, in order."""
    if isinstance(aliases, str):
        raise RegistryError(f"version aliases must be a list, not the string {aliases!r}")
    checked: list[str] = []
    for alias in aliases:
        if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
            raise RegistryError(
                f"version alias {alias!r} is invalid: Vertex AI requires "
                "[a-z][a-zA-Z0-9-]{0,126}[a-z0-9] (a lowercase letter first, then letters, "
                "digits or '-', ending in a lowercase letter or digit; no '_' or '.')"
            )
        if alias not in checked:
            checked.append(alias)
    return tuple(checked)


def _check_display_name(display_name: str) -> None:
    if not isinstance(display_name, str) or not display_name.strip() or len(display_name) > 128:
        raise RegistryError(f"display name {display_name!r} must be 1 to 128 characters")


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Vertex's label rules: keys and values up to 63 lowercase letters, digits, '_' or '-';
    keys start with a letter."""

    def valid(text: Any, *, key: bool) -> bool:
        return (
            isinstance(text, str)
            and len(text) <= 63
            and text == text.lower()
            and all(ch.isalnum() or ch in "_-" for ch in text)
            and (not key or (text[:1].isalpha()))
        )

    for key, value in labels.items():
        if not valid(key, key=True) or not valid(value, key=False):
            raise RegistryError(
                f"label {key!r}: {value!r} is invalid: keys and values are at most 63 "
                "lowercase letters, digits, '_' or '-', and keys start with a letter"
            )
    return dict(labels)


def _whole_numbers(value: Any) -> Any:
    """Turn floats that hold whole numbers into ints, recursively. kfp.local hands every number
    in artifact metadata back as a float (``containerPort: 8080.0``), and no
    ``ModelContainerSpec`` field is a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def check_container_spec(container_spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``ModelContainerSpec`` (REST camelCase, as in the ``containerSpec`` metadata
    of a ``google.UnmanagedContainerModel``) and return it normalised: whole-number floats
    made ints and ``ports`` defaulted to ``[{"containerPort": 8080}]``.

    Raises ``RegistryError`` for what Vertex AI would refuse at upload or what could never
    serve: no ``imageUri``, ports given as bare numbers or out of range, routes not starting
    with ``/``, malformed ``env`` or ``env`` names with Vertex's reserved ``AIP_`` prefix
    (Vertex overwrites those, so they would silently not take effect).
    """
    if not isinstance(container_spec, Mapping):
        raise RegistryError(f"containerSpec must be an object, got {container_spec!r}")
    spec = _whole_numbers(dict(container_spec))
    image = spec.get("imageUri")
    if not isinstance(image, str) or not image.strip():
        raise RegistryError(f"containerSpec needs imageUri (the serving image), got {spec!r}")
    ports = spec.get("ports") or [{"containerPort": vertex.DEFAULT_PORT}]
    for port in ports:
        number = port.get("containerPort") if isinstance(port, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise RegistryError(
                f"containerSpec.ports entry {port!r} is invalid: ports are objects like "
                '{"containerPort": 8080} with a port number from 1 to 65535'
            )
    spec["ports"] = ports
    for key in ("predictRoute", "healthRoute"):
        route = spec.get(key)
        if route is not None and (not isinstance(route, str) or not route.startswith("/")):
            raise RegistryError(f"containerSpec.{key} {route!r} must be a path starting with /")
    env = spec.get("env") or []
    for entry in env:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or not isinstance(entry.get("value", ""), str):
            raise RegistryError(
                f"containerSpec.env entry {entry!r} is invalid: expected "
                '{"name": "NAME", "value": "text"}'
            )
        if name.startswith(vertex.RESERVED_PREFIX):
            raise RegistryError(
                f"containerSpec.env sets {name}: Vertex AI reserves the {vertex.RESERVED_PREFIX} "
                "prefix and overwrites such variables; use another name"
            )
    return spec


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (uploads from several processes queue here)."""
    with open(registry / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_index(registry: Path) -> dict[str, Any]:
    path = registry / INDEX_FILE
    if not path.exists():
        return {"models": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"the registry index {path} is not valid JSON: {exc}") from exc


def _version_dir(registry: Path, model_id: str, version_id: str) -> Path:
    return registry / "models" / model_id / "versions" / version_id


def _next_version_id(registry: Path, model_id: str) -> str:
    """One more than the highest version directory (a version copied in by an upload that
    crashed before updating the index still holds its number)."""
    versions = registry / "models" / model_id / "versions"
    numbers = [int(p.name) for p in versions.glob("*") if p.name.isdigit()]
    return str(max(numbers, default=0) + 1)


def _new_model_id(index: Mapping[str, Any]) -> str:
    while True:
        model_id = new_resource_id()
        if model_id not in index["models"]:
            return model_id


def _resolve(model_id: str, entry: Mapping[str, Any], ref: str) -> str:
    """The version id that ``ref`` (a version id, an alias, or empty for default) names."""
    versions = entry["versions"]
    if ref.isdigit():
        if ref not in versions:
            raise RegistryError(
                f"model {MODELS_PREFIX}{model_id} has no version {ref} (versions: "
                f"{', '.join(sorted(versions, key=int))})"
            )
        return ref
    alias = ref or DEFAULT_ALIAS
    for version_id, version in versions.items():
        if alias in version["versionAliases"]:
            return version_id
    held = sorted({a for v in versions.values() for a in v["versionAliases"]})
    raise RegistryError(
        f"model {MODELS_PREFIX}{model_id} has no version with alias {alias!r} "
        f"(aliases: {', '.join(held)})"
    )


def _model_entry(registry: Path, index: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    entry = index["models"].get(model_id)
    if entry is None:
        raise RegistryError(
            f"model {MODELS_PREFIX}{model_id} does not exist in the registry {registry}"
        )
    return entry


def _make_readable(root: Path) -> None:
    """Let every user read the tree (the serving container runs as a non-root user)."""
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def upload_model(
    registry_dir: str | Path,
    display_name: str,
    model_dir: str | Path,
    container_spec: Mapping[str, Any],
    *,
    parent_model: str | None = None,
    version_aliases: Iterable[str] = (DEFAULT_ALIAS,),
    labels: Mapping[str, str] | None = None,
    description: str = "",
) -> RegisteredVersion:
    """Register ``model_dir`` served by ``container_spec`` as a new model, or as a new version
    of ``parent_model``; returns the new version.

    Args:
        registry_dir: the registry's directory (created when missing).
        display_name: the model's display name (1-128 characters).
        model_dir: the model directory (copied into the registry).
        container_spec: ``ModelContainerSpec`` in REST camelCase (see
            ``check_container_spec``).
        parent_model: an existing model's resource name; the upload becomes its next
            version. A ``@version`` or ``@alias`` suffix only names the version recorded as
            the new one's ``parentModel`` (default: the ``default`` version).
        version_aliases: aliases for the new version; any held by another version of the
            model move here. The first version of a model always gets ``default``.
        labels: Vertex-style labels.
        description: free text.

    Raises:
        RegistryError: a rule above is broken, ``model_dir`` is not a directory, or
            ``parent_model`` does not exist.
    """
    _check_display_name(display_name)
    spec = check_container_spec(container_spec)
    aliases = check_aliases(version_aliases)
    checked_labels = _check_labels(labels or {})
    parent = parse_model_name(parent_model) if parent_model else None
    source = Path(model_dir)
    if not source.is_dir():
        raise RegistryError(f"model directory {source} does not exist or is not a directory")
    registry = Path(registry_dir).resolve()
    registry.mkdir(parents=True, exist_ok=True)

    # Copy outside the lock (models can be large); a rename moves it into place under it.
    staging = registry / "staging" / uuid.uuid4().hex
    try:
        shutil.copytree(source, staging / "model", symlinks=True)
        _make_readable(staging)
        with _locked(registry):
            return _register(
                registry,
                staging,
                display_name,
                spec,
                parent,
                aliases,
                checked_labels,
                description,
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _register(
    registry: Path,
    staging: Path,
    display_name: str,
    spec: dict[str, Any],
    parent: ModelReference | None,
    aliases: tuple[str, ...],
    labels: dict[str, str],
    description: str,
) -> RegisteredVersion:
    """The part of ``upload_model`` that runs under the registry lock."""
    index = _read_index(registry)
    now = now_rfc3339()
    parent_name = ""
    if parent is None:
        model_id = _new_model_id(index)
        entry: dict[str, Any] = {"displayName": display_name, "createTime": now, "versions": {}}
        index["models"][model_id] = entry
    else:
        model_id = parent.model_id
        entry = _model_entry(registry, index, model_id)
        parent_name = f"{MODELS_PREFIX}{model_id}@{_resolve(model_id, entry, parent.ref)}"
    if not entry["versions"] and DEFAULT_ALIAS not in aliases:
        aliases = (DEFAULT_ALIAS, *aliases)
    version_id = _next_version_id(registry, model_id)
    target = _version_dir(registry, model_id, version_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)

    moved = []
    for other_id, other in entry["versions"].items():
        kept = [a for a in other["versionAliases"] if a not in aliases]
        if kept != other["versionAliases"]:
            other["versionAliases"] = kept
            moved.append(other_id)
    version = RegisteredVersion(
        model_id=model_id,
        version_id=version_id,
        display_name=display_name,
        version_aliases=aliases,
        container_spec=spec,
        model_dir=target / "model",
        create_time=now,
        parent_model=parent_name,
        description=description,
        labels=labels,
    )
    write_json_atomically(target / MODEL_FILE, version.to_resource())
    entry["versions"][version_id] = {"versionAliases": list(aliases), "createTime": now}
    entry["updateTime"] = now
    write_json_atomically(registry / INDEX_FILE, index)
    for other_id in moved:  # keep each model.json readable on its own
        path = _version_dir(registry, model_id, other_id) / MODEL_FILE
        resource = json.loads(path.read_text(encoding="utf-8"))
        resource["versionAliases"] = entry["versions"][other_id]["versionAliases"]
        write_json_atomically(path, resource)
    return version


def _load_version(
    registry: Path, model_id: str, version_id: str, aliases: list[str]
) -> RegisteredVersion:
    path = _version_dir(registry, model_id, version_id) / MODEL_FILE
    try:
        resource = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from exc
    resource["versionAliases"] = aliases  # the index is the source of truth for aliases
    return RegisteredVersion.from_resource(resource)


def get_version(registry_dir: str | Path, model: str) -> RegisteredVersion:
    """The version ``model`` names: ``...models/<id>@<version>``, ``...@<alias>``, or
    ``...models/<id>`` for the ``default`` version (as Vertex resolves it)."""
    registry = Path(registry_dir).resolve()
    reference = parse_model_name(model)
    entry = _model_entry(registry, _read_index(registry), reference.model_id)
    version_id = _resolve(reference.model_id, entry, reference.ref)
    aliases = entry["versions"][version_id]["versionAliases"]
    return _load_version(registry, reference.model_id, version_id, aliases)


def list_versions(registry_dir: str | Path, model: str | None = None) -> list[RegisteredVersion]:
    """Every version in the registry (or of ``model``), oldest model first, by version."""
    registry = Path(registry_dir).resolve()
    index = _read_index(registry)
    if model is not None:
        model_id = parse_model_name(model).model_id
        models = {model_id: _model_entry(registry, index, model_id)}
    else:
        models = index["models"]
    ordered = sorted(models.items(), key=lambda item: item[1]["createTime"])
    return [
        _load_version(registry, model_id, version_id, version["versionAliases"])
        for model_id, entry in ordered
        for version_id, version in sorted(entry["versions"].items(), key=lambda v: int(v[0]))
    ]


# --- aliases and evaluations of an existing version ----------------------------------------


EVALUATIONS_DIR = "evaluations"


def _pinned_version(registry: Path, version_name: str) -> tuple[str, str, dict[str, Any]]:
    """(model id, version id, index) of ``...models/<id>@<version or alias>`` (an alias is
    resolved to the version holding it now; without a suffix, the ``default`` version)."""
    reference = parse_model_name(version_name)
    index = _read_index(registry)
    entry = _model_entry(registry, index, reference.model_id)
    return reference.model_id, _resolve(reference.model_id, entry, reference.ref), index


def merge_version_aliases(
    registry_dir: str | Path, version_name: str, add: Iterable[str]
) -> RegisteredVersion:
    """Give the version ``...models/<id>@<version>`` the aliases ``add`` (Vertex's
    ``MergeVersionAliases``): an alias is unique within a model, so one another version held
    moves here; ``default`` moves the model's serving version. Returns the version as it is
    now.

    Raises:
        RegistryError: an alias breaks Vertex's format, or the model or version does not
            exist.
    """
    aliases = check_aliases(add)
    registry = Path(registry_dir).resolve()
    with _locked(registry):
        model_id, version_id, index = _pinned_version(registry, version_name)
        entry = index["models"][model_id]
        changed = []
        for other_id, other in entry["versions"].items():
            if other_id == version_id:
                merged = [
                    *other["versionAliases"],
                    *(a for a in aliases if a not in other["versionAliases"]),
                ]
            else:
                merged = [a for a in other["versionAliases"] if a not in aliases]
            if merged != other["versionAliases"]:
                other["versionAliases"] = merged
                changed.append(other_id)
        if changed:
            entry["updateTime"] = now_rfc3339()
            write_json_atomically(registry / INDEX_FILE, index)
            for other_id in changed:  # keep each model.json readable on its own
                path = _version_dir(registry, model_id, other_id) / MODEL_FILE
                resource = json.loads(path.read_text(encoding="utf-8"))
                resource["versionAliases"] = entry["versions"][other_id]["versionAliases"]
                write_json_atomically(path, resource)
        aliases_now = entry["versions"][version_id]["versionAliases"]
        return _load_version(registry, model_id, version_id, aliases_now)


def import_evaluation(
    registry_dir: str | Path, version_name: str, evaluation: Mapping[str, Any]
) -> str:
    """Attach a ``ModelEvaluation`` (REST form: ``metricsSchemaUri``, ``metrics``, ...) to the
    version, as Vertex's ``ImportModelEvaluation`` does; written as
    ``evaluations/<id>.json`` in the version's directory with its ``name`` and ``createTime``.
    Returns its resource name, ``projects/local/locations/local/models/<id>/evaluations/<eid>``.

    Raises:
        RegistryError: the evaluation is not a JSON object, or the model or version does not
            exist.
    """
    if not isinstance(evaluation, Mapping):
        raise RegistryError(
            f"an evaluation is a ModelEvaluation object (metricsSchemaUri, metrics, ...), not "
            f"{type(evaluation).__name__}"
        )
    registry = Path(registry_dir).resolve()
    model_id, version_id, _ = _pinned_version(registry, version_name)
    evaluation_id = new_resource_id()
    name = f"{MODELS_PREFIX}{model_id}/evaluations/{evaluation_id}"
    resource = {
        **evaluation,
        "name": name,
        "createTime": now_rfc3339(),
        "modelVersionId": version_id,
    }
    try:
        text = json.dumps(resource)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"the evaluation of {version_name} is not JSON: {exc}") from exc
    path = _version_dir(registry, model_id, version_id) / EVALUATIONS_DIR / f"{evaluation_id}.json"
    write_json_atomically(path, json.loads(text))
    return name


def list_evaluations(registry_dir: str | Path, version_name: str) -> list[dict[str, Any]]:
    """The evaluations imported for the version, oldest first."""
    registry = Path(registry_dir).resolve()
    model_id, version_id, _ = _pinned_version(registry, version_name)
    folder = _version_dir(registry, model_id, version_id) / EVALUATIONS_DIR
    found = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")]
    return sorted(found, key=lambda evaluation: evaluation["createTime"])


class LocalRegistryOps:
    """The local registry as a rollout drives it (``rollout.steps.Registry``, structurally)."""

    def __init__(self, registry_dir: str | Path) -> None:
        self.registry_dir = Path(registry_dir)

    def move_alias(self, version_name: str, alias: str) -> None:
        """Give ``alias`` to the version (taken from the version that held it)."""
        merge_version_aliases(self.registry_dir, version_name, [alias])

    def import_evaluation(self, version_name: str, evaluation: Mapping[str, Any]) -> str:
        """Attach a ``ModelEvaluation`` to the version; its resource name."""
        return import_evaluation(self.registry_dir, version_name, evaluation)

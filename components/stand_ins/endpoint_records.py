"""The record of a local endpoint and the Vertex routes and headers its router answers with:
what ``endpoints`` (which writes the records) and ``router`` (which reads them) share.

An endpoint is ``<endpoints_dir>/<endpoint_id>.json``, a ``LocalEndpoint`` with its
``LocalDeployedModel``s and traffic split, replaced atomically (``files.write_json_atomically``)
under the directory's lock (``.lock``; pipeline tasks and the command line may change one at
once), so that a reader sees the old record or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.files import write_json_atomically
from components.runners import RunnerNotFoundError, RunningServer, detect_runner
from components.stand_ins.errors import EndpointError, EndpointInputError
from components.stand_ins.resources import ENDPOINTS_PREFIX

LOCK_FILE = ".lock"

HEADER_ENDPOINT_ID = "X-Vertex-AI-Endpoint-Id"
HEADER_DEPLOYED_MODEL_ID = "X-Vertex-AI-Deployed-Model-Id"
HEADER_MODEL = "X-Vertex-AI-Model"
"""The model's resource name, without ``@version``."""
HEADER_MODEL_VERSION_ID = "X-Vertex-AI-Model-Version-Id"
ROUTER_ERROR_HEADER = "X-Local-Router-Error"
"""Ours: set on the answers the router makes itself (never on a model's own answer), naming
the case: ``no-traffic``, ``unknown-endpoint``, ``unknown-deployed-model``, ``unreachable``,
``broken-answer``, ``timeout``, ``too-large``, ``record-unreadable``; on its gRPC port (in the
trailing metadata, lower-case) also ``no-grpc``."""
UNREACHABLE = "unreachable"


# --- routes ----------------------------------------------------------------------------------


def predict_path(endpoint_id: str) -> str:
    """``/v1/projects/local/locations/local/endpoints/<id>:predict``."""
    return f"/v1/{ENDPOINTS_PREFIX}{endpoint_id}:predict"


def raw_predict_path(endpoint_id: str, deployed_model_id: str | None = None) -> str:
    """The endpoint's ``:rawPredict`` (the split picks the model), or with
    ``deployed_model_id`` the rawPredict of that one deployed model (even at 0%)."""
    if deployed_model_id:
        return f"/v1/{ENDPOINTS_PREFIX}{endpoint_id}/deployedModels/{deployed_model_id}:rawPredict"
    return f"/v1/{ENDPOINTS_PREFIX}{endpoint_id}:rawPredict"


def model_headers(deployed: LocalDeployedModel) -> dict[str, str]:
    """The headers naming the deployed model that answered (gRPC metadata takes them in lower
    case)."""
    return {
        HEADER_DEPLOYED_MODEL_ID: deployed.id,
        HEADER_MODEL: deployed.model_name,
        HEADER_MODEL_VERSION_ID: deployed.version_id,
    }


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalDeployedModel:
    """One model version deployed on a local endpoint, and its server."""

    id: str
    model: str
    """The version-pinned model resource name, ``...models/<id>@<version>``."""
    model_display_name: str
    base_url: str
    """The server's ``http://127.0.0.1:<host port>``."""
    predict_route: str
    health_route: str
    container_id: str
    container_name: str
    image: str
    engine: str
    """What ``detect_runner`` takes to reach the server's runner: the engine's path, or
    ``process``."""
    create_time: str
    startup_seconds: float | None = None
    """From ``run`` until health first answered 200; None while it starts (or when the deploy
    was interrupted)."""
    grpc_target: str = ""
    """The server's published gRPC port, ``127.0.0.1:<host port>``; ``""`` when its
    containerSpec has no ``grpcPorts``."""

    @property
    def model_name(self) -> str:
        """The model's resource name without ``@version`` (``PredictResponse.model``)."""
        return self.model.rsplit("@", 1)[0]

    @property
    def version_id(self) -> str:
        """The deployed model version's id."""
        return self.model.rsplit("@", 1)[-1]

    @property
    def url(self) -> str:
        """The server's own predict URL (the router forwards there)."""
        return self.base_url + self.predict_route

    @property
    def ready(self) -> bool:
        """Whether its health route answered 200 at deploy (it can take traffic)."""
        return self.startup_seconds is not None

    def container(self) -> RunningServer:
        """A handle on its server (it may have exited or been removed)."""
        try:
            engine = detect_runner(self.engine)
        except RunnerNotFoundError as exc:
            raise EndpointError(
                f"deployed model {self.id} was deployed with {self.engine}, which no longer "
                f"works: {exc}"
            ) from exc
        return engine.attach(self.container_id, self.container_name, self.image)


@dataclass(frozen=True)
class LocalEndpoint:
    """The record of one local endpoint (``<endpoints_dir>/<endpoint_id>.json``)."""

    endpoint_id: str
    display_name: str
    create_time: str
    router_port: int = 0
    """The router's 127.0.0.1 port (0 before it first started)."""
    router_pid: int = 0
    grpc_port: int = 0
    """The router's gRPC 127.0.0.1 port (0 before it first started, or for a router started
    before routers served gRPC)."""
    deployed_models: tuple[LocalDeployedModel, ...] = ()
    """In the order they were deployed."""
    traffic_split: dict[str, int] = field(default_factory=dict)
    """Deployed model id -> percent (Vertex's rules: ``traffic.check_split``)."""
    previous_traffic_split: dict[str, int] = field(default_factory=dict)
    """The split before the last ``set_traffic`` or deploy (what ``rollback_traffic``
    restores)."""

    @property
    def resource_name(self) -> str:
        """``projects/local/locations/local/endpoints/<endpoint_id>``."""
        return ENDPOINTS_PREFIX + self.endpoint_id

    @property
    def base_url(self) -> str:
        """The router's ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def url(self) -> str:
        """Where to POST ``{"instances": [...]}``: the router's ``:predict``."""
        return self.base_url + predict_path(self.endpoint_id)

    @property
    def grpc_target(self) -> str:
        """The router's gRPC ``127.0.0.1:<port>``; ``""`` without one."""
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else ""

    @property
    def deployed_ids(self) -> list[str]:
        """The ids of the deployed models that finished starting (those a split may name)."""
        return [deployed.id for deployed in self.deployed_models if deployed.ready]

    def find_deployed_model(self, deployed_model_id: str) -> LocalDeployedModel | None:
        """The deployed model with that id, or None."""
        return next((d for d in self.deployed_models if d.id == deployed_model_id), None)

    def deployed_model(self, deployed_model_id: str) -> LocalDeployedModel:
        """The deployed model with that id.

        Raises:
            EndpointInputError: none has it (the message lists those deployed).
        """
        found = self.find_deployed_model(deployed_model_id.strip())
        if found is None:
            known = ", ".join(d.id for d in self.deployed_models) or "none"
            raise EndpointInputError(
                f"endpoint {self.endpoint_id} has no deployed model {deployed_model_id!r} "
                f"(deployed: {known}); `compile.py endpoints list` shows them"
            )
        return found

    def serving(self) -> list[tuple[LocalDeployedModel, int]]:
        """The deployed models with a share above 0, with it, in deployment order."""
        return [
            (deployed, self.traffic_split[deployed.id])
            for deployed in self.deployed_models
            if self.traffic_split.get(deployed.id, 0) > 0
        ]

    def to_json(self) -> dict[str, Any]:
        """The record as written."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalEndpoint:
        """Read a record back (also a one-model record written before endpoints held several:
        its model takes all the traffic, and the router starts on a free port)."""
        if "deployed_model_id" in data:
            return cls._from_single_model(data)
        values = dict(data)
        values["deployed_models"] = tuple(
            LocalDeployedModel(**deployed) for deployed in values.get("deployed_models", ())
        )
        for key in ("traffic_split", "previous_traffic_split"):
            values[key] = {k: int(v) for k, v in values.get(key, {}).items()}
        return cls(**values)

    @classmethod
    def _from_single_model(cls, data: Mapping[str, Any]) -> LocalEndpoint:
        deployed = LocalDeployedModel(
            id=data["deployed_model_id"],
            **{
                key: data[key]
                for key in (
                    "model",
                    "model_display_name",
                    "base_url",
                    "predict_route",
                    "health_route",
                    "container_id",
                    "container_name",
                    "image",
                    "engine",
                    "create_time",
                )
            },
            startup_seconds=data.get("startup_seconds"),
        )
        return cls(
            endpoint_id=data["endpoint_id"],
            display_name=data["display_name"],
            create_time=data["create_time"],
            deployed_models=(deployed,),
            traffic_split={deployed.id: 100},
        )


def directory_of(endpoints_dir: str | Path) -> Path:
    """The endpoints directory as an absolute path (the router is told its record's)."""
    return Path(endpoints_dir).resolve()


def record_path(endpoints_dir: str | Path, endpoint_id: str) -> Path:
    """``<endpoints_dir>/<endpoint_id>.json``."""
    return directory_of(endpoints_dir) / f"{endpoint_id}.json"


def router_log_path(endpoints_dir: str | Path, endpoint_id: str) -> Path:
    """``<endpoints_dir>/<endpoint_id>.router.log``: the router's start and reload lines."""
    return directory_of(endpoints_dir) / f"{endpoint_id}.router.log"


def read_record(path: Path) -> LocalEndpoint:
    """The endpoint record at ``path``.

    Raises:
        EndpointError: it cannot be read or is not an endpoint record.
    """
    try:
        return LocalEndpoint.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EndpointError(
            f"endpoint record {path} is unreadable ({type(exc).__name__}: {exc}); remove it "
            "and the servers it names by hand, or restore it"
        ) from exc


def write_record(endpoints_dir: str | Path, endpoint: LocalEndpoint) -> None:
    """Replace the endpoint's record in one step (hold ``locked`` around the read before)."""
    write_json_atomically(record_path(endpoints_dir, endpoint.endpoint_id), endpoint.to_json())


_LOCAL = threading.local()


@contextlib.contextmanager
def locked(endpoints_dir: str | Path) -> Iterator[None]:
    """Hold the directory's exclusive lock for a read-modify-write of its records (pipeline
    tasks and the command line queue here); taken again in the same thread, it is held
    already."""
    directory = directory_of(endpoints_dir)
    held: set[Path] = _LOCAL.__dict__.setdefault("held", set())
    if directory in held:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(directory)
        try:
            yield
        finally:
            held.discard(directory)
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_endpoint(endpoint_id: str, endpoints_dir: str | Path) -> LocalEndpoint:
    """The record of ``endpoint_id`` (an id or ``projects/local/locations/local/endpoints/ID``).

    Raises:
        EndpointInputError: there is no such endpoint (the message lists those there are).
    """
    endpoint_id = endpoint_id.strip().removeprefix(ENDPOINTS_PREFIX)
    path = record_path(endpoints_dir, endpoint_id)
    if not endpoint_id.isdigit() or not path.is_file():
        known = [endpoint.endpoint_id for endpoint in list_endpoints(endpoints_dir)]
        raise EndpointInputError(
            f"no endpoint {endpoint_id!r} in {endpoints_dir} "
            + (f"(deployed there: {', '.join(known)})" if known else "(none deployed there)")
        )
    return read_record(path)


def list_endpoints(endpoints_dir: str | Path) -> list[LocalEndpoint]:
    """Every endpoint recorded in ``endpoints_dir``, oldest first."""
    records = sorted(Path(endpoints_dir).glob("[0-9]*.json"))
    return sorted(map(read_record, records), key=lambda e: (e.create_time, e.endpoint_id))

"""A new version's rollout on a live endpoint, the same on Vertex and locally: find the deployed
model, then promote it (traffic, alias, what no longer serves undeployed) or roll it back.

The steps talk to an endpoint and a registry through two small interfaces (``Endpoint``,
``Registry``): ``rollout.vertex`` implements them with the aiplatform SDK, the local
stand-ins (``stand_ins.endpoints``) with the local router and registry. The smoke test between
deploy and promotion is ``contract.smoke``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from components import traffic, vertex
from components.runners import Exchange

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = vertex.DEFAULT_ALIAS
DeployedModel = vertex.DeployedModel
PROMOTE_ALL, PROMOTE_CANARY = "all", "canary"
PROMOTE_CHOICES = (PROMOTE_ALL, PROMOTE_CANARY)
"""``promote``: all traffic to the new version at once, or stay at the canary share."""


class Endpoint(Protocol):
    """What a rollout needs of an endpoint."""

    resource_name: str

    def deployed_models(self) -> list[DeployedModel]:
        """The models deployed now."""

    def traffic_split(self) -> dict[str, int]:
        """Deployed model id -> percent, now."""

    def set_traffic(self, split: Mapping[str, int]) -> None:
        """Replace the traffic split (Vertex's rules: ``traffic.check_split``)."""

    def undeploy(self, deployed_model_id: str) -> None:
        """Undeploy a deployed model; a share it still has goes back to the others in
        proportion (``traffic.without_model``, as Vertex does), the last one leaves the split
        empty."""

    def raw_predict(self, deployed_model_id: str, body: bytes, timeout_s: float) -> Exchange:
        """Send ``body`` to the endpoint's rawPredict for ``deployed_model_id``; the answer's
        ``x-vertex-ai-deployed-model-id`` header says which deployed model answered (on Vertex
        the traffic split decides it, locally the router sends it to that model)."""


class Registry(Protocol):
    """What a rollout needs of the model registry."""

    def move_alias(self, version_name: str, alias: str) -> None:
        """Give ``alias`` to the version ``...models/ID@VERSION`` (taken from the version that
        held it)."""

    def import_evaluation(self, version_name: str, evaluation: Mapping[str, Any]) -> str:
        """Attach a ``ModelEvaluation`` (REST form) to the version; its resource name."""


class RolloutError(RuntimeError):
    """A rollout step cannot go on; the message says what the endpoint holds and what to do."""


def _model_and_version(name: str) -> tuple[str, str]:
    """(``...models/ID``, VERSION or "") of ``...models/ID[@VERSION]``."""
    model, _, version = name.partition("@")
    return model, version


def _model_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def find_deployed(endpoint: Endpoint, version_name: str) -> DeployedModel:
    """The deployed model serving ``version_name`` (``...models/ID@VERSION``; the newest
    deployment when it is deployed twice).

    Raises:
        RolloutError: the version is not deployed on the endpoint.
    """
    model, version = _model_and_version(version_name)
    matches = [
        deployed
        for deployed in endpoint.deployed_models()
        if _model_id(deployed.model) == _model_id(model)
        and (not version or deployed.version_id == version)
    ]
    if not matches:
        raise RolloutError(
            f"{version_name} is not deployed on {endpoint.resource_name}: the deploy step did "
            "not leave it there (see its log)"
        )
    return max(matches, key=lambda deployed: deployed.create_time)


@dataclass
class Outcome:
    """What a promotion or a rollback did to the endpoint and the registry."""

    action: str
    """``promoted``, ``canary`` (kept at its share) or ``rolled back``."""
    deployed_model_id: str
    traffic_before: dict[str, int]
    traffic_after: dict[str, int]
    alias_moved: bool = False
    undeployed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "deployedModelId": self.deployed_model_id,
            "trafficBefore": self.traffic_before,
            "trafficAfter": self.traffic_after,
            "aliasMoved": self.alias_moved,
            "undeployed": self.undeployed,
            "kept": self.kept,
            "notes": self.notes,
        }


def promote(
    endpoint: Endpoint,
    registry: Registry,
    version_name: str,
    *,
    traffic_before: Mapping[str, int],
    how: str = PROMOTE_ALL,
    keep_previous: bool = False,
) -> Outcome:
    """After a passed smoke test: with ``how="all"`` every request goes to the new version,
    it takes the ``default`` alias and the other deployed models are undeployed (kept with
    ``keep_previous``); with ``"canary"`` it keeps its share, the alias stays where it is
    and the others keep serving (promote later by setting the traffic split)."""
    if how not in PROMOTE_CHOICES:
        raise RolloutError(f"promote {how!r}: use one of {', '.join(PROMOTE_CHOICES)}")
    new = find_deployed(endpoint, version_name)
    others = [d.id for d in endpoint.deployed_models() if d.id != new.id]
    outcome = Outcome("canary", new.id, dict(traffic_before), endpoint.traffic_split())
    if how == PROMOTE_CANARY:
        outcome.kept = others
        outcome.notes.append(
            f"kept at {outcome.traffic_after.get(new.id, 0)}% (promote=canary); the "
            f"{DEFAULT_ALIAS!r} alias stays on the version that held it"
        )
        return outcome
    outcome.action = "promoted"
    endpoint.set_traffic({new.id: 100})
    logger.info("%s: all traffic to %s (%s)", endpoint.resource_name, new.id, version_name)
    registry.move_alias(new.version_name, DEFAULT_ALIAS)
    outcome.alias_moved = True
    if keep_previous:
        outcome.kept = others
        outcome.notes.append("keep_previous is set: the previous deployed models stay, at 0%")
    else:
        for deployed_id in others:
            endpoint.undeploy(deployed_id)
            outcome.undeployed.append(deployed_id)
            logger.info("undeployed %s from %s (no traffic)", deployed_id, endpoint.resource_name)
    outcome.traffic_after = endpoint.traffic_split()
    return outcome


def roll_back(
    endpoint: Endpoint, version_name: str, *, traffic_before: Mapping[str, int]
) -> Outcome:
    """After a failed smoke test: the traffic split as it was before the deploy (the models
    still deployed; when one of them is gone, the new model's share goes back to the others in
    proportion), then the new deployed model undeployed. The alias never moved."""
    new = find_deployed(endpoint, version_name)
    remaining = {d.id for d in endpoint.deployed_models() if d.id != new.id}
    current = endpoint.traffic_split()
    before = {key: share for key, share in traffic_before.items() if key in remaining}
    outcome = Outcome("rolled back", new.id, dict(traffic_before), current)
    if remaining:
        restore = before if sum(before.values()) == 100 else None
        if restore is None:
            restore = traffic.serving(traffic.without_model(current, new.id))
            outcome.notes.append(
                f"the split before the deploy ({traffic.format_split(traffic_before)}) names "
                "models no longer deployed: the new model's share went back to the others"
            )
        if not restore:  # the others had no share: the newest of them serves again
            newest = max(
                (d for d in endpoint.deployed_models() if d.id != new.id),
                key=lambda deployed: deployed.create_time,
            )
            restore = {newest.id: 100}
            outcome.notes.append(f"no other model had traffic: {newest.id} serves all again")
        endpoint.set_traffic(restore)
    endpoint.undeploy(new.id)
    outcome.undeployed.append(new.id)
    outcome.traffic_after = endpoint.traffic_split()
    logger.info(
        "%s: rolled back %s; traffic %s",
        endpoint.resource_name,
        new.id,
        traffic.format_split(outcome.traffic_after),
    )
    return outcome

"""A new version's way onto a live endpoint, Vertex or local: the rollout steps
(``rollout.steps``) run against the endpoint and registry a step's artifacts name, with the
smoke test of ``contract.smoke``. Joins rollout, contract and stand_ins, as
``checked_build`` joins imaging and contract.
"""

from components.release.run import (
    LOCAL_PREFIX,
    RolloutFailed,
    autoscale_version,
    evidence,
    promote_version,
    roll_back_version,
    smoke_test_version,
    targets,
)

__all__ = [
    "LOCAL_PREFIX",
    "RolloutFailed",
    "autoscale_version",
    "evidence",
    "promote_version",
    "roll_back_version",
    "smoke_test_version",
    "targets",
]

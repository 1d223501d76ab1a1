"""The contract check: does a serving image honour Vertex AI's custom-container contract?

``rules`` holds the rules, their levels (contract, hygiene), what Vertex does when one is
broken, and the report; ``sample`` the instances a check sends and how (one batch, each
alone, another order); ``settings`` the check's numbers and its view of the server;
``checker`` applies the rules to any running server over HTTP, and ``grpc_rules`` those of
its gRPC port where one is declared (``containerSpec.grpcPorts``); ``image`` runs an image
(or, in process mode, the server code) the way Vertex runs it and checks it; ``in_build``
does it as steps of the Cloud Build that builds the image; ``outputs`` writes a component's
report, metrics and container spec; ``smoke`` sends the sample through a live endpoint to a
newly deployed model (a rollout's smoke test).
"""

from components.contract.checker import check_server
from components.contract.grpc_rules import GrpcTarget
from components.contract.image import (
    NO_ENGINE_HINT,
    check_image,
    check_model_image,
    choose_check_engine,
    describe_listening,
    directory_bytes,
    listening_sockets,
)
from components.contract.outputs import publish
from components.contract.rules import (
    CONTRACT,
    FOREIGN_RULES,
    GRPC_RULES,
    HYGIENE,
    LEVELS,
    RULES,
    VERTEX_WOULD,
    ContractReport,
    ContractViolation,
    RuleResult,
    explain_exit,
)
from components.contract.sample import (
    INSTANCE_FORMATS,
    Sample,
    as_list,
    feature_names,
    model_sample,
)
from components.contract.settings import CheckSettings, ServerObserver
from components.contract.smoke import SmokeReport, smoke_test

__all__ = [
    "CONTRACT",
    "FOREIGN_RULES",
    "GRPC_RULES",
    "HYGIENE",
    "INSTANCE_FORMATS",
    "LEVELS",
    "NO_ENGINE_HINT",
    "RULES",
    "VERTEX_WOULD",
    "CheckSettings",
    "ContractReport",
    "ContractViolation",
    "GrpcTarget",
    "RuleResult",
    "Sample",
    "ServerObserver",
    "SmokeReport",
    "as_list",
    "check_image",
    "check_model_image",
    "check_server",
    "choose_check_engine",
    "describe_listening",
    "directory_bytes",
    "explain_exit",
    "feature_names",
    "listening_sockets",
    "model_sample",
    "publish",
    "smoke_test",
]

"""The serving image built, contract-checked and pushed in one Cloud Build: on Vertex AI
Pipelines, where a task has no container engine, the image that reaches Artifact Registry is
the image that passed the check.

``request`` composes the build (``imaging``'s build step, ``contract.in_build``'s check steps);
``run`` submits it, follows it and reads the verdict back from its log. A layer above the
library packages, since it joins two of them.
"""

from components.checked_build.request import (
    CHECKED_BUILD_TIMEOUT_S,
    checked_build_request,
    report_location,
)
from components.checked_build.run import CheckedBuild, build_and_check, read_checked_build

__all__ = [
    "CHECKED_BUILD_TIMEOUT_S",
    "CheckedBuild",
    "build_and_check",
    "checked_build_request",
    "read_checked_build",
    "report_location",
]

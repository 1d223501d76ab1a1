"""What a contract check is given: its numbers, the container's variables, and a view of the
server it checks.

``CheckSettings`` holds the numbers (Vertex AI's by default); ``checked_env`` the variables
the container under check gets and the emitted ``containerSpec.env`` declares.
``ServerObserver`` is how whatever runs the server (a container, a local process) tells the
check about it, and ``ServerWatch`` reads it for the rules, HTTP (``checker``) and gRPC
(``grpc_rules``) alike: whether the server exited, what that and its sockets say, and its log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from components import vertex
from components.contract.sample import SHAPES


class _Answered(Protocol):
    @property
    def ok(self) -> bool: ...


Answer = TypeVar("Answer", bound=_Answered)
"""An exchange over HTTP or a gRPC call: anything that says whether it went through."""


@dataclass
class CheckSettings:
    """The numbers the check uses; the defaults are Vertex AI's."""

    liveness_attempts: int = vertex.LIVENESS_ATTEMPTS
    liveness_interval_s: float = vertex.LIVENESS_INTERVAL_S
    health_timeout_s: float = vertex.HEALTH_TIMEOUT_S
    startup_deadline_s: float = 120.0
    """How long health may take to answer 200 (model download and load included)."""
    ready_grace_s: float = 10.0
    """After a failed first predict, how long to keep retrying to tell a server that said
    healthy too early from one whose predict route is broken."""
    predict_timeout_s: float = vertex.PREDICT_TIMEOUT_S
    max_request_bytes: int = vertex.MAX_FORWARDED_BODY_BYTES
    """The oversize rule sends a body over this."""
    max_batch_bytes: int = vertex.SHARED_ENDPOINT_MAX_BODY_BYTES
    """Predict requests are split to stay within this."""
    request_shapes: tuple[str, ...] = SHAPES
    """How the sample is sent for ``predict-values``: ``batch``, ``single``, ``reversed``."""
    strict: bool = False
    """Hygiene rules fail the check too."""
    foreign_image: bool = False
    """The image is not one this project built (a Vertex pre-built container, a Custom
    Prediction Routine, a team's own server): ``predict-values`` compares a plain answer (a
    label, or class probabilities) with the same part of the exported expectation, and an
    error on an edge instance warns (``edge-errors``) instead of failing ``predict-values``."""
    burst_size: int = 8
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    grace_period_s: float = vertex.GRACE_PERIOD_S
    poll_interval_s: float = 0.25

    @property
    def liveness_window_s(self) -> float:
        """Seconds from start to Vertex's last liveness attempt (30 s with the defaults).

        Polling more often than every ``liveness_interval_s`` up to that moment gives the same
        verdict as Vertex's schedule, sooner.
        """
        return (self.liveness_attempts - 1) * self.liveness_interval_s


def checked_env(env: Mapping[str, str] | None, grpc_port: int | None) -> dict[str, str]:
    """The variables of the container under check, which the emitted ``containerSpec.env``
    declares too: ``env`` (``ValueError`` for an ``AIP_`` name), and with a ``grpc_port``
    ``SERVING_GRPC_PORT`` set to it unless ``env`` sets that variable itself.

    Vertex sets no variable for ``grpcPorts``, and this project's server serves gRPC only where
    that variable names a port, so a check asked for gRPC gives it, here alone for the local
    check and the Cloud Build one alike; another image ignores a variable it does not read.
    """
    variables = vertex.check_user_env(env or {})
    if grpc_port:
        variables.setdefault(vertex.GRPC_PORT_VARIABLE, str(grpc_port))
    return variables


class ServerObserver(Protocol):
    """What ``check_server`` may ask about the process behind the URL (a container, say)."""

    def exit_note(self) -> str | None:
        """``None`` while the server process runs; once it exited, a sentence saying how
        (status and last log lines)."""

    def listening_note(self) -> str:
        """Where the server actually listens, for diagnosing refused connections ("" if
        unknown)."""

    def logs(self) -> str:
        """The server's output so far ("" if unknown)."""


@dataclass(frozen=True)
class ServerWatch:
    """The rules' view of the server through its observer (``None``: a plain URL, nothing
    known beyond its answers)."""

    observer: ServerObserver | None

    def exited(self) -> bool:
        """Whether the server process is known to have ended."""
        return self.observer is not None and self.observer.exit_note() is not None

    def with_note(self, detail: str) -> str:
        """``detail``, followed by what the observer knows of the server's state."""
        if self.observer is None:
            return detail
        notes = [self.observer.exit_note() or "", self.observer.listening_note()]
        note = " ".join(note for note in notes if note)
        return f"{detail}. {note}" if note else detail

    def logs(self) -> str:
        """The server's output so far ("" when there is no observer)."""
        return self.observer.logs() if self.observer is not None else ""

    def retry_until_ok(
        self, send: Callable[[], Answer], settings: CheckSettings
    ) -> tuple[float, Answer] | None:
        """Send again every ``poll_interval_s`` for up to ``ready_grace_s`` (a server still
        loading its model), until an answer is ok or the server exits: the seconds it took
        and that answer, or None."""
        started = time.monotonic()
        while time.monotonic() - started < settings.ready_grace_s and not self.exited():
            time.sleep(settings.poll_interval_s)
            answer = send()
            if answer.ok:
                return time.monotonic() - started, answer
        return None

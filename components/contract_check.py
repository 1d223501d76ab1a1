"""Check that a serving container honours Vertex AI's custom-container contract, before upload.

Vertex AI only tells you a serving image is wrong at deploy time, tens of minutes later, with
"Model server never became ready" or "Model server exited unexpectedly". This module runs the
image the way Vertex runs it (its own entrypoint, no arguments, the ``AIP_*`` variables set,
the declared port published) and checks it with Vertex's own numbers
(``shared/notes/vertex-contract.md`` §1):

* liveness: the port accepts TCP within Vertex's liveness window (4 attempts, 10 s apart);
* health: ``GET`` on the health route answers 200 within 10 s per probe and before a startup
  deadline, and once it does, predict works (Vertex routes traffic on the first 200);
* predict: ``{"instances": [...]}`` made of ``instances_sample.jsonl`` gets 200 and a JSON
  object ``{"predictions": [...]}`` with one prediction per instance, equal (floats within a
  tolerance) to ``expected_predictions.jsonl``: the end-to-end guard against training/serving
  skew;
* bad input: malformed JSON, a body without ``instances``, a wrong feature and an oversize
  body (> 1.5 MB) each get a 4xx, and the server is still healthy afterwards;
* a burst of concurrent requests all succeed, and SIGTERM stops the container within the
  grace period.

Layers:

* ``check_server(base_url, ...)`` is the plain library check of any running server (no kfp,
  no container engine); it returns a ``ContractReport`` of ``RuleResult``s.
* ``check_image(image, ...)`` starts the image with ``components.container_engine``, runs
  ``check_server`` against the published port, stops the container with SIGTERM, times the
  stop and keeps the container's logs.
* ``unmanaged_container_model_metadata(...)`` is the ``containerSpec`` that GCPC's
  ``ModelUploadOp`` reads; the ``contract_check`` KFP component emits it only when the check
  passed, so no container spec reaches upload without passing this check.
* ``compile.py check-contract --image IMAGE`` is the command line for users' own images.

Process mode (``components/server_process.py``) is the weaker fallback where no container
engine works, e.g. in a Vertex AI Pipelines task: the same rules against the same server code
and model, started as a local process with Vertex's environment. The image itself is not run,
and the report, its verdict line and the metrics (``process_mode: 1``) say so.
"""

import contextlib
import http.client
import ipaddress
import json
import math
import re
import socket
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp.dsl import Input, Markdown, Metrics, Model, Output

# Imported from its module, not from kfp.dsl: inside a running component kfp.dsl stops
# exporting ``component``, yet the component body imports this module (see components/train.py).
from kfp.dsl.component_decorator import component

from components.images import COMPONENTS_IMAGE

# --- Vertex AI's numbers (vertex-contract.md §1.3, §1.4) -------------------------------------
LIVENESS_ATTEMPTS = 4
"""TCP liveness probe attempts before Kubernetes restarts the container."""
LIVENESS_INTERVAL_S = 10.0
"""Wait after each failed liveness attempt."""
HEALTH_TIMEOUT_S = 10.0
"""A health probe must answer 200 within this many seconds."""
PREDICT_TIMEOUT_S = 60.0
"""Server-side inference timeout of shared public endpoints."""
MAX_REQUEST_BYTES = 1_500_000
"""Request (and response) size limit of shared public endpoints: 1.5 MB."""
DEFAULT_PORT = 8080
"""``containerSpec.ports`` default; exposed to the container as ``AIP_HTTP_PORT``."""
GRACE_PERIOD_S = 30.0
"""Kubernetes' default termination grace period (Vertex does not document its own)."""

# Stand-in identifiers, shaped like Vertex's (digits), for the AIP_* variables and default routes.
FAKE_ENDPOINT_ID = "7300000000000000001"
FAKE_DEPLOYED_MODEL_ID = "7300000000000000002"
FAKE_PROJECT_NUMBER = "123456789012"
DEFAULT_HEALTH_ROUTE = f"/v1/endpoints/{FAKE_ENDPOINT_ID}/deployedModels/{FAKE_DEPLOYED_MODEL_ID}"
"""Vertex's ``AIP_HEALTH_ROUTE`` when ``containerSpec.healthRoute`` is not set."""
DEFAULT_PREDICT_ROUTE = f"{DEFAULT_HEALTH_ROUTE}:predict"
"""Vertex's ``AIP_PREDICT_ROUTE`` when ``containerSpec.predictRoute`` is not set."""
MODEL_MOUNT = "/mnt/model"
"""Where ``check_image`` mounts a local model directory; ``AIP_STORAGE_URI`` points there."""

PROCESS_MODE_NOTE = (
    "PROCESS MODE: the server code and the model were checked with Vertex's environment as a "
    "local process; the image itself (entrypoint, dependencies, user, size) was not"
)
"""Said by every report, verdict and violation of a check in process mode."""

PREVIEW_CHARS = 300
LOG_TAIL_LINES = 40

RULES: dict[str, str] = {
    "liveness": "the declared port accepts TCP connections within Vertex's liveness window",
    "health": "GET on the health route answers 200 within 10 s, before the startup deadline",
    "health-means-ready": "once health answers 200, predict works",
    "predict-request": 'POST {"instances": [...]} on the predict route answers 200',
    "predict-response": 'the answer is a JSON object {"predictions": [...]}, one per instance',
    "predict-values": "the predictions equal expected_predictions.jsonl (float tolerance)",
    "bad-json": "a body that is not JSON gets a 4xx and the server stays healthy",
    "no-instances": 'a JSON object without "instances" gets a 4xx and the server stays healthy',
    "wrong-feature": "an instance with a wrong feature gets a 4xx and the server stays healthy",
    "oversize": "a body over the 1.5 MB limit gets a 4xx and the server stays healthy",
    "concurrency": "a burst of concurrent predict requests all succeed",
    "sigterm": "SIGTERM stops the container within the grace period",
}
"""Every rule the check applies, by name, in the order it applies them."""

VERTEX_WOULD: dict[str, str] = {
    "liveness": (
        "fail its TCP liveness probe 4 times, 10 s apart, and restart the container, over and "
        "over; the deploy fails with 'Model server never became ready' (or 'Model server "
        "exited unexpectedly' when the process exits)"
    ),
    "health": (
        "mark the replica unhealthy and send it no traffic; the deploy waits for a 200 until "
        "the deployment timeout (at most 2 h) and then fails with 'Model server never became "
        "ready'"
    ),
    "health-means-ready": (
        "route traffic as soon as health answers 200, so requests after every deploy, restart "
        "or scale-up fail until the model has loaded; answer 200 only once the model is loaded"
    ),
    "predict-request": (
        "pass the error on to every caller of endpoints.predict, and batch prediction would "
        "write every instance to its error file instead of a prediction"
    ),
    "predict-response": (
        'expect {"predictions": [...]} with one element per instance (it adds deployedModelId '
        "and returns it to the caller); any other answer gives callers an error or misaligned "
        "predictions, and batch prediction cannot pair predictions with instances"
    ),
    "predict-values": (
        "serve these values without any error: the skew between training and serving would go "
        "unnoticed"
    ),
    "bad-input": (
        "pass a 5xx on as a server error, which clients and batch prediction retry as if the "
        "server were broken, and the caller never learns that the request was wrong; if health "
        "fails 4 times in a row Vertex stops routing traffic to the replica, so one bad "
        "request would take it out of service"
    ),
    "oversize": (
        "forward bodies up to 10 MB to the container on dedicated and private endpoints (only "
        "shared public endpoints stop bodies over 1.5 MB themselves)"
    ),
    "accepted": (
        "hand the caller whatever the server made of a malformed request, with no error to "
        "say the request was wrong"
    ),
    "concurrency": (
        "send concurrent requests to each replica (and batch prediction sends requests in "
        "parallel); failures under a burst reach callers as errors"
    ),
    "sigterm": (
        "send SIGTERM on undeploy, update and scale-down and SIGKILL once the grace period "
        "is over: in-flight requests are cut off and the replica lingers for the whole period"
    ),
}
"""What Vertex AI does when a rule is broken, completing "Vertex AI would ...". The bad-input
rules use ``bad-input`` (a 5xx or reset) or ``accepted`` (a 2xx), oversize prefixed."""


class ContractViolation(Exception):
    """The server or image broke the contract; ``report`` has every rule's result."""

    def __init__(self, report: "ContractReport") -> None:
        self.report = report
        failed = report.violations
        lines = [
            f"{report.target} breaks the Vertex AI container contract "
            f"({len(failed)} of {len(report.rules)} rules failed):"
        ]
        lines += [result.message() for result in failed]
        if report.process_mode:
            lines.append(f"({PROCESS_MODE_NOTE}.)")
        super().__init__("\n".join(lines))


@dataclass
class CheckSettings:
    """The numbers the check uses; the defaults are Vertex AI's."""

    liveness_attempts: int = LIVENESS_ATTEMPTS
    liveness_interval_s: float = LIVENESS_INTERVAL_S
    health_timeout_s: float = HEALTH_TIMEOUT_S
    startup_deadline_s: float = 120.0
    """How long health may take to answer 200 (model download and load included)."""
    ready_grace_s: float = 10.0
    """After a failed first predict, how long to keep retrying to tell a server that said
    healthy too early from one whose predict route is broken."""
    predict_timeout_s: float = PREDICT_TIMEOUT_S
    max_request_bytes: int = MAX_REQUEST_BYTES
    burst_size: int = 8
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    grace_period_s: float = GRACE_PERIOD_S
    poll_interval_s: float = 0.25

    @property
    def liveness_window_s(self) -> float:
        """Seconds from start to Vertex's last liveness attempt (30 s with the defaults).

        Polling more often than every ``liveness_interval_s`` up to that moment gives the same
        verdict as Vertex's schedule, sooner.
        """
        return (self.liveness_attempts - 1) * self.liveness_interval_s


# --- HTTP exchanges --------------------------------------------------------------------------


def _preview(data: bytes | str, limit: int = PREVIEW_CHARS) -> str:
    """A body as text for people: decoded, and cut to ``limit`` characters with its size."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(data):,} bytes)"


@dataclass
class Exchange:
    """One HTTP request sent to the server and what came back."""

    method: str
    route: str
    body: bytes | None = None
    body_note: str = ""
    """Shown instead of the body when the body itself would not help (e.g. 1.6 MB of JSON)."""
    status: int | None = None
    reason: str = ""
    response: bytes = b""
    error: str = ""
    """Why no HTTP response came back (refused, reset, timeout); empty when one did."""
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the server answered 200."""
        return self.status == 200

    def request_text(self) -> str:
        """``POST /predict with body '...'`` for messages."""
        if self.body is None:
            return f"{self.method} {self.route}"
        shown = self.body_note or _preview(self.body)
        return f"{self.method} {self.route} with body {shown}"

    def response_text(self) -> str:
        """``404 Not Found, body '...' after 0.003 s`` or the connection error, for messages."""
        if self.status is None:
            return f"no HTTP response: {self.error} (after {self.elapsed_s:.3f} s)"
        return (
            f"{self.status} {self.reason}, body {_preview(self.response)} "
            f"(after {self.elapsed_s:.3f} s)"
        )

    def json(self) -> Any:
        """The response body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.response)


def _split_url(base_url: str) -> tuple[str, int]:
    """Host and port of an ``http://host:port`` base URL."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected a base URL like http://127.0.0.1:8080, got {base_url!r}")
    return parts.hostname, parts.port or 80


def send(
    base_url: str,
    method: str,
    route: str,
    timeout_s: float,
    body: bytes | None = None,
    body_note: str = "",
) -> Exchange:
    """Send one request with a bounded timeout; connection failures are recorded, not raised."""
    host, port = _split_url(base_url)
    exchange = Exchange(method, route, body, body_note)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    started = time.monotonic()
    try:
        # The server may answer (413) before reading the whole body: read the answer anyway.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(method, route, body=body, headers=headers)
        response = connection.getresponse()
        exchange.response = response.read()
        exchange.status, exchange.reason = response.status, response.reason
    except ConnectionRefusedError:
        exchange.error = f"connection refused on {host}:{port}"
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        exchange.error = "the server closed the connection without answering (reset)"
    except TimeoutError:
        exchange.error = f"no answer within {timeout_s:g} s"
    except (OSError, http.client.HTTPException) as exc:
        exchange.error = f"{type(exc).__name__}: {exc}"
    finally:
        exchange.elapsed_s = time.monotonic() - started
        connection.close()
    return exchange


def _json_body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


def free_local_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tcp_accepts(base_url: str, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the base URL's host and port succeeds."""
    try:
        with socket.create_connection(_split_url(base_url), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- comparison ------------------------------------------------------------------------------


def json_difference(
    expected: Any, actual: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9, path: str = ""
) -> str | None:
    """Compare two JSON values; ``None`` when equal (numbers within tolerance), else the first
    difference as ``"[3].probabilities.Adelie: expected 0.97, got 0.5"``."""
    where = path or "value"
    if isinstance(expected, bool) or isinstance(actual, bool):
        same = type(expected) is type(actual) and expected == actual
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        same = math.isclose(expected, actual, rel_tol=rel_tol, abs_tol=abs_tol)
    elif isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            return f"{where}: keys differ (missing {missing}, unexpected {extra})"
        for key in expected:
            difference = json_difference(
                expected[key], actual[key], rel_tol=rel_tol, abs_tol=abs_tol, path=f"{path}.{key}"
            )
            if difference:
                return difference
        return None
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} elements, got {len(actual)}"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            difference = json_difference(
                left, right, rel_tol=rel_tol, abs_tol=abs_tol, path=f"{path}[{index}]"
            )
            if difference:
                return difference
        return None
    else:
        same = type(expected) is type(actual) and expected == actual
    if same:
        return None
    return f"{where}: expected {json.dumps(expected)}, got {json.dumps(actual)}"


# --- results and report ----------------------------------------------------------------------


@dataclass
class RuleResult:
    """The verdict on one rule, with the evidence a person needs to act on it."""

    rule: str
    passed: bool
    detail: str
    request: str = ""
    response: str = ""
    vertex_consequence: str = ""
    skipped: bool = False

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``SKIP``."""
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")

    def message(self) -> str:
        """The rule, what was sent, what came back and what Vertex would do, for people."""
        lines = [f"[{self.rule}] {self.detail}"]
        if self.request:
            lines.append(f"  request sent: {self.request}")
        if self.response:
            lines.append(f"  came back: {self.response}")
        if self.vertex_consequence:
            lines.append(f"  Vertex AI would {self.vertex_consequence}.")
        return "\n".join(lines)


def _passed(rule: str, detail: str, exchange: Exchange | None = None) -> RuleResult:
    return RuleResult(
        rule,
        True,
        detail,
        request=exchange.request_text() if exchange else "",
        response=exchange.response_text() if exchange else "",
    )


def _failed(
    rule: str, detail: str, exchange: Exchange | None = None, consequence: str = ""
) -> RuleResult:
    return RuleResult(
        rule,
        False,
        detail,
        request=exchange.request_text() if exchange else "",
        response=exchange.response_text() if exchange else "",
        vertex_consequence=consequence or VERTEX_WOULD[rule],
    )


def _skipped(rule: str, reason: str) -> RuleResult:
    return RuleResult(rule, True, f"not run: {reason}", skipped=True)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class ContractReport:
    """Everything one check found: per-rule verdicts, timings and the container's logs."""

    target: str
    settings: dict[str, Any]
    rules: list[RuleResult] = field(default_factory=list)
    startup_s: float | None = None
    """From start (container start, or the call for a plain URL) to the first health 200."""
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    stop_s: float | None = None
    logs: str | None = None
    """The container's output; ``None`` when there is no container (a plain URL)."""
    process_mode: bool = False
    """The server ran as a local process, not from the image (``PROCESS_MODE_NOTE``)."""

    @property
    def passed(self) -> bool:
        """Whether every rule that ran passed."""
        return all(result.passed for result in self.rules)

    @property
    def violations(self) -> list[RuleResult]:
        """The failed rules, in the order they were checked."""
        return [result for result in self.rules if not result.passed]

    def result(self, rule: str) -> RuleResult:
        """The result of one rule by name; ``KeyError`` when it was not recorded."""
        for result in self.rules:
            if result.rule == rule:
                return result
        raise KeyError(rule)

    def raise_for_violations(self) -> None:
        """Raise ``ContractViolation`` unless every rule passed."""
        if not self.passed:
            raise ContractViolation(self)

    def verdict(self) -> str:
        """One line: PASS, or FAIL with the failed rules' names."""
        note = f". {PROCESS_MODE_NOTE}" if self.process_mode else ""
        if self.passed:
            return f"PASS: {self.target} honours the Vertex AI container contract{note}"
        names = ", ".join(result.rule for result in self.violations)
        return f"FAIL: {self.target} breaks the Vertex AI container contract ({names}){note}"

    def metrics(self) -> dict[str, float]:
        """Numbers for ``Output[Metrics]``: verdict, rule counts, startup, latencies, stop;
        ``process_mode: 1`` for a check in process mode."""
        values: dict[str, float] = {
            "passed": float(self.passed),
            "rules_passed": float(sum(r.passed and not r.skipped for r in self.rules)),
            "rules_failed": float(len(self.violations)),
            "rules_skipped": float(sum(r.skipped for r in self.rules)),
        }
        if self.process_mode:
            values["process_mode"] = 1.0
        if self.startup_s is not None:
            values["startup_s"] = round(self.startup_s, 3)
        if self.stop_s is not None:
            values["sigterm_stop_s"] = round(self.stop_s, 3)
        for name, samples in self.latencies_s.items():
            if samples:
                values[f"{name}_p50_ms"] = round(statistics.median(samples) * 1000, 2)
                values[f"{name}_p95_ms"] = round(_percentile(samples, 0.95) * 1000, 2)
                values[f"{name}_max_ms"] = round(max(samples) * 1000, 2)
        return values

    def to_markdown(self) -> str:
        """A report a person can read: verdict, rules table, failures in full, timings, logs."""
        lines = [
            "# Vertex AI container contract check",
            "",
            f"**{self.verdict()}**",
            "",
            "| setting | value |",
            "|---|---|",
        ]
        lines += [f"| {name} | `{value}` |" for name, value in self.settings.items()]
        lines += ["", "## Rules", "", "| rule | verdict | found |", "|---|---|---|"]
        for result in self.rules:
            detail = result.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {result.rule} | {result.verdict} | {detail} |")
        if self.violations:
            lines += ["", "## Violations"]
            for result in self.violations:
                lines += ["", f"### {result.rule}: {RULES.get(result.rule, '')}", ""]
                lines.append(f"- **found:** {result.detail}")
                if result.request:
                    lines.append(f"- **request sent:** `{result.request}`")
                if result.response:
                    lines.append(f"- **came back:** `{result.response}`")
                lines.append(f"- **Vertex AI would** {result.vertex_consequence}.")
        lines += ["", "## Timings", ""]
        timings = {k: v for k, v in self.metrics().items() if k.endswith(("_s", "_ms"))}
        lines += [f"- {name}: {value}" for name, value in sorted(timings.items())]
        lines += [] if timings else ["(none measured)"]
        if self.logs is not None:
            source = "Server process" if self.process_mode else "Container"
            lines += ["", f"## {source} logs (last {LOG_TAIL_LINES} lines)", "", "```"]
            lines += _tail(self.logs, LOG_TAIL_LINES).splitlines() or ["(no output)"]
            lines += ["```"]
        return "\n".join([*lines, ""])


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def explain_exit(status: int, logs: str, what: str = "The container") -> str:
    """How a server process ended, with a likely cause read from its logs and its last lines."""
    missing = re.search(r"No module named '([^']+)'", logs)
    if missing:
        cause = (
            f"a Python dependency is missing from the image (No module named "
            f"'{missing.group(1)}'): install it in the Dockerfile"
        )
    elif status == 0:
        cause = (
            "the entrypoint finished: it must start an HTTP server in the foreground and "
            "keep it running"
        )
    elif status == 137:
        cause = "it was killed (SIGKILL; out of memory?)"
    else:
        cause = "see its last log lines"
    tail = _tail(logs, 10) or "(no output)"
    return f"{what} exited with status {status}: {cause}. Last log lines:\n{tail}"


# --- the server check ------------------------------------------------------------------------


class ServerObserver(Protocol):
    """What ``check_server`` may ask about the process behind the URL (a container, say)."""

    def exit_note(self) -> str | None:
        """``None`` while the server process runs; once it exited, a sentence saying how
        (status and last log lines)."""

    def listening_note(self) -> str:
        """Where the server actually listens, for diagnosing refused connections ("" if
        unknown)."""


def _wrong_feature(instance: Any) -> Any:
    """The instance with one feature wrong: for an object, its first key renamed to an
    unknown one; for a list, one value short."""
    if isinstance(instance, dict) and instance:
        first = next(iter(instance))
        wrong = {k: v for k, v in instance.items() if k != first}
        wrong["no_such_feature"] = instance[first]
        return wrong
    if isinstance(instance, list) and instance:
        return instance[:-1]
    return {"no_such_feature": instance}


class _Checker:
    """One run of the rules against one server; use ``check_server``."""

    def __init__(
        self,
        base_url: str,
        health_route: str,
        predict_route: str,
        instances: list[Any],
        expected: list[Any] | None,
        settings: CheckSettings,
        observer: ServerObserver | None,
        started: float,
    ) -> None:
        self.base_url = base_url
        self.health_route = health_route
        self.predict_route = predict_route
        self.instances = instances
        self.expected = expected
        self.settings = settings
        self.observer = observer
        self.started = started
        self.report = ContractReport(
            target=base_url,
            settings={
                "health route": health_route,
                "predict route": predict_route,
                "instances": len(instances),
                "expected predictions": len(expected) if expected is not None else "not given",
                "startup deadline (s)": settings.startup_deadline_s,
                "liveness window (s)": settings.liveness_window_s,
            },
            latencies_s={"health": [], "predict": [], "burst": []},
        )
        self.down = False
        """Set once health failed after a malformed request."""

    # helpers ---------------------------------------------------------------------------------
    def _health(self) -> Exchange:
        exchange = send(self.base_url, "GET", self.health_route, self.settings.health_timeout_s)
        if exchange.ok:
            self.report.latencies_s["health"].append(exchange.elapsed_s)
        return exchange

    def _predict(self, body: bytes, body_note: str = "", record: str = "predict") -> Exchange:
        exchange = send(
            self.base_url,
            "POST",
            self.predict_route,
            self.settings.predict_timeout_s,
            body,
            body_note,
        )
        if record and exchange.ok:
            self.report.latencies_s[record].append(exchange.elapsed_s)
        return exchange

    def _sample_body(self) -> bytes:
        return _json_body({"instances": self.instances})

    def _server_note(self) -> str:
        """What the observer knows about the server's state, as extra sentences."""
        if self.observer is None:
            return ""
        notes = [self.observer.exit_note() or "", self.observer.listening_note()]
        return " ".join(note for note in notes if note)

    def _exited(self) -> bool:
        return self.observer is not None and self.observer.exit_note() is not None

    def _with_note(self, detail: str) -> str:
        note = self._server_note()
        return f"{detail}. {note}" if note else detail

    def add(self, result: RuleResult) -> RuleResult:
        self.report.rules.append(result)
        return result

    # rules -----------------------------------------------------------------------------------
    def liveness(self) -> RuleResult:
        window = self.settings.liveness_window_s
        deadline = self.started + window
        while True:
            if tcp_accepts(self.base_url):
                waited = time.monotonic() - self.started
                return _passed("liveness", f"the port accepted TCP after {waited:.2f} s")
            if self._exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        host, port = _split_url(self.base_url)
        if self._exited():
            detail = f"nothing accepted TCP on {host}:{port} before the server process ended"
        else:
            detail = (
                f"nothing accepted a TCP connection on {host}:{port} within the {window:g} s "
                f"liveness window ({self.settings.liveness_attempts} attempts, "
                f"{self.settings.liveness_interval_s:g} s apart)"
            )
        return _failed("liveness", self._with_note(detail))

    def health(self) -> RuleResult:
        deadline = self.started + self.settings.startup_deadline_s
        while True:
            exchange = self._health()
            if exchange.ok:
                self.report.startup_s = time.monotonic() - self.started
                return _passed(
                    "health",
                    f"answered 200 after {self.report.startup_s:.2f} s from start",
                    exchange,
                )
            if self._exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        if self._exited():
            detail = f"health route {self.health_route} never answered 200"
        elif exchange.status is None:
            detail = (
                f"health route {self.health_route} gave no HTTP answer within the "
                f"{self.settings.startup_deadline_s:g} s startup deadline"
            )
        else:
            detail = (
                f"health route {self.health_route} returned {exchange.status} instead of 200 "
                f"until the {self.settings.startup_deadline_s:g} s startup deadline ran out"
            )
            if exchange.status in (404, 405):
                detail += " (the server has no such health route)"
            else:
                detail += " (the model loads slower than the deadline, or never)"
        return _failed("health", self._with_note(detail), exchange)

    def predict(self) -> tuple[RuleResult, Exchange]:
        """The first predict, right after the first health 200 (Vertex's first real request)."""
        first = self._predict(self._sample_body())
        if first.ok:
            return _passed("predict-request", "answered 200", first), first
        if first.status is None:
            detail = f"predict route {self.predict_route} gave no HTTP answer"
            return _failed("predict-request", self._with_note(detail), first), first
        detail = (
            f"predict route {self.predict_route} answered {first.status} to Vertex's request "
            'body {"instances": [...]}'
        )
        if self._predict(_json_body(self.instances), record="").ok:
            detail += (
                "; it answered 200 to a bare JSON list of the instances instead: the server "
                'wants a bare list, but Vertex always sends {"instances": [...]}'
            )
        elif first.status >= 500 and not self._exited():
            later = self._retry_until_ok()
            if later is not None:
                waited, exchange = later
                detail = (
                    f"predict failed with {first.status} right after health answered 200, and "
                    f"answered 200 only {waited:.2f} s later: the health route says ready "
                    "before the model is loaded"
                )
                self.add(_failed("health-means-ready", detail, first))
                return _passed("predict-request", "answered 200 once loaded", exchange), exchange
        return _failed("predict-request", self._with_note(detail), first), first

    def _retry_until_ok(self) -> tuple[float, Exchange] | None:
        started = time.monotonic()
        while time.monotonic() - started < self.settings.ready_grace_s and not self._exited():
            time.sleep(self.settings.poll_interval_s)
            exchange = self._predict(self._sample_body())
            if exchange.ok:
                return time.monotonic() - started, exchange
        return None

    def predictions_of(self, exchange: Exchange) -> tuple[RuleResult, list[Any] | None]:
        """Check the shape of a 200 predict answer; return the predictions when it is right."""
        try:
            payload = exchange.json()
        except ValueError:
            return _failed("predict-response", "the answer is not JSON", exchange), None
        count = len(self.instances)
        if isinstance(payload, list):
            detail = (
                f"the answer is a bare JSON list ({len(payload)} elements) instead of an "
                'object {"predictions": [...]}'
            )
            return _failed("predict-response", detail, exchange), None
        if not isinstance(payload, dict) or "predictions" not in payload:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            detail = f'the answer has no "predictions" (got {keys})'
            return _failed("predict-response", detail, exchange), None
        predictions = payload["predictions"]
        if not isinstance(predictions, list):
            detail = f'"predictions" is a {type(predictions).__name__}, not a list'
            return _failed("predict-response", detail, exchange), None
        if len(predictions) != count:
            detail = f"{len(predictions)} predictions came back for {count} instances"
            return _failed("predict-response", detail, exchange), None
        return _passed("predict-response", f"{count} predictions for {count} instances"), (
            predictions
        )

    def values(self, predictions: list[Any], exchange: Exchange) -> RuleResult:
        if self.expected is None:
            return _skipped("predict-values", "no expected predictions given: shape only")
        difference = json_difference(
            self.expected,
            predictions,
            rel_tol=self.settings.rel_tol,
            abs_tol=self.settings.abs_tol,
            path="predictions",
        )
        if difference is None:
            return _passed(
                "predict-values",
                f"all {len(predictions)} predictions equal the expected ones "
                f"(rel_tol {self.settings.rel_tol:g})",
            )
        detail = (
            f"the served predictions differ from the exported expectations: {difference} "
            "(serving does not reproduce training: re-fitted or re-implemented preprocessing, "
            "another model file, or other library versions)"
        )
        return _failed("predict-values", detail, exchange)

    def bad_input(self, rule: str, body: bytes, body_note: str = "") -> RuleResult:
        """Send one malformed request: it must get a 4xx and leave the server healthy."""
        exchange = self._predict(body, body_note, record="")
        rejected = exchange.status is not None and 400 <= exchange.status < 500
        accepted = exchange.status is not None and exchange.status < 400
        consequence = VERTEX_WOULD["accepted" if accepted else "bad-input"]
        if rule == "oversize":
            consequence = f"{VERTEX_WOULD['oversize']}, and {consequence}"
        if exchange.status is None:
            detail = f"the server crashed on bad input: {exchange.error}"
        elif exchange.status >= 500:
            detail = f"the server crashed on bad input: it answered {exchange.status}, not a 4xx"
        else:
            detail = f"answered {exchange.status}"
            if not rejected:
                what = "a body over the size limit" if rule == "oversize" else "a malformed request"
                detail += f" to {what} instead of a 4xx"
        after = self._health()
        self.down = not after.ok
        if self.down:
            detail += (
                f", and health then returned {after.status or after.error}: the server is no "
                "longer healthy"
            )
        elif rejected:
            return _passed(rule, f"{detail}, still healthy", exchange)
        return _failed(rule, self._with_note(detail), exchange, consequence)

    def burst(self) -> RuleResult:
        size = self.settings.burst_size
        body = self._sample_body()
        with ThreadPoolExecutor(max_workers=size) as pool:
            exchanges = list(pool.map(lambda _: self._predict(body, record="burst"), range(size)))
        count = len(self.instances)
        failures = []
        for exchange in exchanges:
            if not exchange.ok:
                failures.append(exchange)
                continue
            try:
                predictions = exchange.json().get("predictions")
            except (ValueError, AttributeError):
                predictions = None
            if not isinstance(predictions, list) or len(predictions) != count:
                failures.append(exchange)
        if not failures:
            slowest = max(exchange.elapsed_s for exchange in exchanges)
            detail = f"{size} concurrent requests all answered 200 (slowest {slowest:.3f} s)"
            return _passed("concurrency", detail)
        detail = f"{len(failures)} of {size} concurrent predict requests failed"
        return _failed("concurrency", self._with_note(detail), failures[0])

    def malformed_cases(self) -> list[tuple[str, bytes, str]]:
        """(rule, body, note) for each malformed request; the oversize body is valid JSON."""
        first = self.instances[0]
        target = self.settings.max_request_bytes + 64 * 1024
        one = len(_json_body(first)) + 1
        oversize = _json_body({"instances": [first] * (target // one + 1)})
        return [
            ("bad-json", b'{"instances": [', ""),
            ("no-instances", _json_body({"inputs": self.instances}), ""),
            ("wrong-feature", _json_body({"instances": [_wrong_feature(first)]}), ""),
            (
                "oversize",
                oversize,
                f'{{"instances": [...]}} of {len(oversize):,} bytes '
                f"(limit {self.settings.max_request_bytes:,})",
            ),
        ]

    def run(self) -> ContractReport:
        """Apply the rules in order; once one makes the rest pointless, they are skipped."""
        self._run_rules()
        order = list(RULES)
        self.report.rules.sort(key=lambda result: order.index(result.rule))
        return self.report

    def _run_rules(self) -> None:
        def skip(rules: Sequence[str], reason: str) -> None:
            self.report.rules += [_skipped(rule, reason) for rule in rules]

        own = ("liveness", "sigterm", "health-means-ready")  # sigterm: check_image's business
        later = [rule for rule in RULES if rule not in own]
        if not self.add(self.liveness()).passed:
            return skip(later, "the port never accepted a connection")
        if not self.add(self.health()).passed:
            return skip(later[1:], "the server never became healthy")
        result, exchange = self.predict()
        predict_works = self.add(result).passed
        if not predict_works:
            skip(["predict-response", "predict-values"], "predict-request failed")
        else:
            shape, predictions = self.predictions_of(exchange)
            predict_works = self.add(shape).passed
            if predictions is None:
                skip(["predict-values"], "predict-response failed")
            else:
                self.add(self.values(predictions, exchange))
        cases = self.malformed_cases()
        for index, (rule, body, note) in enumerate(cases):
            if self._exited() or self.down:
                stopped = [case[0] for case in cases[index:]] + ["concurrency"]
                return skip(stopped, "the server is no longer healthy")
            self.add(self.bad_input(rule, body, note))
        if not predict_works:
            return skip(["concurrency"], "a single predict request already fails")
        self.add(self.burst())
        return None


def check_server(
    base_url: str,
    *,
    instances: Sequence[Any],
    expected: Sequence[Any] | None = None,
    health_route: str = DEFAULT_HEALTH_ROUTE,
    predict_route: str = DEFAULT_PREDICT_ROUTE,
    settings: CheckSettings | None = None,
    observer: ServerObserver | None = None,
    started: float | None = None,
) -> ContractReport:
    """Check a running server at ``base_url`` (``http://host:port``) against the contract.

    Args:
        base_url: where the server's declared port is reachable.
        instances: the sample instances (objects or lists, whatever the server takes).
        expected: one expected prediction per instance; ``None`` checks the shape only.
        health_route: the route Vertex would probe (``containerSpec.healthRoute``).
        predict_route: the route Vertex would post to (``containerSpec.predictRoute``).
        settings: the numbers to use; Vertex's by default.
        observer: the process behind the URL, to stop waiting once it exited and to explain
            refused connections; ``None`` for a plain URL.
        started: ``time.monotonic()`` when the server was started (default: now); the
            liveness window, startup deadline and startup time count from it.

    Returns:
        The report; it never raises for a violation (see ``ContractReport.raise_for_violations``).
    """
    instances = list(instances)
    if not instances:
        raise ValueError("at least one sample instance is needed")
    if expected is not None and len(expected) != len(instances):
        raise ValueError(
            f"{len(expected)} expected predictions for {len(instances)} instances: they must "
            "come in pairs, one per line"
        )
    checker = _Checker(
        base_url,
        health_route,
        predict_route,
        instances,
        list(expected) if expected is not None else None,
        settings or CheckSettings(),
        observer,
        time.monotonic() if started is None else started,
    )
    return checker.run()


# --- the image check -------------------------------------------------------------------------


def listening_sockets(proc_net_tcp: str) -> list[tuple[str, int]]:
    """(address, port) of every listening socket in ``/proc/net/tcp`` / ``tcp6`` text."""
    sockets = []
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A" or ":" not in fields[1]:  # 0A: LISTEN
            continue
        address_hex, port_hex = fields[1].split(":")
        try:  # the kernel prints each 32-bit word in host (little-endian) byte order
            raw = b"".join(
                bytes.fromhex(address_hex[i : i + 8])[::-1] for i in range(0, len(address_hex), 8)
            )
            sockets.append((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
        except ValueError:
            continue
    return sockets


def describe_listening(sockets: Sequence[tuple[str, int]], port: int) -> str:
    """Why a published port refuses connections, given what listens inside the container
    (``""`` when the declared port is listening on all interfaces)."""
    if not sockets:
        return "Inside the container nothing listens on any TCP port."
    on_port = [host for host, number in sockets if number == port]
    if any(not ipaddress.ip_address(host).is_loopback for host in on_port):
        return ""
    shown = ", ".join(f"{host}:{number}" for host, number in sockets)
    if on_port:
        return (
            f"Inside the container the server listens on {shown}: on the loopback interface "
            f"only, which nothing outside the container reaches; it must listen on "
            f"0.0.0.0:{port}."
        )
    return (
        f"Inside the container the server listens on {shown}, not on the declared port {port} "
        "(AIP_HTTP_PORT): read AIP_HTTP_PORT, or declare the port the server uses."
    )


class _ContainerObserver:
    """``ServerObserver`` for a container started by ``components.container_engine``."""

    def __init__(self, container: Any, port: int) -> None:
        self.container = container
        self.port = port
        self._exit_note: str | None = None

    def exit_note(self) -> str | None:
        from components.container_engine import ContainerEngineError

        if self._exit_note is None:
            try:
                state = self.container.state()
            except ContainerEngineError:
                return None
            if not state.running:
                status = 137 if state.oom_killed else state.exit_code
                self._exit_note = explain_exit(-1 if status is None else status, self._last_logs())
        return self._exit_note

    def _last_logs(self, settle_s: float = 2.0) -> str:
        """The exited container's last log lines, once the engine has written them all (the
        state can say "exited" before the last lines reach the log).

        Not ``logs(tail=...)``: podman 4.3's ``logs --tail N`` prints nothing when the log has
        fewer than N lines.
        """
        deadline = time.monotonic() + settle_s
        logs = self.container.logs()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = self.container.logs()
            if again == logs and logs:
                break
            logs = again
        return _tail(logs, LOG_TAIL_LINES)

    def listening_note(self) -> str:
        if self._exit_note is not None:
            return ""
        table = self.container.tcp_table()
        if not table:
            return ""
        return describe_listening(listening_sockets(table), self.port)


def vertex_environment(
    port: int,
    health_route: str,
    predict_route: str,
    storage_uri: str = "",
    machine_type: str = "n1-standard-4",
) -> dict[str, str]:
    """The ``AIP_*`` variables Vertex AI sets on a serving container (§1.2), with stand-in
    identifiers; ``AIP_ACCELERATOR_TYPE`` is left unset, as on a replica without a GPU."""
    return {
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": health_route,
        "AIP_PREDICT_ROUTE": predict_route,
        "AIP_STORAGE_URI": storage_uri,
        "AIP_MODE": "PREDICTION",
        "AIP_MODE_VERSION": "1.0.0",
        "AIP_FRAMEWORK": "CUSTOM_CONTAINER",
        "AIP_ENDPOINT_ID": FAKE_ENDPOINT_ID,
        "AIP_DEPLOYED_MODEL_ID": FAKE_DEPLOYED_MODEL_ID,
        "AIP_MODEL_NAME": FAKE_ENDPOINT_ID,
        "AIP_VERSION_NAME": FAKE_DEPLOYED_MODEL_ID,
        "AIP_PROJECT_NUMBER": FAKE_PROJECT_NUMBER,
        "AIP_MACHINE_TYPE": machine_type,
    }


def _check_user_env(env: Mapping[str, str]) -> dict[str, str]:
    reserved = sorted(name for name in env if name.startswith("AIP_"))
    if reserved:
        raise ValueError(
            f"env sets {reserved}: Vertex AI reserves the AIP_ prefix and overwrites such "
            "variables; use another name"
        )
    return {str(name): str(value) for name, value in env.items()}


def check_image(
    image: str,
    *,
    instances: Sequence[Any],
    expected: Sequence[Any] | None = None,
    port: int = DEFAULT_PORT,
    health_route: str = DEFAULT_HEALTH_ROUTE,
    predict_route: str = DEFAULT_PREDICT_ROUTE,
    model_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    settings: CheckSettings | None = None,
    engine: Any = None,
) -> ContractReport:
    """Start ``image`` the way Vertex AI does, check it with ``check_server``, stop it.

    The container runs the image's own entrypoint with no arguments and no init process
    (Vertex runs none), the ``AIP_*`` variables of ``vertex_environment`` plus ``env``, and
    ``port`` published on a random 127.0.0.1 port. A local ``model_dir`` is mounted read-only
    at ``MODEL_MOUNT`` and named by ``AIP_STORAGE_URI`` (on Vertex: a ``gs://`` copy of the
    model's artifactUri). After the checks it sends SIGTERM and times the stop (the
    ``sigterm`` rule), and the report keeps the container's logs.

    With the ``ProcessEngine`` (process mode) the server code runs as a local process with
    the same environment, the model directory (required then) named by ``AIP_STORAGE_URI``;
    the report says that the image itself was not checked (``PROCESS_MODE_NOTE``).

    Args:
        engine: a ``components.container_engine.Engine``; default ``detect_engine()``.
        The others: as for ``check_server``.

    Raises:
        ContainerEngineError: no engine, or the image could not be started at all (for
            example it does not exist): that is no verdict on the contract.
    """
    from components.container_engine import PROCESS, detect_engine

    settings = settings or CheckSettings()
    engine = engine or detect_engine()
    volumes = []
    storage_uri = ""
    if model_dir is not None:
        volumes.append((str(model_dir), MODEL_MOUNT, "ro"))
        storage_uri = MODEL_MOUNT
    container_env = {
        **_check_user_env(env or {}),
        **vertex_environment(port, health_route, predict_route, storage_uri),
    }
    with _run_container(engine, image, container_env, port, volumes, settings) as (
        container,
        url,
    ):
        observer = _ContainerObserver(container, port)
        report = check_server(
            url,
            instances=instances,
            expected=expected,
            health_route=health_route,
            predict_route=predict_route,
            settings=settings,
            observer=observer,
            started=container.started_at,
        )
        report.rules.append(_sigterm(container, observer, settings.grace_period_s))
        report.stop_s = container.stopped.seconds if container.stopped else None
        report.logs = container.logs()
    report.target = image
    report.process_mode = engine.name == PROCESS
    report.settings = {
        "image": image,
        "declared port": port,
        "AIP_STORAGE_URI": storage_uri or "(empty: no model directory mounted)",
        **report.settings,
        "engine": f"{engine.name} {engine.version}",
    }
    if report.process_mode:
        report.settings["mode"] = (
            f"{PROCESS_MODE_NOTE} (server on port {container.host_port}, model {model_dir})"
        )
    return report


@contextlib.contextmanager
def _run_container(
    engine: Any,
    image: str,
    env: Mapping[str, str],
    port: int,
    volumes: Sequence[tuple[str, str, str]],
    settings: CheckSettings,
    attempts: int = 3,
) -> Iterator[tuple[Any, str]]:
    """Run the image without an init process, ``port`` published on a free 127.0.0.1 port;
    yield the container and the base URL, and remove the container afterwards.

    The host port is chosen here rather than by ``Engine.run(ports=...)``: that asks the
    engine for the port after the start, which fails (and removes the container, logs and
    all) when the image exits at once, and an image that exits at once is a case to report.
    """
    from components.container_engine import ContainerRunError

    for attempt in range(attempts):
        host_port = free_local_port()
        try:
            container = engine.run(
                image,
                env=env,
                ports=[],
                volumes=volumes,
                init=False,
                stop_timeout=settings.grace_period_s,
                extra_args=["-p", f"127.0.0.1:{host_port}:{port}"],
            )
        except ContainerRunError as exc:  # another process took the port meanwhile
            if "address already in use" in str(exc) and attempt + 1 < attempts:
                continue
            raise
        with container:
            yield container, f"http://127.0.0.1:{host_port}"
        return


def _sigterm(container: Any, observer: _ContainerObserver, grace_period_s: float) -> RuleResult:
    """Send SIGTERM and time the stop; the container must exit within the grace period."""
    if observer.exit_note() is not None:
        return _skipped("sigterm", "the container had already exited")
    stop = container.stop(grace_period_s)
    request = f"SIGTERM to the container's PID 1, grace period {grace_period_s:g} s"
    if stop.killed:
        detail = (
            f"the container was still running {grace_period_s:g} s after SIGTERM and had to be "
            "killed: the entrypoint ignores SIGTERM (a Python server as PID 1 needs a SIGTERM "
            "handler, or exec form in the Dockerfile)"
        )
        result = _failed("sigterm", detail)
        result.request = request
        return result
    detail = f"exited with status {stop.exit_code} {stop.seconds:.2f} s after SIGTERM"
    return RuleResult("sigterm", True, detail, request=request)


# --- what upload gets ------------------------------------------------------------------------

LARGE_MODEL_BYTES = 256 * 1024 * 1024
"""From this model size on, the container spec gets a ``startupProbe`` (our threshold)."""
SLOW_STARTUP_S = 15.0
"""From this local startup time on, too (our threshold: half of the liveness window)."""


def directory_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def needs_startup_probe(
    model_bytes: int, startup_s: float | None, large_model_bytes: int = LARGE_MODEL_BYTES
) -> bool:
    """Whether a model this large, or a server this slow to become healthy, needs a
    ``startupProbe`` (``LARGE_MODEL_BYTES`` and ``SLOW_STARTUP_S`` are our thresholds)."""
    return model_bytes >= large_model_bytes or (startup_s or 0.0) >= SLOW_STARTUP_S


def startup_probe(
    health_route: str, port: int, startup_deadline_s: float, period_s: float = 10.0
) -> dict[str, Any]:
    """A ``startupProbe`` giving the server ``startup_deadline_s`` to answer health with 200.

    Until it succeeds Vertex runs neither the liveness nor the health checks, so a model that
    downloads and loads for minutes is not restarted half-way.
    """
    return {
        "httpGet": {"path": health_route, "port": port},
        "periodSeconds": int(period_s),
        "timeoutSeconds": int(HEALTH_TIMEOUT_S),
        "failureThreshold": max(1, math.ceil(startup_deadline_s / period_s)),
    }


def unmanaged_container_model_metadata(
    image_uri: str,
    *,
    port: int,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None = None,
    probe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``google.UnmanagedContainerModel`` metadata GCPC's ``ModelUploadOp`` copies into
    ``models.upload`` (``containerSpec``: ``ModelContainerSpec`` in REST camelCase).

    Routes are always explicit (the API reference and the requirements page disagree on the
    default health route) and ports are objects (``[{"containerPort": 8080}]``, not ints).
    """
    spec: dict[str, Any] = {
        "imageUri": image_uri,
        "ports": [{"containerPort": port}],
        "predictRoute": predict_route,
        "healthRoute": health_route,
    }
    if env:
        spec["env"] = [{"name": name, "value": value} for name, value in env.items()]
    if probe:
        spec["startupProbe"] = dict(probe)
    return {"containerSpec": spec, "predictSchemata": {}}


def check_model_image(
    image_uri: str,
    model_dir: str | Path,
    *,
    port: int = DEFAULT_PORT,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None = None,
    settings: CheckSettings | None = None,
    large_model_bytes: int = LARGE_MODEL_BYTES,
    engine: Any = None,
) -> tuple[ContractReport, dict[str, Any] | None]:
    """Check ``image_uri`` serving the model in ``model_dir`` (a train component output) with
    its own sample instances and expected predictions.

    Returns the report and, only when every rule passed, the ``UnmanagedContainerModel``
    metadata for upload (``None`` otherwise); with a ``startupProbe`` when the model directory
    holds at least ``large_model_bytes`` or the server took ``SLOW_STARTUP_S`` or more to
    become healthy.
    """
    from serving_image.server import manifest

    if FAKE_ENDPOINT_ID in health_route + predict_route:
        raise ValueError(
            "name the health and predict routes explicitly for upload: Vertex's default routes "
            "contain the endpoint and deployed-model ids, which are unknown before deploy"
        )
    settings = settings or CheckSettings()
    model = Path(model_dir)
    report = check_image(
        image_uri,
        instances=manifest.read_jsonl(model / manifest.INSTANCES_FILE),
        expected=manifest.read_jsonl(model / manifest.EXPECTED_FILE),
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        model_dir=model,
        env=env,
        settings=settings,
        engine=engine,
    )
    if not report.passed:
        return report, None
    size = directory_bytes(model)
    probe = None
    if needs_startup_probe(size, report.startup_s, large_model_bytes):
        probe = startup_probe(health_route, port, settings.startup_deadline_s)
    metadata = unmanaged_container_model_metadata(
        image_uri,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=_check_user_env(env or {}),
        probe=probe,
    )
    report.settings["model size (bytes)"] = size
    report.settings["startupProbe"] = "added" if probe else "not needed"
    return report, metadata


NO_ENGINE_HINT = (
    "contract_check runs the image, so it needs podman or docker beside it; where neither works "
    "(a Vertex AI Pipelines task) it falls back to process mode, the same server code and model "
    "with Vertex's environment as a local process, which needs the serve extra (`pip install "
    "'.[serve]'`, as components/Dockerfile does). Neither works here. For the full check, run "
    "it where podman or docker works (kfp.local, or `python compile.py check-contract --image "
    "IMAGE --model-dir DIR`); running the image itself on Google Cloud (Cloud Build steps that "
    "run the image and the checker side by side) is not implemented yet."
)


def choose_check_engine() -> tuple[Any, str]:
    """The engine for a check: ``detect_engine()``, else (none works) the process engine.

    Returns the engine and, when it fell back to process mode, a sentence saying why and what
    that leaves unchecked (``""`` otherwise).

    Raises:
        RuntimeError: neither works (``NO_ENGINE_HINT`` and both reasons).
    """
    from components.container_engine import PROCESS, EngineNotFoundError, detect_engine

    try:
        return detect_engine(), ""
    except EngineNotFoundError as exc:
        try:
            engine = detect_engine(PROCESS)
        except EngineNotFoundError as process_exc:
            raise RuntimeError(f"{NO_ENGINE_HINT}\n{exc}\n{process_exc}") from exc
        reason = str(exc).split("\n", 1)[0]
        return engine, f"{reason}: checking in process mode. {PROCESS_MODE_NOTE}."


@component(base_image=COMPONENTS_IMAGE)
def contract_check(
    image_uri: str,
    model: Input[Model],
    report: Output[Markdown],
    metrics: Output[Metrics],
    unmanaged_container_model: Output[UnmanagedContainerModel],
    port: int = 8080,
    health_route: str = "/health",
    predict_route: str = "/predict",
    env: dict = {},  # noqa: B006 (KFP needs a literal default)
    startup_deadline_s: float = 120.0,
    grace_period_s: float = 30.0,
    large_model_bytes: int = 268435456,
):
    """Check a serving image against Vertex AI's container contract; emit it for upload.

    Runs ``image_uri`` the way Vertex would (own entrypoint, ``AIP_*`` variables, the model
    mounted and named by ``AIP_STORAGE_URI``, ``port`` published) and checks liveness, health,
    predictions against the model's ``expected_predictions.jsonl``, malformed requests, a
    concurrent burst and SIGTERM, with Vertex's numbers (see ``components/contract_check.py``).

    Only when every rule passes does it write ``unmanaged_container_model`` (uri: the model
    directory; metadata.containerSpec: imageUri, ports, routes, env, and a startupProbe for a
    large or slow model) for GCPC's ``ModelUploadOp``: no container spec reaches upload
    without passing this check. On a violation the report and metrics are still written, and
    the task fails with a message naming the rule, the request, the answer and what Vertex
    would have done.

    Where it runs: under ``kfp.local`` (``SubprocessRunner(use_venv=False)``) it runs the
    image with the local podman or docker. Where neither works (a Vertex AI Pipelines task
    runs in a pod with no container daemon) it falls back to process mode and says so in its
    log, report and metrics (``process_mode: 1``): the same server code and the model, with
    Vertex's environment, as a local process; weaker, since the image itself is not run. The
    way to run the image on Google Cloud is a Cloud Build job whose steps run the image and
    this checker side by side (a step can start the image detached on Cloud Build's docker
    network, and the next step runs ``python compile.py check-contract`` against it); that
    path is not implemented yet. ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process`` asks for process
    mode explicitly.

    Args:
        image_uri: the image to check, as the engine knows it (and as upload will use it).
        model: the train component's model directory.
        port: the container port (``containerSpec.ports[0]``; ``AIP_HTTP_PORT``).
        health_route: ``containerSpec.healthRoute`` (``AIP_HEALTH_ROUTE``).
        predict_route: ``containerSpec.predictRoute`` (``AIP_PREDICT_ROUTE``).
        env: extra environment variables for the container (no ``AIP_`` names).
        startup_deadline_s: how long health may take to answer 200.
        grace_period_s: how long the container may take to exit after SIGTERM.
        large_model_bytes: model size from which the spec gets a ``startupProbe``.

    Returns:
        report: the human-readable report (Markdown).
        metrics: verdict, rule counts, startup time, latencies, stop time.
        unmanaged_container_model: the checked model for ``ModelUploadOp`` (on a pass only).
    """
    from pathlib import Path

    from components.contract_check import (
        CheckSettings,
        ContractViolation,
        check_model_image,
        choose_check_engine,
    )

    engine, fallback = choose_check_engine()
    if fallback:
        print(fallback)
    checked, metadata = check_model_image(
        image_uri,
        model.path,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=dict(env),
        settings=CheckSettings(
            startup_deadline_s=startup_deadline_s, grace_period_s=grace_period_s
        ),
        large_model_bytes=large_model_bytes,
        engine=engine,
    )
    if fallback:
        checked.settings["why process mode"] = fallback
    print(checked.verdict())
    Path(report.path).write_text(checked.to_markdown(), encoding="utf-8")
    for name, value in checked.metrics().items():
        metrics.log_metric(name, value)
    if metadata is None:
        raise ContractViolation(checked)
    unmanaged_container_model.uri = model.uri
    unmanaged_container_model.metadata.update(metadata)

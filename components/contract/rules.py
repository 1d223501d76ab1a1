"""The contract's rules, what Vertex AI does when one is broken, and the report of a check.

Every verdict names the rule, the request sent, what came back and what Vertex would do
(``VERTEX_WOULD``): a person reading one failure knows what to fix without running anything.

Two levels (``LEVELS``): a **contract** rule is one whose breach Vertex does not survive (the
deploy fails, the replica is taken out of service, or callers get wrong answers); a
**hygiene** rule is a weakness Vertex tolerates (a 5xx on a client's mistake, a body over the
limit taken or mishandled, a slow stop, a gRPC port without reflection, an image we did not
build answering an edge instance with an error). A check fails on contract rules; hygiene
findings are warnings, unless the check is strict.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.runners import PROCESS_MODE_NOTE, tail_lines

LOG_TAIL_LINES = 40
"""Log lines of the server a report quotes."""

CONTRACT = "contract"
HYGIENE = "hygiene"
RULES: dict[str, str] = {
    "liveness": "the declared port accepts TCP connections within Vertex's liveness window",
    "health": "GET on the health route answers 200 within 10 s, before the startup deadline",
    "health-means-ready": "once health answers 200, predict works",
    "predict-request": 'POST {"instances": [...]} on the predict route answers 200',
    "predict-response": 'the answer is a JSON object {"predictions": [...]}, one per instance',
    "predict-values": (
        "the predictions equal expected_predictions.jsonl (float tolerance), whatever the "
        "request: one batch, each instance alone, another order"
    ),
    "edge-errors": (
        "an image we did not build answers the edge instances (a feature missing, an unseen "
        "category, a number at the training range's end) with predictions, not errors "
        "(checked for such an image only: ours must answer them under predict-values)"
    ),
    "bad-json": "a body that is not JSON gets a 4xx",
    "no-instances": 'a JSON object without "instances" gets a 4xx',
    "wrong-feature": "an instance with a wrong feature gets a 4xx",
    "oversize": "a body over the largest Vertex forwards (10 MB) gets a 4xx, or is taken",
    "concurrency": "a burst of concurrent predict requests all succeed",
    "stays-up": "the server keeps running and healthy through every request",
    "grpc-health": (
        'grpc.health.v1 Check on "" answers SERVING on the gRPC port within the startup '
        "deadline, and only once ModelInfer works"
    ),
    "grpc-predict": "ModelInfer answers the sample's instances with a ModelInferResponse",
    "grpc-values": (
        "ModelInfer's predictions equal expected_predictions.jsonl (float tolerance), sent as "
        "predict-values sends them"
    ),
    "grpc-bad-input": "a wrong-typed input tensor and an unknown one get INVALID_ARGUMENT",
    "grpc-reflection": "the gRPC port offers server reflection",
    "grpc-stays-up": 'Check on "" still answers SERVING after every gRPC request',
    "sigterm": "SIGTERM stops the container within the grace period",
}
"""Every rule the check applies, by name, in the order the report lists them; the ``grpc-``
rules only where a gRPC port is declared (``grpc_rules``), ``FOREIGN_RULES`` only for an
image we did not build (``CheckSettings.foreign_image``)."""
GRPC_RULES = tuple(rule for rule in RULES if rule.startswith("grpc-"))
"""The rules of the gRPC port (``containerSpec.grpcPorts``)."""
FOREIGN_RULES = ("edge-errors",)
"""The rules applied only to an image we did not build."""
_TOLERATED = (
    "bad-json", "no-instances", "wrong-feature", "oversize", "sigterm", "edge-errors",
    "grpc-bad-input", "grpc-reflection",
)  # fmt: skip
LEVELS: dict[str, str] = {rule: HYGIENE if rule in _TOLERATED else CONTRACT for rule in RULES}
"""Each rule's level: ``contract`` (Vertex fails with it) or ``hygiene`` (Vertex tolerates it)."""

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
    "edge-errors": (
        "pass the image's error on to every client that sends such an instance (a row with a "
        "feature missing, a category unseen in training, a number at the end of the training "
        "range), where the model itself has a prediction: clients and batch prediction retry a "
        "5xx as if the server were broken, and batch prediction writes those rows to its error "
        "file"
    ),
    "bad-input": (
        "pass a 5xx on as a server error, which clients and batch prediction retry as if the "
        "server were broken, and the caller never learns that the request was wrong"
    ),
    "oversize": (
        "forward bodies up to 10 MB to the container on dedicated and private endpoints (only "
        "shared public endpoints stop bodies over 1.5 MB themselves), so a body at the limit "
        "must be answered, not reset"
    ),
    "accepted": (
        "hand the caller whatever the server made of a malformed request, with no error to "
        "say the request was wrong"
    ),
    "concurrency": (
        "send concurrent requests to each replica (and batch prediction sends requests in "
        "parallel); failures under a burst reach callers as errors"
    ),
    "stays-up": (
        "stop routing traffic to the replica once health fails 4 times in a row, and restart "
        "a container that exited (liveness); one such request takes the replica out of service "
        "each time it is sent"
    ),
    "grpc-health": (
        "send its startup, health and liveness checks to the first of containerSpec.grpcPorts "
        '(the spec\'s grpc probes: grpc.health.v1 Check on ""), so a server that never answers '
        "SERVING there never gets traffic and the deploy fails with 'Model server never became "
        "ready'"
    ),
    "grpc-health-means-ready": (
        "route traffic as soon as Check answers SERVING, so calls after every deploy, restart "
        "or scale-up fail until the model has loaded; answer SERVING only once the model is "
        "loaded"
    ),
    "grpc-predict": (
        "pass the error on to every gRPC caller of the endpoint (dedicated endpoints forward "
        "ModelInfer to the first of containerSpec.grpcPorts)"
    ),
    "grpc-values": (
        "serve these values to gRPC callers without any error: the skew between training and "
        "serving would go unnoticed"
    ),
    "grpc-bad-input": (
        "pass the status on to the caller: UNKNOWN or INTERNAL reads as a broken server, which "
        "gRPC clients and their retry policies treat as worth retrying, and the caller never "
        "learns that the request was wrong"
    ),
    "grpc-accepted": (
        "hand the caller whatever the server made of a malformed request, with no error to "
        "say the request was wrong"
    ),
    "grpc-reflection": (
        "serve gRPC without it (Vertex never asks for reflection), but grpcurl and other "
        "tools cannot list or call the service without a copy of its .proto files"
    ),
    "grpc-stays-up": (
        "stop routing traffic to the replica once its gRPC health check fails 4 times in a "
        "row, and restart a container that exited (liveness)"
    ),
    "sigterm": (
        "send SIGTERM on undeploy, update and scale-down and SIGKILL once the grace period "
        "is over: in-flight requests are cut off and the replica lingers for the whole period"
    ),
}
"""What Vertex AI does when a rule is broken, completing "Vertex AI would ...". The bad-input
rules use ``bad-input`` (a 5xx or reset) or ``accepted`` (a 2xx), oversize prefixed; gRPC's
``grpc-bad-input`` or ``grpc-accepted`` (OK), and ``grpc-health-means-ready`` for SERVING
before the model is loaded."""


class Evidence(Protocol):
    """A request and its answer, as a verdict quotes them (an HTTP ``Exchange``, a gRPC
    ``grpc_rules.Call``)."""

    def request_text(self) -> str: ...

    def response_text(self) -> str: ...


class ContractViolation(Exception):
    """The server or image broke the contract (or, checked strictly, a hygiene rule);
    ``report`` has every rule's result."""

    def __init__(self, report: ContractReport) -> None:
        self.report = report
        failed = report.violations
        what = (
            "breaks the Vertex AI container contract"
            if report.contract_violations
            else "fails hygiene rules that Vertex tolerates (checked strictly)"
        )
        lines = [f"{report.target} {what} ({len(failed)} of {len(report.rules)} rules failed):"]
        lines += [result.message() for result in failed]
        if report.process_mode:
            lines.append(f"({PROCESS_MODE_NOTE}.)")
        super().__init__("\n".join(lines))


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
    def level(self) -> str:
        """``contract`` or ``hygiene`` (``LEVELS``)."""
        return LEVELS[self.rule]

    def verdict(self, strict: bool = False) -> str:
        """``PASS``, ``FAIL``, ``WARN`` (a hygiene rule failed, not checked strictly) or
        ``SKIP``."""
        if self.skipped:
            return "SKIP"
        if self.passed:
            return "PASS"
        return "FAIL" if strict or self.level == CONTRACT else "WARN"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleResult:
        return cls(**data)

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


def rule_result(
    rule: str, passed: bool, detail: str, exchange: Evidence | None = None, consequence: str = ""
) -> RuleResult:
    """A rule's verdict with the exchange that shows it; a broken rule also says what Vertex
    would do (by default the rule's ``VERTEX_WOULD``)."""
    return RuleResult(
        rule,
        passed,
        detail,
        request=exchange.request_text() if exchange else "",
        response=exchange.response_text() if exchange else "",
        vertex_consequence="" if passed else consequence or VERTEX_WOULD[rule],
    )


def pass_result(rule: str, detail: str, exchange: Evidence | None = None) -> RuleResult:
    """A passed rule, with the exchange that shows it."""
    return rule_result(rule, True, detail, exchange)


def fail_result(
    rule: str, detail: str, exchange: Evidence | None = None, consequence: str = ""
) -> RuleResult:
    """A broken rule: the exchange that shows it and what Vertex would do."""
    return rule_result(rule, False, detail, exchange, consequence)


def skip_result(rule: str, reason: str) -> RuleResult:
    """A rule not applied, and why."""
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
    strict: bool = False
    """Hygiene rules fail the check too."""
    predictions: list[str] = field(default_factory=list)
    """Markdown table rows: how many predictions matched, by kind of instance and request."""

    @property
    def contract_violations(self) -> list[RuleResult]:
        """The failed contract rules."""
        return [r for r in self.rules if not r.passed and r.level == CONTRACT]

    @property
    def violations(self) -> list[RuleResult]:
        """The failed rules that fail the check, in the order they were checked: contract
        rules, and hygiene rules too when strict."""
        return [r for r in self.rules if r.verdict(self.strict) == "FAIL"]

    @property
    def warnings(self) -> list[RuleResult]:
        """The failed hygiene rules that only warn (not strict)."""
        return [r for r in self.rules if r.verdict(self.strict) == "WARN"]

    @property
    def passed(self) -> bool:
        """Whether the check passes: no violation."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for a check that continues in another process (a Cloud Build
        step); ``from_dict`` reads it back."""
        data = dataclasses.asdict(self)
        data["rules"] = [result.to_dict() for result in self.rules]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContractReport:
        fields = {**data, "rules": [RuleResult.from_dict(r) for r in data["rules"]]}
        return cls(**fields)

    def result(self, rule: str) -> RuleResult:
        """The result of one rule by name; ``KeyError`` when it was not recorded."""
        for result in self.rules:
            if result.rule == rule:
                return result
        raise KeyError(rule)

    def verdict(self) -> str:
        """One line: PASS (with the warnings' rule names), or FAIL with the failed rules'."""
        note = f". {PROCESS_MODE_NOTE}" if self.process_mode else ""
        if self.passed:
            warned = ", ".join(result.rule for result in self.warnings)
            warnings = f" (warnings: {warned})" if warned else ""
            return f"PASS: {self.target} honours the Vertex AI container contract{warnings}{note}"
        names = ", ".join(result.rule for result in self.violations)
        if self.contract_violations:
            return f"FAIL: {self.target} breaks the Vertex AI container contract ({names}){note}"
        return f"FAIL (strict): {self.target} fails hygiene rules ({names}){note}"

    def metrics(self) -> dict[str, float]:
        """Numbers for ``Output[Metrics]``: verdict, rule counts, startup, latencies, stop;
        ``process_mode: 1`` for a check in process mode."""
        values: dict[str, float] = {
            "passed": float(self.passed),
            "rules_passed": float(sum(r.passed and not r.skipped for r in self.rules)),
            "rules_failed": float(len(self.violations)),
            "rules_warned": float(len(self.warnings)),
            "rules_skipped": float(sum(r.skipped for r in self.rules)),
        }
        if self.strict:
            values["strict"] = 1.0
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
        lines += ["", "## Rules", "", "| rule | level | verdict | found |", "|---|---|---|---|"]
        for result in self.rules:
            detail = result.detail.replace("|", "\\|").replace("\n", " ")
            verdict = result.verdict(self.strict)
            lines.append(f"| {result.rule} | {result.level} | {verdict} | {detail} |")
        for title, results in (("Violations", self.violations), ("Warnings", self.warnings)):
            if results:
                lines += ["", f"## {title}"]
            for result in results:
                lines += ["", f"### {result.rule}: {RULES.get(result.rule, '')}", ""]
                lines.append(f"- **found:** {result.detail}")
                if result.request:
                    lines.append(f"- **request sent:** `{result.request}`")
                if result.response:
                    lines.append(f"- **came back:** `{result.response}`")
                lines.append(f"- **Vertex AI would** {result.vertex_consequence}.")
        if self.predictions:
            lines += ["", "## Predictions by kind of instance and request", ""]
            lines += self.predictions
        lines += ["", "## Timings", ""]
        timings = {k: v for k, v in self.metrics().items() if k.endswith(("_s", "_ms"))}
        lines += [f"- {name}: {value}" for name, value in sorted(timings.items())]
        lines += [] if timings else ["(none measured)"]
        if self.logs is not None:
            source = "Server process" if self.process_mode else "Container"
            lines += ["", f"## {source} logs (last {LOG_TAIL_LINES} lines)", "", "```"]
            lines += tail_lines(self.logs, LOG_TAIL_LINES).splitlines() or ["(no output)"]
            lines += ["```"]
        return "\n".join([*lines, ""])


def sigterm_result(
    grace_period_s: float, seconds: float, exit_code: int | None, killed: bool
) -> RuleResult:
    """The verdict on a SIGTERM sent to the container's PID 1: it must exit within the grace
    period (``killed``: it did not, and was killed)."""
    request = f"SIGTERM to the container's PID 1, grace period {grace_period_s:g} s"
    if killed:
        detail = (
            f"the container was still running {grace_period_s:g} s after SIGTERM and had to be "
            "killed: the entrypoint ignores SIGTERM (a Python server as PID 1 needs a SIGTERM "
            "handler, or exec form in the Dockerfile)"
        )
        result = fail_result("sigterm", detail)
        result.request = request
        return result
    detail = f"exited with status {exit_code} {seconds:.2f} s after SIGTERM"
    return RuleResult("sigterm", True, detail, request=request)


def explain_exit(status: int, logs: str, *, process_mode: bool = False) -> str:
    """How a server ended, with a likely cause read from its logs and its last lines: a
    container, or in process mode the server process (whose dependencies are this
    environment's, not an image's)."""
    what = "The server process" if process_mode else "The container"
    missing = re.search(r"No module named '([^']+)'", logs)
    if missing and process_mode:
        cause = (
            f"a Python dependency is missing from this environment (No module named "
            f"'{missing.group(1)}'): process mode runs the server with this interpreter; "
            "install the serve extra (pip install '.[serve]')"
        )
    elif missing:
        cause = (
            f"a Python dependency is missing from the image (No module named "
            f"'{missing.group(1)}'): install it in the Dockerfile"
        )
    elif status == 0 and process_mode:
        cause = "the server stopped on its own: see its last log lines"
    elif status == 0:
        cause = (
            "the entrypoint finished: it must start an HTTP server in the foreground and "
            "keep it running"
        )
    elif status == 137:
        cause = "it was killed (SIGKILL; out of memory?)"
    else:
        cause = "see its last log lines"
    tail = tail_lines(logs, 10) or "(no output)"
    return f"{what} exited with status {status}: {cause}. Last log lines:\n{tail}"

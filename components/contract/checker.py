"""The contract check of any running server: the rules applied in order, over HTTP.

``check_server(base_url, ...)`` needs no kfp and no container engine; it returns a
``ContractReport``. What runs the server (a container, a local process, or nothing we know
of: a plain URL) may tell the checker about it through a ``ServerObserver``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from components import vertex
from components.contract.rules import (
    RULES,
    VERTEX_WOULD,
    ContractReport,
    RuleResult,
    fail_result,
    pass_result,
    skip_result,
)
from components.runners.http import Exchange, send, split_url, tcp_accepts
from serving_image.server.predictions import json_difference


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
    max_request_bytes: int = vertex.MAX_REQUEST_BYTES
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


def _json_body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


class ServerObserver(Protocol):
    """What ``check_server`` may ask about the process behind the URL (a container, say)."""

    def exit_note(self) -> str | None:
        """``None`` while the server process runs; once it exited, a sentence saying how
        (status and last log lines)."""

    def listening_note(self) -> str:
        """Where the server actually listens, for diagnosing refused connections ("" if
        unknown)."""


def wrong_feature(instance: Any) -> Any:
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


@dataclass
class _Checker:
    """One run of the rules against one server; use ``check_server``."""

    base_url: str
    health_route: str
    predict_route: str
    instances: list[Any]
    expected: list[Any] | None
    settings: CheckSettings
    observer: ServerObserver | None
    started: float
    down: bool = False
    """Set once health failed after a malformed request."""
    report: ContractReport = field(init=False)

    def __post_init__(self) -> None:
        expected = len(self.expected) if self.expected is not None else "not given"
        self.report = ContractReport(
            target=self.base_url,
            settings={
                "health route": self.health_route,
                "predict route": self.predict_route,
                "instances": len(self.instances),
                "expected predictions": expected,
                "startup deadline (s)": self.settings.startup_deadline_s,
                "liveness window (s)": self.settings.liveness_window_s,
            },
            latencies_s={"health": [], "predict": [], "burst": []},
        )

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
                return pass_result("liveness", f"the port accepted TCP after {waited:.2f} s")
            if self._exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        host, port = split_url(self.base_url)
        if self._exited():
            detail = f"nothing accepted TCP on {host}:{port} before the server process ended"
        else:
            detail = (
                f"nothing accepted a TCP connection on {host}:{port} within the {window:g} s "
                f"liveness window ({self.settings.liveness_attempts} attempts, "
                f"{self.settings.liveness_interval_s:g} s apart)"
            )
        return fail_result("liveness", self._with_note(detail))

    def health(self) -> RuleResult:
        deadline = self.started + self.settings.startup_deadline_s
        while True:
            exchange = self._health()
            if exchange.ok:
                self.report.startup_s = time.monotonic() - self.started
                return pass_result(
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
        return fail_result("health", self._with_note(detail), exchange)

    def predict(self) -> tuple[RuleResult, Exchange]:
        """The first predict, right after the first health 200 (Vertex's first real request)."""
        first = self._predict(self._sample_body())
        if first.ok:
            return pass_result("predict-request", "answered 200", first), first
        if first.status is None:
            detail = f"predict route {self.predict_route} gave no HTTP answer"
            return fail_result("predict-request", self._with_note(detail), first), first
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
                self.add(fail_result("health-means-ready", detail, first))
                return pass_result(
                    "predict-request", "answered 200 once loaded", exchange
                ), exchange
        return fail_result("predict-request", self._with_note(detail), first), first

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
            return fail_result("predict-response", "the answer is not JSON", exchange), None
        count = len(self.instances)
        if isinstance(payload, list):
            detail = (
                f"the answer is a bare JSON list ({len(payload)} elements) instead of an "
                'object {"predictions": [...]}'
            )
            return fail_result("predict-response", detail, exchange), None
        if not isinstance(payload, dict) or "predictions" not in payload:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            detail = f'the answer has no "predictions" (got {keys})'
            return fail_result("predict-response", detail, exchange), None
        predictions = payload["predictions"]
        if not isinstance(predictions, list):
            detail = f'"predictions" is a {type(predictions).__name__}, not a list'
            return fail_result("predict-response", detail, exchange), None
        if len(predictions) != count:
            detail = f"{len(predictions)} predictions came back for {count} instances"
            return fail_result("predict-response", detail, exchange), None
        return pass_result("predict-response", f"{count} predictions for {count} instances"), (
            predictions
        )

    def values(self, predictions: list[Any], exchange: Exchange) -> RuleResult:
        if self.expected is None:
            return skip_result("predict-values", "no expected predictions given: shape only")
        difference = json_difference(
            self.expected,
            predictions,
            rel_tol=self.settings.rel_tol,
            abs_tol=self.settings.abs_tol,
            path="predictions",
        )
        if difference is None:
            return pass_result(
                "predict-values",
                f"all {len(predictions)} predictions equal the expected ones "
                f"(rel_tol {self.settings.rel_tol:g})",
            )
        detail = (
            f"the served predictions differ from the exported expectations: {difference} "
            "(serving does not reproduce training: re-fitted or re-implemented preprocessing, "
            "another model file, or other library versions)"
        )
        return fail_result("predict-values", detail, exchange)

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
            return pass_result(rule, f"{detail}, still healthy", exchange)
        return fail_result(rule, self._with_note(detail), exchange, consequence)

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
            return pass_result("concurrency", detail)
        detail = f"{len(failures)} of {size} concurrent predict requests failed"
        return fail_result("concurrency", self._with_note(detail), failures[0])

    def malformed_cases(self) -> list[tuple[str, bytes, str]]:
        """(rule, body, note) for each malformed request; the oversize body is valid JSON."""
        first = self.instances[0]
        target = self.settings.max_request_bytes + 64 * 1024
        one = len(_json_body(first)) + 1
        oversize = _json_body({"instances": [first] * (target // one + 1)})
        return [
            ("bad-json", b'{"instances": [', ""),
            ("no-instances", _json_body({"inputs": self.instances}), ""),
            ("wrong-feature", _json_body({"instances": [wrong_feature(first)]}), ""),
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
            self.report.rules += [skip_result(rule, reason) for rule in rules]

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
    health_route: str = vertex.DEFAULT_HEALTH_ROUTE,
    predict_route: str = vertex.DEFAULT_PREDICT_ROUTE,
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
        The report; it never raises for a violation (``ContractViolation`` does, from it).
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

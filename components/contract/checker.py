"""The contract check of any running server: the rules applied in order, over HTTP (and gRPC).

``check_server(base_url, ...)`` needs no kfp and no container engine; it returns a
``ContractReport``. What runs the server (a container, a local process, or nothing we know
of: a plain URL) may tell the checker about it through a ``ServerObserver``. Where the
server declares a gRPC port (``grpc``), ``grpc_rules`` checks it too: its health right after
liveness, while the model may still be loading, the rest after the HTTP rules.

The numbers are Vertex's and each assumes an endpoint type, which the report states: the
health and liveness probes are the same everywhere; the predict timeout (60 s) is that of
shared public and private (PSA) endpoints, the strictest; requests are split to stay within
1.5 MB, which every endpoint type takes; the oversize body is over 10 MB, the most Vertex
forwards to a container (dedicated and private endpoints).

The sample is sent as ``sample`` says (in batches, each instance alone, in another order) and
every answer compared; a malformed request may get a 4xx (a 5xx or a reset is a hygiene
finding, ``rules.LEVELS``), after which health must still answer 200 (``stays-up``).

An image we did not build (``CheckSettings.foreign_image``) gets the same rules, except that
its plain answers are compared with the same part of the expected predictions and an error on
an edge instance is the hygiene rule ``edge-errors`` instead of a ``predict-values`` failure.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from components import vertex
from components.contract.grpc_rules import GrpcRules, GrpcTarget
from components.contract.rules import (
    FOREIGN_RULES,
    GRPC_RULES,
    RULES,
    VERTEX_WOULD,
    ContractReport,
    RuleResult,
    fail_result,
    pass_result,
    skip_result,
)
from components.contract.sample import (
    BATCH,
    SHAPE_NAMES,
    SINGLE,
    Comparison,
    Sample,
    agreement,
    describe,
    describe_errors,
    json_body,
    table,
)
from components.contract.settings import CheckSettings, ServerObserver, ServerWatch
from components.runners.http import Exchange, send, split_url, tcp_accepts

HEALTH_RETRIES = 3
"""Health probes sent again after one that got no HTTP answer, before ``stays-up`` fails."""
HEALTH_RETRY_PAUSE_S = 0.5
"""The pause before each of those probes."""

NOT_OURS = "not checked, the image is not ours: the exported answer shape (label and probabilities)"
FOREIGN_NOTE = (
    "a plain answer (a label, class probabilities) is compared with the same part of the "
    f"exported prediction, and an error on an edge instance warns (edge-errors); {NOT_OURS}"
)
"""What the report says of a check of an image we did not build."""


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
    sample: Sample
    settings: CheckSettings
    watch: ServerWatch
    started: float
    grpc_target: GrpcTarget | None = None
    down_after: str = ""
    """The request after which health failed, once it did."""
    report: ContractReport = field(init=False)
    grpc: GrpcRules | None = field(init=False)
    """The gRPC rules' run, where a gRPC port is declared."""

    def __post_init__(self) -> None:
        settings = self.settings
        expected = len(self.sample.expected) if self.sample.expected is not None else "not given"
        self.report = ContractReport(
            target=self.base_url,
            settings={
                "health route": self.health_route,
                "predict route": self.predict_route,
                "instances": len(self.sample.instances),
                "expected predictions": expected,
                "request shapes": ", ".join(SHAPE_NAMES[s] for s in settings.request_shapes),
                "startup deadline (s)": settings.startup_deadline_s,
                "liveness window (s), every endpoint type": settings.liveness_window_s,
                "health timeout (s), every endpoint type": settings.health_timeout_s,
                "predict timeout (s), shared public and private (PSA) endpoints": (
                    settings.predict_timeout_s
                ),
                "request bodies within (bytes), every endpoint type": settings.max_batch_bytes,
                "oversize body over (bytes), the most dedicated and private endpoints forward": (
                    settings.max_request_bytes
                ),
                "strict (hygiene rules fail the check)": settings.strict,
                "instances sent as": self.sample.form(),
                "foreign image (not built by train-to-serve)": (
                    f"yes: {FOREIGN_NOTE}" if settings.foreign_image else "no"
                ),
            },
            latencies_s={"health": [], "predict": [], "burst": []},
            strict=settings.strict,
        )
        self.grpc = None
        if self.grpc_target is not None:
            self.report.settings["gRPC port (containerSpec.grpcPorts)"] = self.grpc_target.port
            self.report.settings["gRPC reached at"] = self.grpc_target.address
            latencies = self.report.latencies_s.setdefault("grpc_predict", [])
            self.grpc = GrpcRules(
                self.grpc_target, self.sample, settings, self.watch, self.started, latencies
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

    @property
    def first_request(self) -> list[int]:
        """The instances of the first predict request."""
        return self.sample.first_request(self.settings.max_batch_bytes)

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
            if self.watch.exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        host, port = split_url(self.base_url)
        if self.watch.exited():
            detail = f"nothing accepted TCP on {host}:{port} before the server process ended"
        else:
            detail = (
                f"nothing accepted a TCP connection on {host}:{port} within the {window:g} s "
                f"liveness window ({self.settings.liveness_attempts} attempts, "
                f"{self.settings.liveness_interval_s:g} s apart)"
            )
        return fail_result("liveness", self.watch.with_note(detail))

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
            if self.watch.exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        if self.watch.exited():
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
        return fail_result("health", self.watch.with_note(detail), exchange)

    def predict(self) -> tuple[RuleResult, Exchange]:
        """The first predict, right after the first health 200 (Vertex's first real request)."""
        body = self.sample.body(self.first_request)
        first = self._predict(body)
        if first.ok:
            return pass_result("predict-request", "answered 200", first), first
        if first.status is None:
            detail = f"predict route {self.predict_route} gave no HTTP answer"
            return fail_result("predict-request", self.watch.with_note(detail), first), first
        detail = (
            f"predict route {self.predict_route} answered {first.status} to Vertex's request "
            'body {"instances": [...]}'
        )
        bare = [self.sample.instances[index] for index in self.first_request]
        if self._predict(json_body(bare), record="").ok:
            detail += (
                "; it answered 200 to a bare JSON list of the instances instead: the server "
                'wants a bare list, but Vertex always sends {"instances": [...]}'
            )
        elif first.status >= 500 and not self.watch.exited():
            later = self.watch.retry_until_ok(lambda: self._predict(body), self.settings)
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
        return fail_result("predict-request", self.watch.with_note(detail), first), first

    def predictions_of(self, exchange: Exchange, count: int) -> tuple[str, list[Any] | None]:
        """What is wrong with the shape of a 200 predict answer for ``count`` instances
        (``""``: nothing), and its predictions when it is right."""
        try:
            payload = exchange.json()
        except ValueError:
            return "the answer is not JSON", None
        if isinstance(payload, list):
            return (
                f"the answer is a bare JSON list ({len(payload)} elements) instead of an "
                'object {"predictions": [...]}'
            ), None
        if not isinstance(payload, dict) or "predictions" not in payload:
            keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            return f'the answer has no "predictions" (got {keys})', None
        predictions = payload["predictions"]
        if not isinstance(predictions, list):
            return f'"predictions" is a {type(predictions).__name__}, not a list', None
        if len(predictions) != count:
            return f"{len(predictions)} predictions came back for {count} instances", None
        return "", predictions

    def response_shape(self, exchange: Exchange) -> tuple[RuleResult, list[Any] | None]:
        """The predict-response rule on the first answer."""
        count = len(self.first_request)
        fault, predictions = self.predictions_of(exchange, count)
        if fault:
            return fail_result("predict-response", fault, exchange), None
        return pass_result("predict-response", f"{count} predictions for {count} instances"), (
            predictions
        )

    def compare(self, shape: str, first: tuple[list[Any], Exchange]) -> Comparison:
        """Send the sample as ``shape`` asks and compare every answer with its expectation
        (the first request of a batch is the one already answered)."""
        comparison = Comparison(shape)
        expected = self.sample.expected or []
        for number, positions in enumerate(
            self.sample.requests(shape, self.settings.max_batch_bytes)
        ):
            if shape == BATCH and number == 0:
                (predictions, exchange), fault = first, ""
            else:
                exchange = self._predict(self.sample.body(positions))
                excused = self._excused(comparison, positions) if not exchange.ok else None
                if excused is not None:
                    excused.update(dict.fromkeys(positions, f"{exchange.status or exchange.error}"))
                    if excused is comparison.errored:
                        comparison.error_exchange = comparison.error_exchange or exchange
                    continue
                fault, predictions = (
                    self.predictions_of(exchange, len(positions))
                    if exchange.ok
                    else (f"answered {exchange.response_text()}", None)
                )
            comparison.record(
                expected,
                positions,
                predictions,
                fault,
                exchange,
                rel_tol=self.settings.rel_tol,
                abs_tol=self.settings.abs_tol,
                plain=self.settings.foreign_image,
            )
        return comparison

    def _excused(self, comparison: Comparison, positions: list[int]) -> dict[int, str] | None:
        """Where a request answered with an error is noted instead of compared: a list form
        the server may refuse (``refused``); for an image we did not build, edge instances
        (``errored``, the ``edge-errors`` rule); ``None``: nowhere, it fails predict-values."""
        if self.sample.optional(positions):
            return comparison.refused
        if self.settings.foreign_image and self.sample.edges(positions):
            return comparison.errored
        return None

    def values(self, predictions: list[Any], exchange: Exchange) -> RuleResult:
        if self.sample.expected is None:
            if self.settings.foreign_image:
                self.add(skip_result("edge-errors", "no expected predictions given"))
            return skip_result("predict-values", "no expected predictions given: shape only")
        comparisons = [
            self.compare(shape, (predictions, exchange)) for shape in self.settings.request_shapes
        ]
        self.report.predictions = table(self.sample, comparisons)
        if self.settings.foreign_image:
            self.add(self.edge_errors(comparisons))
        differed = [c for c in comparisons if c.differences]
        compared_as = self._compared_as(comparisons)
        if not differed:
            detail = agreement(comparisons, self.settings.rel_tol) + compared_as
            refused = {answer for c in comparisons for answer in c.refused.values()}
            if refused:
                count = max(len(c.refused) for c in comparisons)
                detail += (
                    f"; the {count} instances given as lists of values were refused "
                    f"(answered {', '.join(sorted(refused))}): the server takes objects only, "
                    "so callers must send objects"
                )
            return pass_result("predict-values", detail)
        detail = (
            f"the served predictions differ from the exported expectations{compared_as}: "
            f"{describe(self.sample, comparisons)}. Serving does not reproduce training: "
            "re-fitted or re-implemented preprocessing, preprocessing that depends on the "
            "request's other instances, another model file, or other library versions"
        )
        return fail_result("predict-values", detail, differed[0].first_exchange)

    def _compared_as(self, comparisons: Sequence[Comparison]) -> str:
        """For an image we did not build, the answers' shapes compared (``""`` for ours,
        whose answers are compared as exported)."""
        if not self.settings.foreign_image:
            return ""
        counts: Counter[str] = sum((c.compared_as for c in comparisons), Counter())
        shapes = ", ".join(f"{shape} ({count})" for shape, count in counts.most_common())
        return f"; compared as {shapes or 'nothing'} ({NOT_OURS})"

    def edge_errors(self, comparisons: Sequence[Comparison]) -> RuleResult:
        """The ``edge-errors`` rule of an image we did not build: edge instances it answered
        with an error instead of a prediction."""
        errored = [c for c in comparisons if c.errored]
        if not errored:
            edges = self.sample.edge_count()
            return pass_result("edge-errors", f"all {edges} edge instances got a prediction")
        errored.sort(key=lambda c: c.shape != SINGLE)  # alone, a request names one instance
        detail = (
            f"{describe_errors(self.sample, errored)}: the model has a prediction for each "
            "(expected_predictions.jsonl), the image answers an error"
        )
        return fail_result("edge-errors", detail, errored[0].error_exchange)

    def bad_input(self, rule: str, body: bytes, body_note: str = "") -> RuleResult:
        """Send one request the server should refuse: a 4xx passes (for an oversize body a
        200 too: the server may take what Vertex never sends); then check it stays healthy."""
        exchange = self._predict(body, body_note, record="")
        status = exchange.status
        rejected = status is not None and 400 <= status < 500
        taken = rule == "oversize" and status == 200
        accepted = status is not None and status < 400
        consequence = VERTEX_WOULD["accepted" if accepted else "bad-input"]
        if rule == "oversize":
            consequence = f"{VERTEX_WOULD['oversize']}, and {consequence}"
        if status is None:
            detail = f"no answer to a malformed request: {exchange.error}"
        elif status >= 500:
            detail = f"answered {status} to a malformed request, not a 4xx"
        else:
            detail = f"answered {status}"
            if taken:
                detail += " (it takes bodies over the most Vertex forwards)"
            elif not rejected:
                detail += " to a malformed request instead of a 4xx"
        self._health_after(exchange.request_text())
        if rejected or taken:
            return pass_result(rule, detail, exchange)
        return fail_result(rule, self.watch.with_note(detail), exchange, consequence)

    def _health_after(self, request: str) -> None:
        """Probe health; remember the request after which it failed first. A probe that gets
        no HTTP answer at all is tried again (``HEALTH_RETRIES``) before the server counts as
        down, unless its process ended: a name lookup or connection that fails once (a
        container network's DNS reloading as another container joins it, seen on podman) is
        not a server that died, and a dead server stays dead through the retries."""
        after = self._health()
        for _ in range(HEALTH_RETRIES):
            if after.status is not None or self.watch.exited():
                break
            time.sleep(HEALTH_RETRY_PAUSE_S)
            after = self._health()
        if not self.down_after and (not after.ok or self.watch.exited()):
            answer = after.status or after.error
            self.down_after = f"after {request}, health returned {answer}"

    def burst(self) -> RuleResult:
        size = self.settings.burst_size
        positions = self.first_request
        body = self.sample.body(positions)
        with ThreadPoolExecutor(max_workers=size) as pool:
            exchanges = list(pool.map(lambda _: self._predict(body, record="burst"), range(size)))
        failures = [
            exchange
            for exchange in exchanges
            if not exchange.ok or self.predictions_of(exchange, len(positions))[1] is None
        ]
        self._health_after(f"a burst of {size} concurrent predict requests")
        if not failures:
            slowest = max(exchange.elapsed_s for exchange in exchanges)
            detail = f"{size} concurrent requests all answered 200 (slowest {slowest:.3f} s)"
            return pass_result("concurrency", detail)
        detail = f"{len(failures)} of {size} concurrent predict requests failed"
        return fail_result("concurrency", self.watch.with_note(detail), failures[0])

    def stays_up(self) -> RuleResult:
        if not self.down_after and not self.watch.exited():
            return pass_result("stays-up", "health answered 200 after every request")
        where = self.down_after or "the server process ended"
        return fail_result("stays-up", self.watch.with_note(f"{where}: the server is no longer up"))

    def malformed_cases(self) -> list[tuple[str, bytes, str]]:
        """(rule, body, note) for each request to refuse; the oversize body is valid JSON."""
        first = self.sample.instances[0]
        target = self.settings.max_request_bytes + 64 * 1024
        one = len(json_body(first)) + 1
        oversize = json_body({"instances": [first] * (target // one + 1)})
        return [
            ("bad-json", b'{"instances": [', ""),
            ("no-instances", json_body({"inputs": [first]}), ""),
            ("wrong-feature", json_body({"instances": [wrong_feature(first)]}), ""),
            (
                "oversize",
                oversize,
                f'{{"instances": [...]}} of {len(oversize):,} bytes '
                f"(over {self.settings.max_request_bytes:,})",
            ),
        ]

    def run(self) -> ContractReport:
        """Apply the rules in order; once one makes the rest pointless, they are skipped."""
        stopped = self._run_rules()
        if self.grpc is not None:
            self.report.rules += self.grpc.finish(stopped)
        order = list(RULES)
        self.report.rules.sort(key=lambda result: order.index(result.rule))
        return self.report

    def _run_rules(self) -> str:
        """The HTTP rules, and the gRPC ones that watch the model load; why the checks
        stopped early ("" when they did not)."""

        def skip(rules: Sequence[str], reason: str) -> str:
            self.report.rules += [skip_result(rule, reason) for rule in rules]
            return reason

        own = ("liveness", "sigterm", "health-means-ready")  # sigterm: check_image's business
        elsewhere = (*own, *GRPC_RULES, *(() if self.settings.foreign_image else FOREIGN_RULES))
        later = [rule for rule in RULES if rule not in elsewhere]
        values = [rule for rule in ("predict-values", *FOREIGN_RULES) if rule in later]
        if not self.add(self.liveness()).passed:
            return skip(later, "the port never accepted a connection")
        if self.grpc is not None:
            self.report.rules += self.grpc.start()
        if not self.add(self.health()).passed:
            return skip(later[1:], "the server never became healthy")
        result, exchange = self.predict()
        predict_works = self.add(result).passed
        if not predict_works:
            skip(["predict-response", *values], "predict-request failed")
        else:
            shape, predictions = self.response_shape(exchange)
            predict_works = self.add(shape).passed
            if predictions is None:
                skip(values, "predict-response failed")
            else:
                self.add(self.values(predictions, exchange))
        cases = self.malformed_cases()
        for index, (rule, body, note) in enumerate(cases):
            if self.down_after:
                stopped = [case[0] for case in cases[index:]] + ["concurrency"]
                reason = skip(stopped, "the server is no longer healthy")
                self.add(self.stays_up())
                return reason
            self.add(self.bad_input(rule, body, note))
        if predict_works and not self.down_after:
            self.add(self.burst())
        else:
            skip(["concurrency"], "a single predict request already fails")
        self.add(self.stays_up())
        return ""


def check_server(
    base_url: str,
    *,
    instances: Sequence[Any],
    expected: Sequence[Any] | None = None,
    kinds: Sequence[str] | None = None,
    health_route: str = vertex.DEFAULT_HEALTH_ROUTE,
    predict_route: str = vertex.DEFAULT_PREDICT_ROUTE,
    settings: CheckSettings | None = None,
    observer: ServerObserver | None = None,
    started: float | None = None,
    grpc: GrpcTarget | None = None,
) -> ContractReport:
    """Check a running server at ``base_url`` (``http://host:port``) against the contract.

    Args:
        base_url: where the server's declared port is reachable.
        instances: the sample instances (objects or lists, whatever the server takes).
        expected: one expected prediction per instance; ``None`` checks the shape only.
        kinds: what each instance is (``evaluation``, ``missing:<feature>``, ...), for the
            report; default: all ``evaluation``.
        health_route: the route Vertex would probe (``containerSpec.healthRoute``).
        predict_route: the route Vertex would post to (``containerSpec.predictRoute``).
        settings: the numbers to use; Vertex's by default.
        observer: the process behind the URL, to stop waiting once it exited and to explain
            refused connections; ``None`` for a plain URL.
        started: ``time.monotonic()`` when the server was started (default: now); the
            liveness window, startup deadline and startup time count from it.
        grpc: the server's gRPC port (``containerSpec.grpcPorts``), to apply the ``grpc-``
            rules there too; ``None``: no gRPC, and no such rules in the report.

    Returns:
        The report; it never raises for a violation (``ContractViolation`` does, from it).
    """
    checker = _Checker(
        base_url,
        health_route,
        predict_route,
        Sample.of(instances, expected, kinds),
        settings or CheckSettings(),
        ServerWatch(observer),
        time.monotonic() if started is None else started,
        grpc,
    )
    return checker.run()

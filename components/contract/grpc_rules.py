"""The contract's gRPC rules, for a server that declares a gRPC port (``containerSpec.grpcPorts``).

With ``grpcPorts`` set, Vertex AI sends its startup, health and liveness checks to the first
of them (``grpc.health.v1``), and gRPC callers of a dedicated endpoint reach the server's
``ModelInfer`` (the Open Inference Protocol) there. So real grpcio clients check, beside the
HTTP rules and with the same numbers:

* ``grpc-health``: Check on ``""`` answers SERVING within the startup deadline, and a
  ModelInfer sent right after works (SERVING before the model is loaded fails, as a health
  200 does over HTTP); no Health service at all fails at once;
* ``grpc-predict``: ModelInfer answers the first request of the sample with a
  ``ModelInferResponse`` of one prediction per instance (``serving_image.server.tensors``
  writes the request and reads the answer back as the HTTP route's predictions);
* ``grpc-values``: the sample sent as ``predict-values`` sends it, every answer equal to
  ``expected_predictions.jsonl`` at the same tolerance;
* ``grpc-bad-input`` (hygiene): a wrong-typed input tensor and an unknown one get
  ``INVALID_ARGUMENT``;
* ``grpc-reflection`` (hygiene): the port offers server reflection;
* ``grpc-stays-up``: Check still answers SERVING after all of that.

``GrpcRules.start`` applies the first two right after liveness, to see the server while its
model loads; ``GrpcRules.finish`` the others once the HTTP rules are done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format

from components.contract.rules import (
    GRPC_RULES,
    VERTEX_WOULD,
    RuleResult,
    fail_result,
    pass_result,
    skip_result,
)
from components.contract.sample import Comparison, Sample, agreement, describe
from components.contract.settings import CheckSettings, ServerWatch
from serving_image.server import artifact
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_image.server.tensors import predictions_from_response, request_from_instances

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
MODEL_INFER = f"{INFERENCE_SERVICE}/ModelInfer"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HEALTH_REQUEST = 'HealthCheckRequest(service="")'
SERVING = "SERVING"
UNKNOWN_INPUT = "no_such_input"
NOT_ANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""What a call gets when nothing answers on the port (yet)."""
SERIALIZE_FAILURE = "Failed to serialize response"
"""grpcio's INTERNAL details when a handler returned what it cannot serialize."""
_RETURNED_TYPE = re.compile(r"doesn't apply to a '(\w+)' object")
"""grpcio's log line naming the type a handler returned instead of the response message."""
NEVER_SERVING = 'Check on "" never answered SERVING'
QUOTED_CHARS = 300
"""How much of an answer a report quotes."""
LOG_SETTLE_S = 1.0
"""How long a server's log may take to show what it logged before it answered."""


@dataclass(frozen=True)
class GrpcTarget:
    """Where the check reaches a server's gRPC port, and what it sends there."""

    address: str
    """``host:port`` for the client: a published port, or a container's name and port."""
    port: int
    """The port inside the container (``containerSpec.grpcPorts[0]``)."""
    features: tuple[Mapping[str, Any], ...]
    """The model manifest's features, which name and type ModelInfer's input tensors."""


def manifest_features(model_dir: str | Path | None, port: int) -> tuple[Mapping[str, Any], ...]:
    """The features of the model a gRPC check on ``port`` sends; ``ValueError`` without the
    model directory or its manifest."""
    if model_dir is None:
        raise ValueError(
            f"gRPC port {port}: the gRPC rules need the model directory, whose "
            "model_manifest.json names and types ModelInfer's input tensors"
        )
    return tuple(artifact.read_manifest(model_dir)["features"])


@dataclass(frozen=True)
class Call:
    """One gRPC call and what came back, as a report quotes it."""

    method: str
    address: str
    sent: str
    code: grpc.StatusCode
    details: str
    elapsed_s: float
    answer: Any = None

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    @property
    def status(self) -> str:
        """The health status of an OK Check, else the call's status code, by name."""
        if self.ok and self.method == HEALTH_CHECK:
            return type(self.answer).ServingStatus.Name(self.answer.status)
        return self.code.name

    def request_text(self) -> str:
        return f"{self.method} on {self.address}: {self.sent}"

    def response_text(self) -> str:
        if not self.ok:
            return f"{self.code.name} {self.details!r} after {self.elapsed_s:.3f} s"
        return f"OK after {self.elapsed_s:.3f} s: {_quoted(self.answer)}"


def _tensors(tensors: Sequence[Any]) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)


def _quoted(message: Any) -> str:
    """A message in a line: an inference message by its tensors, others as text."""
    if isinstance(message, pb.ModelInferResponse):
        return f"ModelInferResponse with outputs {_tensors(message.outputs)}"
    text = text_format.MessageToString(message, as_one_line=True)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "..."


def _infer_text(request: pb.ModelInferRequest, what: str) -> str:
    return f"ModelInferRequest of {what}: inputs {_tensors(request.inputs)}"


@dataclass
class GrpcRules:
    """One run of the gRPC rules against one server (``checker.check_server`` drives it)."""

    target: GrpcTarget
    sample: Sample
    settings: CheckSettings
    watch: ServerWatch
    started: float
    """``time.monotonic()`` when the server was started."""
    latencies_s: list[float] = field(default_factory=list)
    """Of each ModelInfer answered OK."""
    channel: grpc.Channel = field(init=False)
    inference: pb_grpc.GRPCInferenceServiceStub = field(init=False)
    given: dict[str, RuleResult] = field(default_factory=dict)
    """The verdicts given so far, by rule."""
    answered: bool = False
    """Something answered on the port (beyond "unavailable")."""
    serving: bool = False
    """Check answered SERVING (in time or, for ``grpc-health``, too early)."""

    def __post_init__(self) -> None:
        limit = self.settings.max_request_bytes
        self.channel = grpc.insecure_channel(
            self.target.address,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                # while the port is still closed: retry every 0.1-1 s, not grpcio's up to 120 s
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)

    # calls -----------------------------------------------------------------------------------
    def _call(
        self, method: str, rpc: Callable[..., Any], request: Any, sent: str, timeout_s: float
    ) -> Call:
        started = time.monotonic()
        try:
            answer = rpc(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            self.answered = self.answered or code not in NOT_ANSWERED
            return Call(
                method, self.target.address, sent, code, details, time.monotonic() - started
            )
        self.answered = True
        elapsed = time.monotonic() - started
        return Call(method, self.target.address, sent, grpc.StatusCode.OK, "", elapsed, answer)

    def _check(self) -> Call:
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # the serve extra's, gRPC only

        check = health_pb2_grpc.HealthStub(self.channel).Check
        request = health_pb2.HealthCheckRequest(service="")
        return self._call(
            HEALTH_CHECK, check, request, HEALTH_REQUEST, self.settings.health_timeout_s
        )

    def _infer(self, request: pb.ModelInferRequest, what: str) -> Call:
        call = self._call(
            MODEL_INFER,
            self.inference.ModelInfer,
            request,
            _infer_text(request, what),
            self.settings.predict_timeout_s,
        )
        if call.ok:
            self.latencies_s.append(call.elapsed_s)
        return call

    def _infer_positions(self, positions: Sequence[int]) -> Call:
        instances = [self.sample.instances[index] for index in positions]
        request = request_from_instances(instances, self.target.features)
        return self._infer(request, f"{len(positions)} sample instances")

    def _record(self, *results: RuleResult) -> list[RuleResult]:
        self.given.update((result.rule, result) for result in results)
        return list(results)

    def _skip_rest(self, reason: str) -> list[RuleResult]:
        return self._record(
            *(skip_result(rule, reason) for rule in GRPC_RULES if rule not in self.given)
        )

    # rules -----------------------------------------------------------------------------------
    def start(self) -> list[RuleResult]:
        """``grpc-health`` and ``grpc-predict``: wait for SERVING, then ModelInfer at once."""
        health, call = self._wait_until_serving()
        if call is None:
            return self._record(health)
        first = self._infer_positions(self.first_request)
        if first.code == grpc.StatusCode.UNAVAILABLE and not self.watch.exited():
            later = self.watch.retry_until_ok(
                lambda: self._infer_positions(self.first_request), self.settings
            )
            if later is not None:
                waited, answered = later
                detail = (
                    f'Check on "" answered SERVING, but ModelInfer right after answered '
                    f"UNAVAILABLE {first.details!r} and OK only {waited:.2f} s later: the "
                    "health service says SERVING before the model is loaded"
                )
                consequence = VERTEX_WOULD["grpc-health-means-ready"]
                health = fail_result("grpc-health", detail, first, consequence)
                first = answered
        predict, _ = self.predictions(first, len(self.first_request))
        return self._record(health, predict)

    @property
    def first_request(self) -> list[int]:
        """The instances of the first ModelInfer, those of the first HTTP predict."""
        return self.sample.first_request(self.settings.max_batch_bytes)

    def _wait_until_serving(self) -> tuple[RuleResult, Call | None]:
        """Poll Check until SERVING (the rule passed so far, and that answer) or the deadline
        (the rule failed, ``None``); every other answer is noted with when it came first."""
        deadline = self.started + self.settings.startup_deadline_s
        seen: dict[str, float] = {}
        while True:
            call = self._check()
            seen.setdefault(call.status, time.monotonic() - self.started)
            if call.status == SERVING:
                self.serving = True
                before = [f"{status} from {at:.2f} s" for status, at in seen.items()][:-1]
                detail = f'Check on "" answered SERVING {seen[SERVING]:.2f} s from start'
                detail += f" (before that: {', '.join(before)})" if before else ""
                return pass_result("grpc-health", detail, call), call
            if call.code == grpc.StatusCode.UNIMPLEMENTED:
                detail = (
                    "no grpc.health.v1 service: Vertex's gRPC probe would fail (Check on "
                    f'"" answered UNIMPLEMENTED {call.details!r})'
                )
                return fail_result("grpc-health", self.watch.with_note(detail), call), None
            if self.watch.exited() or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval_s)
        return fail_result("grpc-health", self.watch.with_note(self._never(call)), call), None

    def _never(self, last: Call) -> str:
        """Why Check never answered SERVING, from its last answer."""
        if self.watch.exited():
            return f"{NEVER_SERVING} before the server process ended"
        window = f"the {self.settings.startup_deadline_s:g} s startup deadline"
        if last.code in NOT_ANSWERED:
            return (
                f"nothing answered gRPC on {self.target.address} (container port "
                f"{self.target.port}) within {window}: the server does not listen there "
                f"(it must serve gRPC on 0.0.0.0:{self.target.port}; this project's serving "
                f"image does with SERVING_GRPC_PORT={self.target.port} in env)"
            )
        if last.code == grpc.StatusCode.NOT_FOUND:
            return (
                'Check on "" answered NOT_FOUND until the end of '
                f"{window}: the health service has no status for the server as a whole "
                '(""), which Vertex\'s gRPC probe asks for'
            )
        return (
            f'Check on "" answered {last.status} instead of SERVING until the end of {window} '
            "(the model loads slower than the deadline, or never)"
        )

    def predictions(self, call: Call, count: int) -> tuple[RuleResult, list[Any] | None]:
        """The ``grpc-predict`` verdict on one ModelInfer for ``count`` instances, and its
        predictions when it passed."""
        if call.ok:
            try:
                predictions = predictions_from_response(call.answer)
            except ValueError as exc:
                detail = f"the answer is no Open Inference Protocol prediction: {exc}"
                return fail_result("grpc-predict", detail, call), None
            if len(predictions) != count:
                detail = f"{len(predictions)} predictions came back for {count} instances"
                return fail_result("grpc-predict", detail, call), None
            detail = f"answered OK: {count} predictions for {count} instances"
            return pass_result("grpc-predict", detail, call), predictions
        if call.code == grpc.StatusCode.UNIMPLEMENTED:
            detail = (
                f"Predict is not implemented: UNIMPLEMENTED {call.details!r} (the server offers "
                f"no ModelInfer of {INFERENCE_SERVICE})"
            )
        elif call.code == grpc.StatusCode.INTERNAL and SERIALIZE_FAILURE in call.details:
            returned = self._returned_type()
            detail = (
                f"the handler returned {returned} instead of ModelInferResponse (grpcio could "
                f"not serialize it and answered INTERNAL {call.details!r})"
            )
        else:
            detail = f"ModelInfer answered {call.code.name} {call.details!r}"
        return fail_result("grpc-predict", self.watch.with_note(detail), call), None

    def _returned_type(self) -> str:
        """What a handler returned instead of its response message, as grpcio's log line
        names it ("a list"), or "something" when the server's log does not say."""
        deadline = time.monotonic() + LOG_SETTLE_S
        while True:
            found = _RETURNED_TYPE.search(self.watch.logs())
            if found:
                return f"a {found.group(1)}"
            if self.watch.observer is None or time.monotonic() >= deadline:
                return "something"
            time.sleep(self.settings.poll_interval_s)

    def finish(self, skipped_because: str = "") -> list[RuleResult]:
        """The rules not given yet, and the channel closed: all skipped when
        ``skipped_because`` says why; else ``grpc-values``, ``grpc-bad-input``,
        ``grpc-reflection`` (where anything answered) and ``grpc-stays-up``, as far as the
        first two rules let them."""
        try:
            if skipped_because:
                return self._skip_rest(skipped_because)
            results = [self.reflection()] if self.answered else []
            if not self.serving:
                return self._record(*results) + self._skip_rest(NEVER_SERVING)
            if self._passed("grpc-predict"):
                results += [self.values(), self.bad_input()]
            results.append(self.stays_up())
            return self._record(*results) + self._skip_rest("a single ModelInfer already fails")
        finally:
            self.channel.close()

    def _passed(self, rule: str) -> bool:
        return rule in self.given and self.given[rule].passed

    def values(self) -> RuleResult:
        """``grpc-values``: the sample sent in every request shape, each answer compared."""
        if self.sample.expected is None:
            return skip_result("grpc-values", "no expected predictions given: shape only")
        comparisons = [self._compare(shape) for shape in self.settings.request_shapes]
        differed = [c for c in comparisons if c.differences]
        if not differed:
            return pass_result("grpc-values", agreement(comparisons, self.settings.rel_tol))
        detail = (
            "ModelInfer's predictions differ from the exported expectations: "
            f"{describe(self.sample, comparisons)}"
        )
        return fail_result("grpc-values", detail, differed[0].first_exchange)

    def _compare(self, shape: str) -> Comparison:
        comparison = Comparison(shape)
        expected = self.sample.expected or []
        for positions in self.sample.requests(shape, self.settings.max_batch_bytes):
            call = self._infer_positions(positions)
            result, predictions = self.predictions(call, len(positions))
            comparison.record(
                expected,
                positions,
                predictions,
                result.detail,
                call,
                rel_tol=self.settings.rel_tol,
                abs_tol=self.settings.abs_tol,
            )
        return comparison

    def bad_requests(self) -> list[tuple[str, pb.ModelInferRequest]]:
        """(what is wrong, request): the first instance with its first input of the other
        kind (a number for text, text for a number), and with an input the model has not."""
        request = request_from_instances(self.sample.instances[:1], self.target.features)
        wrong_type = pb.ModelInferRequest()
        wrong_type.CopyFrom(request)
        tensor = wrong_type.inputs[0]
        tensor.ClearField("contents")
        if tensor.datatype == "BYTES":
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.append(1.0)
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.append(b"not a number")
        unknown = pb.ModelInferRequest()
        unknown.CopyFrom(request)
        extra = unknown.inputs.add(name=UNKNOWN_INPUT, datatype="FP64", shape=[1])
        extra.contents.fp64_contents.append(1.0)
        return [
            (f"input {tensor.name!r} as {tensor.datatype}, the wrong type", wrong_type),
            (f"an unknown input {UNKNOWN_INPUT!r}", unknown),
        ]

    def bad_input(self) -> RuleResult:
        """``grpc-bad-input``: each bad request must get INVALID_ARGUMENT."""
        calls = [(what, self._infer(request, what)) for what, request in self.bad_requests()]
        wrong = [
            (what, call) for what, call in calls if call.code != grpc.StatusCode.INVALID_ARGUMENT
        ]
        if not wrong:
            answers = "; ".join(f"{what}: {call.details!r}" for what, call in calls)
            return pass_result(
                "grpc-bad-input", f"answered INVALID_ARGUMENT to each: {answers}", calls[0][1]
            )
        detail = "; ".join(
            f"answered {call.code.name} {call.details!r} to {what}, not INVALID_ARGUMENT"
            for what, call in wrong
        )
        first = wrong[0][1]
        consequence = VERTEX_WOULD["grpc-accepted" if first.ok else "grpc-bad-input"]
        return fail_result("grpc-bad-input", self.watch.with_note(detail), first, consequence)

    def reflection(self) -> RuleResult:
        """``grpc-reflection``: ServerReflectionInfo lists the services."""
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # serve extra's

        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = self._call(
            REFLECTION,
            lambda message, timeout: next(
                stub.ServerReflectionInfo(iter([message]), timeout=timeout)
            ),
            request,
            'ServerReflectionRequest(list_services="")',
            self.settings.health_timeout_s,
        )
        if not call.ok:
            detail = (
                "no server reflection: ServerReflectionInfo answered "
                f"{call.code.name} {call.details!r}"
            )
            return fail_result("grpc-reflection", detail, call)
        names = sorted(service.name for service in call.answer.list_services_response.service)
        return pass_result("grpc-reflection", f"lists the services {names}", call)

    def stays_up(self) -> RuleResult:
        """``grpc-stays-up``: Check once more, after every other gRPC request."""
        call = self._check()
        if call.status == SERVING and not self.watch.exited():
            return pass_result("grpc-stays-up", 'Check on "" still answered SERVING', call)
        detail = (
            f'after the gRPC requests, Check on "" answered {call.status}: the server is no '
            "longer up"
        )
        return fail_result("grpc-stays-up", self.watch.with_note(detail), call)

"""Fuzzing the predict route of a real server process with hypothesis-generated raw bodies.

Every generated case is one HTTP request (raw bytes and a content type) together with what
the server must answer: the allowed status codes and, for a client mistake, a fragment the
``error`` message must contain (the field, the instance index). Most cases start from valid
instances and break exactly one thing, so the expected message is known without a second
implementation of the validation rules. Wild cases (random bytes, arbitrary JSON) only have
to get a 4xx with a JSON ``error``.

Afterwards the server must be unchanged: the same worker processes, no ERROR log line, and
health still 200. ``RELIABILITY_FUZZ_EXAMPLES`` changes the number of bodies (default 10,000).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving_image.server import artifact
from serving_image.server.validation import MAX_ABS_NUMBER, Feature, Schema
from tests.support.servers import launch_server

if TYPE_CHECKING:
    from tests.reliability.figures import Figures
    from tests.support.servers import LaunchedServer

pytestmark = pytest.mark.reliability

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "10000"))
MAX_BODY_BYTES = 100_000
"""The fuzzed server's SERVING_MAX_BODY_BYTES: small, so that oversized bodies are cheap."""
RAW = "\x00raw\x00"
"""Placeholder value replaced by a raw JSON fragment after encoding (NaN, 1e400, deep lists)."""
JSON_CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "Application/JSON")
OTHER_CONTENT_TYPES = (
    None,
    "",
    "text/plain",
    "text/json",
    "application/jsonl",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
)


@dataclass(frozen=True)
class Case:
    """One request and what the server must answer to it."""

    body: bytes
    content_type: str | None = "application/json"
    statuses: frozenset[int] = frozenset({400})
    fragment: str = ""
    """Must appear in the 4xx ``error`` message."""
    instance: int | None = None
    """The ``instance`` index the 4xx body must carry (None: the body must not name one)."""
    check_instance: bool = True
    """False for wild cases, whose fault is not known in advance."""
    count: int = 0
    """Number of instances, for a 200."""


def encode(payload: Any, raw: str = "", ascii_only: bool = True) -> bytes:
    """JSON bytes of ``payload``, the ``RAW`` placeholder (if any) replaced by ``raw``."""
    text = json.dumps(payload, ensure_ascii=ascii_only, allow_nan=False)
    if raw:
        text = text.replace(json.dumps(RAW), raw, 1)
    return text.encode("utf-8", "surrogatepass")


# --- values ------------------------------------------------------------------------------------
NUMBERS = st.integers(-(10**30), 10**30) | st.floats(-MAX_ABS_NUMBER, MAX_ABS_NUMBER)
INTEGERS = st.integers(-(2**63), 2**64 - 1)
"""Integers orjson reads as integers; it reads larger ones as floats, up to ~1e308."""
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | st.text()
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def nested_lists(min_depth: int, max_depth: int) -> st.SearchStrategy[str]:
    """Raw nested-list literals (written by hand: Python's json recurses, orjson stops at 254)."""
    return st.integers(min_depth, max_depth).map(lambda depth: "[" * depth + "]" * depth)


DEEP_LISTS = nested_lists(1, 1000)
"""Deep, but within orjson's reading limit of 1024 levels (the body adds 3)."""
TOO_DEEP_LISTS = nested_lists(1022, 5000)
OUT_OF_RANGE = (
    st.floats(min_value=MAX_ABS_NUMBER, exclude_min=True, allow_infinity=False)
    | st.integers(10**31, 10**300)
).flatmap(lambda x: st.sampled_from([x, -x]))
INVALID_NUMBER_LITERALS = st.sampled_from(
    ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999", "01", "1.", ".5", "+1", "0x10"]
)


def valid_value(feature: Feature) -> st.SearchStrategy[Any]:
    values = NUMBERS if feature.numeric else st.text()
    return values | st.none() if feature.nullable else values


def wrong_value(feature: Feature) -> st.SearchStrategy[tuple[Any, str]]:
    """``(value, raw)``: a value of a type the feature refuses (raw: a deep list literal)."""
    others = st.text() if feature.numeric else NUMBERS
    wrong = (
        others | st.booleans() | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(), SCALARS)
    )
    if not feature.nullable:
        wrong |= st.none()
    return wrong.map(lambda value: (value, "")) | DEEP_LISTS.map(lambda raw: (RAW, raw))


# --- cases -------------------------------------------------------------------------------------
class Generator:
    """The case strategies for one model schema."""

    def __init__(self, schema: Schema) -> None:
        self.features = schema.features
        self.names = schema.names
        self.outputs = schema.outputs
        self.row = st.fixed_dictionaries({f.name: valid_value(f) for f in self.features})

    def cases(self) -> st.SearchStrategy[Case]:
        return st.one_of(
            self.valid(),
            self.oversized(),
            self.instance_fault(),
            self.instance_fault(),  # twice the weight: the richest family
            self.invalid_json(),
            self.bad_parameters(),
            self.bad_top_level(),
            self.wrong_content_type(),
            st.binary(max_size=200).map(lambda body: Case(body, check_instance=False)),
            ANY_JSON.map(lambda v: Case(encode(v), statuses=frozenset({200, 400}),
                                        check_instance=False)),
        )  # fmt: skip

    def instances(self, rows: list[dict[str, Any]], as_arrays: bool) -> list[Any]:
        return [[row[name] for name in self.names] for row in rows] if as_arrays else rows

    def valid(self) -> st.SearchStrategy[Case]:
        """Valid requests: 1-10 instances in either form, optional parameters, unknown
        top-level keys (ignored), any JSON content type; 200 with one prediction each."""

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            rows = draw(st.lists(self.row, min_size=1, max_size=10))
            payload: dict[str, Any] = {"instances": self.instances(rows, draw(st.booleans()))}
            parameters = st.fixed_dictionaries(
                {}, optional={"output": st.sampled_from(self.outputs)}
            )
            if draw(st.booleans()):
                payload["parameters"] = draw(st.none() | parameters)
            extra = st.text(max_size=8).filter(lambda key: key not in ("instances", "parameters"))
            payload.update(draw(st.dictionaries(extra, ANY_JSON, max_size=2)))
            return Case(
                encode(payload, ascii_only=draw(st.booleans())),
                draw(st.sampled_from(JSON_CONTENT_TYPES)),
                frozenset({200}),
                count=len(rows),
            )

        return build()

    def oversized(self) -> st.SearchStrategy[Case]:
        """One valid instance repeated to just under or over the limit: 200 or 413."""

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            (instance,) = self.instances([draw(self.row)], draw(st.booleans()))
            item = encode(instance)
            fits = max(1, (MAX_BODY_BYTES - 20) // (len(item) + 1))
            count = draw(st.sampled_from([fits, fits + 2, 3 * fits]))
            body = b'{"instances":[' + b",".join([item] * count) + b"]}"
            if len(body) > MAX_BODY_BYTES:
                return Case(body, statuses=frozenset({413}), fragment=f"exceeds {MAX_BODY_BYTES}")
            return Case(body, statuses=frozenset({200}), count=count)

        return build()

    def instance_fault(self) -> st.SearchStrategy[Case]:
        """Valid instances with exactly one fault in instance ``i``: 400 naming ``i``."""

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            rows = draw(st.lists(self.row, min_size=1, max_size=8))
            index = draw(st.integers(0, len(rows) - 1))
            as_arrays = draw(st.booleans())
            instances = self.instances(rows, as_arrays)
            kinds = ["type", "range", "form", "length" if as_arrays else "keys"]
            kind = draw(st.sampled_from(kinds))
            raw = ""
            if kind in ("type", "range"):
                numeric = [f for f in self.features if f.numeric]
                feature = draw(st.sampled_from(self.features if kind == "type" else numeric))
                if kind == "type":
                    value, raw = draw(wrong_value(feature))
                    fragment = f"instances[{index}]: feature {feature.name!r} expects"
                else:
                    value = draw(OUT_OF_RANGE)
                    fragment = f"instances[{index}]: feature {feature.name!r} is "
                key = self.names.index(feature.name) if as_arrays else feature.name
                instances[index][key] = value
            elif kind == "form":
                other = st.just({} if as_arrays else []) if index else st.nothing()
                instances[index] = draw(SCALARS | other)
                fragment = f"instances[{index}] is "
            elif kind == "length":
                size = draw(
                    st.integers(0, 2 * len(self.names)).filter(lambda n: n != len(self.names))
                )
                instances[index] = (instances[index] * 2)[:size]
                fragment = f"instances[{index}] has {size} values"
            elif draw(st.booleans()):  # "keys": an unknown feature
                unknown = draw(st.text().filter(lambda key: key not in self.names))
                instances[index][unknown] = draw(SCALARS)
                fragment = f"instances[{index}] has unknown feature(s) [{unknown!r}]"
            else:  # "keys": a missing feature
                name = draw(st.sampled_from([f.name for f in self.features if f.required]))
                del instances[index][name]
                fragment = f"instances[{index}] is missing feature(s) [{name!r}]"
            body = encode({"instances": instances}, raw, ascii_only=draw(st.booleans()))
            return Case(body, fragment=fragment, instance=index)

        return build()

    def invalid_json(self) -> st.SearchStrategy[Case]:
        """Truncated bodies, NaN/Infinity and other invalid number literals, nesting deeper
        than orjson reads (1024 levels), invalid UTF-8."""

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            rows = draw(st.lists(self.row, min_size=1, max_size=5))
            instances = self.instances(rows, as_arrays := draw(st.booleans()))
            kind = draw(st.sampled_from(["truncated", "literal", "too deep", "utf-8"]))
            raw = ""
            if kind == "truncated":
                body = encode({"instances": instances})
                body = body[: draw(st.integers(0, len(body) - 1))]
            else:
                feature = draw(st.sampled_from([f for f in self.features if f.numeric]))
                value = RAW if kind != "utf-8" else draw(st.text(min_size=1)) + "\ud800"
                key = self.names.index(feature.name) if as_arrays else feature.name
                instances[draw(st.integers(0, len(rows) - 1))][key] = value
                if kind != "utf-8":
                    literals = INVALID_NUMBER_LITERALS if kind == "literal" else TOO_DEEP_LISTS
                    raw = draw(literals)
                body = encode({"instances": instances}, raw, ascii_only=False)
            return Case(body, fragment="is not valid JSON")

        return build()

    def bad_parameters(self) -> st.SearchStrategy[Case]:
        """``parameters`` of the wrong shape: not an object, unknown keys, a wrong output."""

        @st.composite
        def build(draw: st.DrawFn) -> Case:
            instances = self.instances(draw(st.lists(self.row, min_size=1, max_size=3)), False)
            kind = draw(st.sampled_from(["shape", "unknown", "output"]))
            if kind == "shape":
                parameters = draw(ANY_JSON.filter(lambda v: v is not None and type(v) is not dict))
                fragment = "'parameters' must be an object"
            elif kind == "unknown":
                keys = st.text().filter(lambda key: key != "output")
                parameters = draw(st.dictionaries(keys, ANY_JSON, min_size=1, max_size=3))
                fragment = "unknown parameter(s)"
            else:
                parameters = {"output": draw(ANY_JSON.filter(lambda v: v not in self.outputs))}
                fragment = "parameters.output must be one of"
            return Case(
                encode({"instances": instances, "parameters": parameters}), fragment=fragment
            )

        return build()

    def bad_top_level(self) -> st.SearchStrategy[Case]:
        """Not an object, no ``instances``, ``instances`` not a list or empty."""
        not_object = ANY_JSON.filter(lambda v: type(v) is not dict)
        no_instances = st.dictionaries(st.text().filter(lambda k: k != "instances"), ANY_JSON)
        not_a_list = ANY_JSON.filter(lambda v: type(v) is not list)
        return st.one_of(
            not_object.map(lambda v: Case(encode(v), fragment="must be a JSON object")),
            no_instances.map(lambda v: Case(encode(v), fragment="no 'instances' list")),
            not_a_list.map(lambda v: Case(encode({"instances": v}), fragment="must be a list")),
            st.just(Case(encode({"instances": []}), fragment="'instances' is empty")),
        )

    def wrong_content_type(self) -> st.SearchStrategy[Case]:
        """A valid body with a content type other than JSON: 415."""
        types = st.sampled_from(OTHER_CONTENT_TYPES) | st.from_regex(
            r"\A[a-z]{1,12}/[a-z0-9.+-]{1,16}\Z"
        ).filter(lambda t: t != "application/json")
        rows = st.lists(self.row, min_size=1, max_size=3)
        return st.builds(
            lambda rows, content_type: Case(
                encode({"instances": rows}),
                content_type,
                frozenset({415}),
                fragment="Content-Type must be application/json",
            ),
            rows,
            types,
        )


# --- the test ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(penguins_model_dir: Path) -> Iterator[LaunchedServer]:
    """The penguins model behind two workers with a 100 kB body limit."""
    server = launch_server(
        penguins_model_dir, {"SERVING_WORKERS": "2", "SERVING_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def check_answer(case: Case, response: httpx.Response) -> None:
    """The response is one the case allows, and a 4xx names the fault."""
    assert response.status_code in case.statuses, (case, response.text[:500])
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    if response.status_code == 200:
        assert len(body["predictions"]) == case.count
        return
    error = body["error"]
    assert type(error) is str and error, body
    assert case.fragment in error, (case, error)
    if "instance" in body:
        assert f"instances[{body['instance']}]" in error, body
    if case.check_instance:
        assert body.get("instance") == case.instance, (case, body)


def test_fuzzed_bodies_get_4xx_naming_the_fault_and_never_hurt_the_server(
    fuzz_server: LaunchedServer, penguins_model_dir: Path, figures: Figures
) -> None:
    schema = Schema.from_manifest(artifact.read_manifest(penguins_model_dir))
    statuses: Counter[int] = Counter()
    workers = fuzz_server.worker_pids()
    client = httpx.Client(base_url=fuzz_server.url(""), timeout=30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=Generator(schema).cases())
    def send(case: Case) -> None:
        headers = {} if case.content_type is None else {"content-type": case.content_type}
        response = client.post(fuzz_server.predict_route, content=case.body, headers=headers)
        statuses[response.status_code] += 1
        check_answer(case, response)

    started = time.monotonic()
    with client:
        send()
    seconds = time.monotonic() - started
    severities = Counter(entry["severity"] for entry in fuzz_server.logs())
    figures["fuzzing the predict route"].update(
        {
            "bodies sent": sum(statuses.values()),
            "status codes": dict(sorted(statuses.items())),
            "5xx": sum(n for code, n in statuses.items() if code >= 500),
            "bodies per second": round(sum(statuses.values()) / seconds),
            "ERROR log lines": severities["ERROR"] + severities["CRITICAL"],
            "WARNING log lines": severities["WARNING"],
        }
    )
    assert sum(statuses.values()) >= EXAMPLES
    assert fuzz_server.worker_pids() == workers, "a worker died or was replaced"
    errors = [e for e in fuzz_server.logs() if e["severity"] in ("ERROR", "CRITICAL")]
    assert not errors, errors[:3]
    assert fuzz_server.stderr == []
    assert fuzz_server.health().status_code == 200

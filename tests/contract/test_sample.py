"""How a check splits its sample into requests, and how it tells what differed."""

import pytest

from components.contract.sample import (
    BATCH,
    REVERSED,
    SINGLE,
    Comparison,
    Sample,
    describe,
    json_body,
    table,
)

OBJECTS = [{"x": float(i)} for i in range(4)]
LISTS = [[float(i)] for i in range(2)]
KINDS = ["evaluation", "evaluation", "missing:x", "max:x", "missing:x as list", "max:x as list"]


def sample() -> Sample:
    return Sample.of([*OBJECTS, *LISTS], ["p"] * 6, KINDS)


@pytest.mark.parametrize(
    ("shape", "requests"),
    [
        (BATCH, [[0, 1], [2, 3], [4, 5]]),  # evaluation rows, edge objects, edge lists
        (SINGLE, [[0], [1], [2], [3], [4], [5]]),
        (REVERSED, [[5, 4], [3, 2], [1, 0]]),
    ],
)
def test_each_shape_groups_by_form_and_kind(shape: str, requests: list[list[int]]):
    assert sample().requests(shape, 1_000_000) == requests


def test_a_batch_is_split_to_stay_within_the_body_limit():
    rows = [{"x": "a" * 100} for _ in range(10)]
    limit = 350
    requests = Sample.of(rows).requests(BATCH, limit)

    assert [i for request in requests for i in request] == list(range(10))
    assert len(requests) > 1
    body_sizes = [len(Sample.of(rows).body(request)) for request in requests]
    assert max(body_sizes) <= limit, body_sizes


def test_lists_are_optional_only_beside_objects():
    assert sample().optional([4, 5]) and not sample().optional([3, 4])
    assert not Sample.of(LISTS).optional([0, 1])  # a list-only sample: lists are the form


def test_describe_names_instances_right_in_a_batch_and_wrong_alone():
    batch, single = Comparison(BATCH, compared=6), Comparison(SINGLE, compared=6)
    single.differences = {0: "predictions[0]: expected 1, got 2", 2: "predictions[2]: ..."}
    batch.differences = {2: "predictions[2]: ..."}

    text = describe(sample(), [batch, single])

    assert text.startswith("1 of the instances were right in a batch and wrong alone")
    assert "in batches: 1 of 6 differ (kinds missing:x; first: instance 2 (missing:x)" in text
    assert "each instance alone: 2 of 6 differ (kinds evaluation, missing:x;" in text


def test_the_table_counts_matches_per_kind_and_marks_refused_forms():
    batch = Comparison(BATCH, compared=4, differences={3: "x"}, refused={4: "400", 5: "400"})

    rows = table(sample(), [batch])

    assert rows[0] == "| kind of instance | in batches |"
    assert "| evaluation | 2/2 |" in rows and "| max:x | 0/1 |" in rows
    assert "| missing:x as list | 0/1 (refused) |" in rows


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"instances": []}, "at least one sample instance"),
        ({"instances": [1], "expected": [1, 2]}, "2 expected predictions for 1 instances"),
        ({"instances": [1], "kinds": ["a", "b"]}, "2 kinds for 1 instances"),
    ],
)
def test_an_inconsistent_sample_is_refused(arguments: dict, message: str):
    with pytest.raises(ValueError, match=message):
        Sample.of(**arguments)


def test_json_body_refuses_nan():
    with pytest.raises(ValueError):
        json_body({"x": float("nan")})

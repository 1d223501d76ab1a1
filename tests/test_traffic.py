"""Traffic splits with Vertex AI's rules: the arithmetic is meant to be the aiplatform SDK's own
(``Endpoint._allocate_traffic``, ``_unallocate_traffic``, the reference here for any split),
every split it makes is one Vertex accepts, and
every split Vertex would refuse is refused with the rule it breaks."""

from __future__ import annotations

import pytest
from google.cloud import aiplatform
from hypothesis import example, given
from hypothesis import strategies as st

from components import traffic
from components.traffic import TrafficSplitError


@st.composite
def splits(draw: st.DrawFn, min_models: int = 1) -> dict[str, int]:
    """A split Vertex accepts: 1 to 8 deployed models (ids as Vertex's, some at 0)."""
    count = draw(st.integers(min_models, 8))
    ids = draw(
        st.lists(st.integers(1, 10**18).map(str), min_size=count, max_size=count, unique=True)
    )
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, 100]
    return {key: bounds[n + 1] - bounds[n] for n, key in enumerate(ids)}


@given(splits(), st.integers(0, 100))
@example({"A": 30, "B": 70}, 10)
@example({"A": 71, "B": 29}, 0)
def test_a_new_models_share_is_taken_as_the_sdk_takes_it(split, percent) -> None:
    expected = aiplatform.Endpoint._allocate_traffic(dict(split), percent)

    assert traffic.with_new_model(split, percent) == expected


@given(splits(), st.integers(0, 100))
def test_a_new_models_split_is_one_vertex_accepts(split, percent) -> None:
    result = traffic.with_new_model(split, percent)

    assert traffic.check_split(result, [*split, traffic.DEPLOYING]) == result
    assert result[traffic.DEPLOYING] == percent
    for key, share in split.items():  # the others keep their proportions, within 1%
        if percent < 100:
            assert abs(result[key] - share * (100 - percent) / 100) < 1 + 1e-9
        else:
            assert key not in result  # at 100 the others are dropped: no traffic


@given(splits(), st.integers(0, 7))
@example({"A": 21, "B": 29, "C": 50}, 2)
@example({"A": 42, "B": 58, "C": 0}, 2)
def test_an_undeployed_models_share_goes_back_as_the_sdk_gives_it(split, index) -> None:
    gone = list(split)[index % len(split)]
    expected = aiplatform.Endpoint._unallocate_traffic(dict(split), gone)

    assert traffic.without_model(split, gone) == expected


@given(splits(), st.integers(0, 7))
def test_an_undeployed_models_split_is_one_vertex_accepts(split, index) -> None:
    gone = list(split)[index % len(split)]
    left = 100 - split[gone]

    result = traffic.without_model(split, gone)

    assert result[gone] == 0 and set(result) == set(split)
    if left:
        assert traffic.check_split(result, split) == result
        for key, share in split.items():  # the others keep their proportions, within 1%
            if key != gone:
                assert abs(result[key] - share * 100 / left) < 1 + 1e-9
    else:
        assert result == {key: 0 for key in split}  # nothing left to give back to


def test_without_the_only_model_with_traffic_the_others_stay_at_zero() -> None:
    assert traffic.without_model({"a": 100, "b": 0}, "a") == {"b": 0, "a": 0}
    assert traffic.without_model({"a": 100}, "a") == {"a": 0}


@pytest.mark.parametrize(
    ("split", "percent", "expected"),
    [
        ({}, 100, {"0": 100}),
        ({"a": 100}, 10, {"a": 90, "0": 10}),
        ({"a": 50, "b": 50}, 25, {"a": 38, "b": 37, "0": 25}),  # 37.5 each: one gets the rest
        ({"a": 60, "b": 40}, 100, {"0": 100}),
    ],
)
def test_with_new_model_examples(split, percent, expected) -> None:
    assert traffic.with_new_model(split, percent) == expected


@pytest.mark.parametrize("percent", [-1, 101])
def test_a_new_share_outside_0_to_100_is_refused(percent) -> None:
    with pytest.raises(TrafficSplitError, match=f"0 to 100 percent, not {percent}"):
        traffic.with_new_model({"a": 100}, percent)


@pytest.mark.parametrize(
    ("split", "deployed", "message"),
    [
        ({"c": 100}, ["a", "b"], "names 'c', which is not deployed on the endpoint "
         r"\(deployed: a, b\)"),
        ({"c": 100}, [], r"\(deployed: none\)"),
        ({"a": True}, ["a"], "a=True is not a number"),
        ({"a": None}, ["a"], "a=None is not a number"),
        ({"a": "ninety"}, ["a"], "a='ninety' is not a number"),
        ({"a": 99.5, "b": 0.5}, ["a", "b"], "a=99.5: each share is a whole percent from 0 to 100"),
        ({"a": 101}, ["a"], "a=101: each share is a whole percent from 0 to 100"),
        ({"a": -10, "b": 110}, ["a", "b"], "a=-10: each share is a whole percent"),
        ({"a": 90}, ["a", "b"], "a=90 adds up to 90%, not 100%: Vertex refuses"),
        ({}, ["a"], r"\(empty\) adds up to 0%, not 100%"),
    ],
)  # fmt: skip
def test_a_split_vertex_would_refuse_names_the_rule(split, deployed, message) -> None:
    with pytest.raises(TrafficSplitError, match=message):
        traffic.check_split(split, deployed)


def test_check_split_gives_whole_numbers() -> None:
    checked = traffic.check_split({"a": "90", "b": 10.0}, ["a", "b", "c"])

    assert checked == {"a": 90, "b": 10}  # "c" is missing: it gets no traffic
    assert all(type(share) is int for share in checked.values())
    assert traffic.check_split({}, []) == {}  # nothing deployed: the split is empty


@given(splits())
def test_format_and_parse_are_a_round_trip(split) -> None:
    text = traffic.format_split(split)

    assert traffic.parse_split(text) == split
    shares = [int(part.split("=")[1]) for part in text.split(",")]
    assert shares == sorted(shares, reverse=True)  # largest share first


def test_parse_split_reads_spaces_and_empty_parts() -> None:
    assert traffic.parse_split(" 1234 = 90 , 5678=10,") == {"1234": 90, "5678": 10}
    assert traffic.format_split({}) == "(empty)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1234", "part '1234': write DEPLOYED_MODEL_ID=PERCENT"),
        ("=90", "part '=90': write DEPLOYED_MODEL_ID=PERCENT"),
        ("1234=9.5", "part '1234=9.5'"),
        ("1234=-5", "part '1234=-5'"),
        ("", "an empty traffic split"),
        (" , ", "an empty traffic split"),
    ],
)
def test_parse_split_refusals(text, message) -> None:
    with pytest.raises(TrafficSplitError, match=message):
        traffic.parse_split(text)


def test_only_gives_one_model_everything() -> None:
    assert traffic.only("b", ["a", "b"]) == {"a": 0, "b": 100}
    assert traffic.only("new", ["a"]) == {"a": 0, "new": 100}  # named even if not listed
    assert traffic.check_split(traffic.only("b", ["a", "b"]), ["a", "b"])


@given(splits())
def test_serving_leaves_out_the_models_at_zero(split) -> None:
    serving = traffic.serving(split)

    assert serving == {key: share for key, share in split.items() if share}
    assert sum(serving.values()) == 100 and 0 not in serving.values()

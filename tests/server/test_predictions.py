"""Comparing predictions with a tolerance: the server's self-check and the contract check."""

from typing import Any

import pytest

from serving_image.server.predictions import json_difference


@pytest.mark.parametrize(
    ("expected", "actual", "difference"),
    [
        ({"a": [1, 2.0]}, {"a": [1.0, 2.0000000001]}, None),
        (0.0, 1e-12, None),
        ([1, 2], [1, 2, 3], "predictions: expected 2 elements, got 3"),
        ({"a": 1}, {"b": 1}, "predictions: keys differ (missing ['a'], unexpected ['b'])"),
        (True, 1, "predictions: expected true, got 1"),
        ("Adelie", "Gentoo", 'predictions: expected "Adelie", got "Gentoo"'),
        ([{"p": 0.5}], [{"p": 0.6}], "predictions[0].p: expected 0.5, got 0.6"),
        ([None], [0], "predictions[0]: expected null, got 0"),
    ],
)
def test_json_difference_compares_numbers_with_tolerance_and_names_the_path(
    expected: Any, actual: Any, difference: str | None
):
    assert json_difference(expected, actual, path="predictions") == difference

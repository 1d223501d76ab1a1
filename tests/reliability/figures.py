"""pytest plugin: the reliability tests record their figures; the terminal summary prints them.

A test takes the session-scoped ``figures`` fixture and sets lines under a heading, e.g.
``figures["fuzzing"]["bodies sent"] = 10000``; after the run, pytest's terminal summary
(also in CI logs) prints every heading with its lines, in the order they were recorded.
Registered from ``conftest.py`` with ``pytest_plugins``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

Figures = defaultdict[str, dict[str, Any]]
FIGURES_KEY = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    """Heading -> {figure name: value}, printed in the terminal summary."""
    return pytestconfig.stash.setdefault(FIGURES_KEY, defaultdict(dict))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    recorded = config.stash.get(FIGURES_KEY, None)
    if not recorded:
        return
    terminalreporter.section("reliability figures")
    for heading, lines in recorded.items():
        terminalreporter.write_line(f"{heading}:")
        width = max(map(len, lines), default=0)
        for name, value in lines.items():
            terminalreporter.write_line(f"  {name:<{width}}  {value}")

"""The rules' report: what a person and KFP read."""

import json

import pytest

from components.contract import (
    CONTRACT,
    HYGIENE,
    LEVELS,
    RULES,
    VERTEX_WOULD,
    ContractReport,
    ContractViolation,
    RuleResult,
    explain_exit,
)


@pytest.mark.parametrize(
    ("status", "logs", "says"),
    [
        (1, "ModuleNotFoundError: No module named 'sklearn'\n", "No module named 'sklearn'"),
        (0, "done\n", "must start an HTTP server in the foreground"),
        (137, "", "SIGKILL; out of memory?"),
        (2, "usage: server\n", "see its last log lines"),
    ],
)
def test_explain_exit_reads_the_cause_from_the_logs(status: int, logs: str, says: str):
    note = explain_exit(status, logs)
    assert note.startswith(f"The container exited with status {status}: ")
    assert says in note
    assert note.endswith(logs.strip() or "(no output)")


def test_in_process_mode_the_exit_names_the_process_and_this_environment() -> None:
    note = explain_exit(1, "ModuleNotFoundError: No module named 'uvicorn'\n", process_mode=True)
    assert note.startswith("The server process exited with status 1: ")
    assert "missing from this environment" in note and "pip install '.[serve]'" in note
    assert "image" not in note and "Dockerfile" not in note and "container" not in note


def test_report_metrics_are_plain_floats_for_kfp():
    report = ContractReport("t", {}, [RuleResult("health", False, "x")], startup_s=1.23456)
    metrics = report.metrics()
    assert metrics == {
        "passed": 0.0,
        "rules_passed": 0.0,
        "rules_failed": 1.0,
        "rules_warned": 0.0,
        "rules_skipped": 0.0,
        "startup_s": 1.235,
    }
    assert json.dumps(metrics)


def test_every_rule_has_a_level_and_only_what_vertex_tolerates_is_hygiene():
    assert set(LEVELS) == set(RULES)
    assert {rule for rule, level in LEVELS.items() if level == HYGIENE} == {
        "bad-json", "no-instances", "wrong-feature", "oversize", "sigterm", "edge-errors",
        "grpc-bad-input", "grpc-reflection",
    }  # fmt: skip
    assert set(LEVELS.values()) == {CONTRACT, HYGIENE}
    assert set(RULES) - {"bad-json", "no-instances", "wrong-feature"} <= set(VERTEX_WOULD)


@pytest.mark.parametrize(
    ("rule", "strict", "verdict", "passed"),
    [
        ("health", False, "FAIL", False),
        ("health", True, "FAIL", False),
        ("no-instances", False, "WARN", True),
        ("no-instances", True, "FAIL", False),
    ],
)
def test_a_failed_hygiene_rule_warns_unless_strict(
    rule: str, strict: bool, verdict: str, passed: bool
):
    failed = RuleResult(rule, False, "answered 500")
    report = ContractReport("image", {}, [RuleResult("liveness", True, "ok"), failed])
    report.strict = strict

    assert failed.verdict(strict) == verdict
    assert report.passed is passed
    assert [r.rule for r in report.violations] == ([] if passed else [rule])
    assert [r.rule for r in report.warnings] == ([rule] if passed else [])
    assert report.metrics()["rules_warned"] == float(passed)


def test_a_strict_violation_says_it_is_hygiene_not_the_contract():
    report = ContractReport("image", {}, [RuleResult("oversize", False, "reset")], strict=True)

    assert str(ContractViolation(report)).startswith(
        "image fails hygiene rules that Vertex tolerates (checked strictly) (1 of 1 rules failed)"
    )
    assert report.verdict() == "FAIL (strict): image fails hygiene rules (oversize)"

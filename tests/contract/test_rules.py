"""The rules' report: what a person and KFP read."""

import json

import pytest

from components.contract import (
    ContractReport,
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


def test_report_metrics_are_plain_floats_for_kfp():
    report = ContractReport("t", {}, [RuleResult("health", False, "x")], startup_s=1.23456)
    metrics = report.metrics()
    assert metrics == {
        "passed": 0.0,
        "rules_passed": 0.0,
        "rules_failed": 1.0,
        "rules_skipped": 0.0,
        "startup_s": 1.235,
    }
    assert json.dumps(metrics)

"""What a contract-check component writes: the report, the metrics and, on a pass only, the
``UnmanagedContainerModel`` that upload reads (kfp's artifacts, used through their ``path``,
``log_metric``, ``uri`` and ``metadata``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.contract.rules import ContractReport, ContractViolation


def publish(
    report: ContractReport,
    metadata: Mapping[str, Any] | None,
    *,
    report_file: str,
    metrics: Any,
    container_model: Any,
    model_uri: str,
) -> None:
    """Print the verdict, write the Markdown report and log the metrics; then, on a pass,
    fill ``container_model`` (the model's URI, the ``containerSpec`` metadata).

    Raises:
        ContractViolation: ``metadata`` is ``None``: the check failed, nothing for upload.
    """
    print(report.verdict())
    Path(report_file).write_text(report.to_markdown(), encoding="utf-8")
    for name, value in report.metrics().items():
        metrics.log_metric(name, value)
    if metadata is None:
        raise ContractViolation(report)
    container_model.uri = model_uri
    container_model.metadata.update(metadata)

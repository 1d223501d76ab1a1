"""capacity.json round-trips, the Markdown carries the table and the plot, the PNG is a PNG,
and the metrics are the document's numbers."""

import base64
import io
import json
import re
from pathlib import Path

from PIL import Image

from components.capacity import (
    STARTUP_WINDOW_S,
    batch_advice,
    capacity_document,
    deploy_advice,
    markdown,
    metrics,
    plot_png,
    read_capacity,
    write_report,
)
from components.capacity.machines import GIB
from components.capacity.report import PNG_NAME, PNG_SIGNATURE
from tests.capacity import capacity, step

SLO_MS = 100.0
MEASURED = capacity(
    [
        step(1, 40.0, 30.0),
        step(2, 75.0, 45.0),
        step(4, 120.0, 80.0, cpu_share=0.9),
        step(8, 130.0, 210.0),
        step(16, 90.0, None, errors=40),
    ]
)


def full_document(measured=MEASURED, **kwargs):
    deploy = deploy_advice(measured, 300.0, latency_slo_ms=SLO_MS)
    batch = batch_advice(
        measured,
        instance_bytes=500,
        instances_total=2_000_000,
        deadline_minutes=90,
        max_body_bytes=1_500_000,
    )
    return (
        capacity_document(measured, latency_slo_ms=SLO_MS, deploy=deploy, batch=batch, **kwargs),
        deploy,
        batch,
    )


def test_the_json_round_trips() -> None:
    document, deploy, batch = full_document()
    again = json.loads(json.dumps(document))
    assert again == document
    assert read_capacity(again) == MEASURED
    assert again["deploy"] == deploy.as_dict() and again["batch"] == batch.as_dict()
    assert again["best_concurrency"] == 4 and again["no_best_step_reason"] is None
    assert again["refusal"] is None


def test_the_png_is_a_real_png() -> None:
    png = plot_png(MEASURED, latency_slo_ms=SLO_MS)
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.size == (700, 400)
    # not a blank canvas: the lines are drawn
    assert len(image.convert("RGB").getcolors(maxcolors=2**16) or []) > 10


def test_the_markdown_has_the_table_and_the_plot() -> None:
    document, deploy, batch = full_document()
    png = plot_png(MEASURED, latency_slo_ms=SLO_MS)
    text = markdown(document, png=png)
    assert "| concurrency | requests/s |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+", line)]
    assert [int(re.match(r"\| (\d+)", row)[1]) for row in rows] == [1, 2, 4, 8, 16]
    assert "| 4 (best) | 120 |" in text and "| 90% |" in text
    embedded = re.search(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert embedded and base64.b64decode(embedded[1]) == png
    assert f"[{PNG_NAME}]({PNG_NAME})" in text
    assert f"| min replicas | {deploy.min_replica_count} |" in text
    assert f"| batch size | {batch.batch_size} (limited by {batch.limited_by}) |" in text
    assert "**Fits**" in text


def test_a_refused_image_and_a_missed_slo_say_so() -> None:
    heavy = capacity(
        [step(1, 10.0, 500.0, peak_memory_bytes=3 * GIB)],
        machine="n1-highcpu-2",
        cold_start_s=STARTUP_WINDOW_S + 1,
    )
    document = capacity_document(heavy, latency_slo_ms=SLO_MS)
    assert document["refusal"].startswith("memory rule")
    assert "latency SLO" in document["no_best_step_reason"]
    text = markdown(document)
    assert "**Refused:** memory rule" in text and "No step qualifies" in text
    assert "data:image/png" not in text
    assert metrics(document)["refused"] == 1.0


def test_a_scaled_measurement_says_so() -> None:
    scaled = capacity([step(1, 10.0, 50.0)], machine="n1-standard-8", scale=7.91)
    text = markdown(capacity_document(scaled, latency_slo_ms=SLO_MS))
    assert "x 7.91" in text and "upper bound" in text and "unscaled" in text


def test_the_metrics_are_the_document_s_numbers() -> None:
    document, deploy, batch = full_document()
    found = metrics(document)
    assert all(type(value) is float for value in found.values())
    assert found["best_requests_per_s"] == 120.0 and found["best_p99_ms"] == 80.0
    assert found["deploy_min_replica_count"] == deploy.min_replica_count
    assert found["deploy_autoscaling_target"] == deploy.autoscaling_target
    assert found["batch_batch_size"] == batch.batch_size
    assert found["batch_replica_count"] == batch.replica_count
    assert found["peak_memory_mib"] * 2**20 == MEASURED.peak_memory_bytes
    assert found["refused"] == 0.0 and found["steps"] == 5.0


def test_write_report_puts_the_three_files_side_by_side(tmp_path: Path) -> None:
    document, _, _ = full_document()
    png = plot_png(MEASURED, latency_slo_ms=SLO_MS)
    files = write_report(tmp_path / "out", document, png)
    assert {files.json.parent, files.markdown.parent, files.png.parent} == {tmp_path / "out"}
    assert json.loads(files.json.read_text()) == json.loads(json.dumps(document))
    assert files.png.read_bytes() == png
    text = files.markdown.read_text()
    assert f"]({files.png.name})" in text


def test_a_run_without_a_good_step_still_plots_and_reports() -> None:
    for steps in ([], [step(1, 5.0, None, errors=3)]):
        measured = capacity(steps)
        assert plot_png(measured, latency_slo_ms=SLO_MS).startswith(PNG_SIGNATURE)
        document = capacity_document(measured, latency_slo_ms=SLO_MS)
        assert document["best_concurrency"] is None and document["no_best_step_reason"]
        assert "best_p99_ms" not in metrics(document)

"""Submit pipeline runs to Vertex AI Pipelines and manage retraining schedules.

A thin layer over the ``google-cloud-aiplatform`` SDK (``PipelineJob``,
``PipelineJobSchedule``) that checks everything the SDK lets through: parameter names and
types, a ``gs://`` pipeline root, label syntax, cron syntax and time zone, start/end order.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.parameters import pipeline_name, root_parameters, validate_parameters
from pipelines.train_to_serve import PIPELINE_NAME, check_run_parameters

_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]{1,2}$")
_ALIAS = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
"""Vertex's model version alias format (``versionAliases``)."""
_RESOURCE = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/(?P<kind>models|endpoints)/"
    r"(?P<id>[0-9]+|[a-z][a-z0-9-]*)$"
)
RESOURCE_PARAMETERS = {"parent_model": "models", "endpoint": "endpoints"}
"""Parameters that name an existing Vertex resource, and the resource's collection."""
AUTH_HINT = (
    "no Google Cloud credentials: authenticate with Application Default Credentials "
    "(`gcloud auth application-default login`), or point GOOGLE_APPLICATION_CREDENTIALS at a "
    "service-account key file, or run where a service account is attached"
)
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_CRON_RANGES = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}


class SubmitError(ValueError):
    """A submit or schedule setting is wrong; the message names it and what to do."""


@dataclass
class RunSettings:
    """Everything needed to create one ``PipelineJob``."""

    template: Path
    project: str
    region: str
    pipeline_root: str
    parameters: dict[str, Any] = field(default_factory=dict)
    display_name: str = "train-to-serve"
    job_id: str | None = None
    enable_caching: bool | None = None
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    network: str | None = None
    allow_cross_region: bool = False
    """Let the pipeline's ``location`` differ from the run's region."""


def check_settings(settings: RunSettings) -> dict[str, Any]:
    """Validate ``settings`` and return the parameter values converted to their declared types."""
    if not settings.project:
        raise SubmitError("no project: pass --project PROJECT_ID (or set GOOGLE_CLOUD_PROJECT)")
    if not _PROJECT.match(settings.project):
        raise SubmitError(
            f"project {settings.project!r} is not a valid project ID (6-30 characters: "
            "lowercase letters, digits, hyphens; starts with a letter)"
        )
    if not _REGION.match(settings.region):
        raise SubmitError(f"region {settings.region!r} is not a region name like us-central1")
    if not settings.pipeline_root.startswith("gs://") or len(settings.pipeline_root) <= 5:
        raise SubmitError(
            f"pipeline root {settings.pipeline_root!r} must be a gs:// URI "
            "(e.g. gs://my-bucket/pipeline-root) in the run's region"
        )
    if settings.job_id is not None and not _JOB_ID.match(settings.job_id):
        raise SubmitError(
            f"job id {settings.job_id!r}: use lowercase letters, digits and hyphens (≤128)"
        )
    for key, value in settings.labels.items():
        if not _LABEL.match(key) or not _LABEL_VALUE.match(value):
            raise SubmitError(
                f"label {key}={value!r}: keys start with a lowercase letter; keys and values "
                "use only lowercase letters, digits, '_' and '-' (≤63 characters)"
            )
    if not settings.template.is_file():
        raise SubmitError(f"pipeline template {settings.template} not found; run compile first")
    declared = root_parameters(settings.template)
    given = dict(settings.parameters)
    # Unset, the pipeline's project and location are the run's (not the compiled default).
    given.setdefault("location", settings.region)
    given.setdefault("project", settings.project)
    if settings.labels:  # the run's labels also on the model, endpoint and batch job
        given.setdefault("resource_labels", dict(settings.labels))
    given = {
        name: value
        for name, value in given.items()
        if name in declared or name in settings.parameters
    }
    checked = validate_parameters(given, declared)
    if pipeline_name(settings.template) == PIPELINE_NAME:
        defaults = {name: spec.get("defaultValue") for name, spec in declared.items()}
        values = {**defaults, **checked}
        check_where(settings, values)
        try:
            check_run_parameters(values, explicit=settings.parameters)
        except ValueError as exc:
            raise SubmitError(str(exc)) from None
    return checked


def check_where(settings: RunSettings, values: Mapping[str, Any]) -> None:
    """The run's project and region against the pipeline's ``project``, ``location``, the
    resources it names and its aliases; ``SubmitError`` naming the parameter and the fix."""
    if values.get("project") != settings.project:
        raise SubmitError(
            f"parameter project={values.get('project')!r} differs from --project "
            f"{settings.project!r}: the run would create its resources in another project; "
            f"pass --param project={settings.project} (or the matching --project)"
        )
    location = str(values.get("location", ""))
    if not _REGION.match(location):
        raise SubmitError(f"parameter location={location!r} is not a region name like us-central1")
    if location != settings.region and not settings.allow_cross_region:
        raise SubmitError(
            f"parameter location={location!r} differs from --region {settings.region!r}: the "
            "model, endpoint and batch job would live in another region than the run (nearly "
            f"always a mistake); drop --param location, or pass --allow-cross-region"
        )
    for name, kind in RESOURCE_PARAMETERS.items():
        text = str(values.get(name) or "")
        if not text:
            continue
        match = _RESOURCE.match(text)
        if not match or match["kind"] != kind:
            raise SubmitError(
                f"parameter {name}={text!r} is not a resource name: give "
                f"projects/{settings.project}/locations/{location}/{kind}/ID"
            )
        if match["location"] != location:
            raise SubmitError(
                f"parameter {name}={text!r} is in {match['location']}, not in the run's "
                f"location {location}: Vertex finds it only there; use the {kind} of "
                f"{location}"
            )
    for alias in values.get("version_aliases") or []:
        if not _ALIAS.match(str(alias)):
            raise SubmitError(
                f"version alias {alias!r}: Vertex takes 2-128 characters, a lowercase letter "
                "first, then letters, digits or '-', ending in a lowercase letter or digit "
                "(e.g. prod-v1)"
            )


def build_job(settings: RunSettings, credentials: Any = None) -> Any:
    """Create (but do not submit) the ``aiplatform.PipelineJob`` for ``settings``."""
    from google.cloud import aiplatform

    parameters = check_settings(settings)
    return aiplatform.PipelineJob(
        display_name=settings.display_name,
        template_path=str(settings.template),
        job_id=settings.job_id,
        pipeline_root=settings.pipeline_root,
        parameter_values=parameters,
        enable_caching=settings.enable_caching,
        labels=settings.labels or None,
        project=settings.project,
        location=settings.region,
        credentials=credentials,
    )


def submit(settings: RunSettings, credentials: Any = None) -> Any:
    """Validate, then submit one run; returns the submitted ``PipelineJob``."""
    job = build_job(settings, credentials)
    job.submit(service_account=settings.service_account, network=settings.network)
    return job


def validate_cron(cron: str, time_zone: str | None = None) -> str:
    """Check a 5-field cron expression (and IANA time zone); return Vertex's ``TZ=...`` form."""
    fields = cron.split()
    if len(fields) != 5:
        raise SubmitError(
            f"cron {cron!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}"
        )
    for index, (text, (name, low, high)) in enumerate(zip(fields, _CRON_RANGES, strict=True)):
        for item in text.split(","):
            _check_cron_item(cron, item, index, name, low, high)
    if time_zone:
        try:
            zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SubmitError(
                f"time zone {time_zone!r} is not an IANA name like Europe/Berlin or UTC"
            ) from None
        return f"TZ={time_zone} {cron}"
    return cron


def _check_cron_item(cron: str, item: str, index: int, name: str, low: int, high: int) -> None:
    """Check one comma-separated item of one cron field (``*``, ``a``, ``a-b``, ``/step``)."""
    base, _, step = item.partition("/")
    bad = f"cron {cron!r}: {name} field item {item!r}"
    if step and (not step.isdigit() or int(step) == 0):
        raise SubmitError(f"{bad} has an invalid step (a positive whole number is needed)")
    if base == "*":
        return
    names = _CRON_NAMES.get(index, [])
    values = []
    for part in base.split("-"):
        lowered = part.lower()
        if lowered in names:
            values.append(names.index(lowered) + (1 if index == 3 else 0))
        elif part.isdigit():
            values.append(int(part))
        else:
            raise SubmitError(f"{bad} is not a number, range or '*'")
    if len(values) > 2 or any(not low <= value <= high for value in values):
        raise SubmitError(f"{bad} is out of range {low}-{high}")
    if len(values) == 2 and values[0] > values[1]:
        raise SubmitError(f"{bad} is a range that runs backwards")


@dataclass
class ScheduleSettings:
    """The schedule part of ``schedule create``."""

    cron: str
    time_zone: str | None = None
    display_name: str = "train-to-serve-retraining"
    max_concurrent_runs: int = 1
    max_runs: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    allow_queueing: bool = False


def _parse_time(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SubmitError(
            f"{flag} {text!r} is not an ISO 8601 time like 2026-12-01T03:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise SubmitError(f"{flag} {text!r} needs a UTC offset, e.g. 2026-12-01T03:00:00Z")
    return moment


def create_schedule(run: RunSettings, schedule: ScheduleSettings, credentials: Any = None) -> Any:
    """Validate, then create a ``PipelineJobSchedule`` that starts ``run`` on ``schedule``."""
    cron = validate_cron(schedule.cron, schedule.time_zone)
    if schedule.max_concurrent_runs < 1:
        raise SubmitError("--max-concurrent-runs must be at least 1")
    if schedule.max_runs is not None and schedule.max_runs < 1:
        raise SubmitError("--max-runs must be at least 1 (leave it out for no limit)")
    start = _parse_time(schedule.start_time, "--start-time")
    end = _parse_time(schedule.end_time, "--end-time")
    if start and end and end <= start:
        raise SubmitError(f"--end-time {schedule.end_time} is not after --start-time")
    job = build_job(run, credentials)
    created = job.create_schedule(
        cron=cron,
        display_name=schedule.display_name,
        start_time=start.isoformat() if start else None,
        end_time=end.isoformat() if end else None,
        allow_queueing=schedule.allow_queueing,
        max_run_count=schedule.max_runs,
        max_concurrent_run_count=schedule.max_concurrent_runs,
        service_account=run.service_account,
        network=run.network,
    )
    return created


def schedule_action(
    action: str,
    *,
    project: str,
    region: str,
    schedule_id: str | None = None,
    credentials: Any = None,
) -> list[Mapping[str, str]]:
    """``list`` the project's pipeline schedules, or ``pause``/``resume``/``delete`` one."""
    from google.cloud import aiplatform

    if action == "list":
        schedules = aiplatform.PipelineJobSchedule.list(
            project=project, location=region, credentials=credentials
        )
        return [
            {
                "name": s.resource_name,
                "display_name": s.display_name,
                "state": s.state.name,
                "cron": s.cron,
            }
            for s in schedules
        ]
    if not schedule_id:
        raise SubmitError(f"schedule {action} needs a schedule ID or resource name")
    found = aiplatform.PipelineJobSchedule.get(
        schedule_id, project=project, location=region, credentials=credentials
    )
    getattr(found, action)()
    return [{"name": found.resource_name, "action": action}]

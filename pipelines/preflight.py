"""Is a Google Cloud project ready for the train-to-serve pipeline? Checked before any run.

Each check reads the project with Google's own client libraries and gives a ``Finding``: what
was checked, whether it holds, what was found, and the ``gcloud`` command that fixes it.

* ``APIS``: Service Usage says each API the pipeline calls is enabled.
* The Artifact Registry Docker repository for the images exists in the run's region.
* The buckets (pipeline root, staging) exist and are in the region or its multi-region.
* The identities have the roles the pipeline needs (``PIPELINE_ROLES`` for the account the
  run executes as, ``BUILD_ROLES`` for the account Cloud Build runs as), granted on the project
  (``roles/owner`` counts for all); a role granted only on a bucket or repository is not seen,
  and the finding says so.

``Clients`` holds the four clients; ``Clients.default(project)`` makes them with Application
Default Credentials, tests pass their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

APIS = {
    "aiplatform.googleapis.com": "Vertex AI (pipelines, models, endpoints, batch prediction)",
    "cloudbuild.googleapis.com": "Cloud Build (the serving image built and checked)",
    "artifactregistry.googleapis.com": "Artifact Registry (the images)",
    "storage.googleapis.com": "Cloud Storage (pipeline root, staging, batch input and output)",
    "iam.googleapis.com": "IAM (the run and the build act as service accounts)",
    "cloudresourcemanager.googleapis.com": "Resource Manager (project and its IAM policy)",
}
"""The APIs a run calls, and what for."""
PIPELINE_ROLES = {
    "roles/aiplatform.user": "run the pipeline; upload, deploy, predict in batch",
    "roles/storage.objectAdmin": "read and write the pipeline root and staging bucket",
    "roles/cloudbuild.builds.editor": "start the image's Cloud Build",
    "roles/iam.serviceAccountUser": "run the build as the build service account",
    "roles/artifactregistry.reader": "pull the components image",
}
BUILD_ROLES = {
    "roles/artifactregistry.writer": "push the checked serving image",
    "roles/storage.objectAdmin": "read the build context, write the log and the report",
    "roles/logging.logWriter": "write the build's logs",
}
_MULTI_REGIONS = {"us": ("us-", "northamerica-"), "eu": ("europe-",), "asia": ("asia-",)}


@dataclass(frozen=True)
class Finding:
    """One check's outcome."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Clients:
    """The clients the checks read with (Google's own)."""

    service_usage: Any
    artifact_registry: Any
    storage: Any
    projects: Any

    @classmethod
    def default(cls, project: str) -> Clients:
        """Clients with Application Default Credentials (``DefaultCredentialsError`` without)."""
        from google.cloud import (
            artifactregistry_v1,
            resourcemanager_v3,
            service_usage_v1,
            storage,
        )

        return cls(
            service_usage_v1.ServiceUsageClient(),
            artifactregistry_v1.ArtifactRegistryClient(),
            storage.Client(project=project),
            resourcemanager_v3.ProjectsClient(),
        )


def check_apis(clients: Clients, project: str) -> list[Finding]:
    """Each API in ``APIS`` enabled."""
    from google.cloud import service_usage_v1

    response = clients.service_usage.batch_get_services(
        request={
            "parent": f"projects/{project}",
            "names": [f"projects/{project}/services/{api}" for api in APIS],
        }
    )
    enabled = {
        service.name.rsplit("/", 1)[-1]
        for service in response.services
        if service.state == service_usage_v1.State.ENABLED
    }
    return [
        Finding(f"API {api}", api in enabled, purpose if api in enabled else f"disabled: {purpose}",
                "" if api in enabled else f"gcloud services enable {api} --project {project}")
        for api, purpose in APIS.items()
    ]  # fmt: skip


def check_repository(clients: Clients, project: str, region: str, repository: str) -> Finding:
    """The Docker repository for the images in the run's region."""
    from google.api_core import exceptions
    from google.cloud import artifactregistry_v1

    name = f"projects/{project}/locations/{region}/repositories/{repository}"
    create = (
        f"gcloud artifacts repositories create {repository} --repository-format=docker "
        f"--location={region} --project={project}"
    )
    check = f"Artifact Registry repository {repository} in {region}"
    try:
        found = clients.artifact_registry.get_repository(name=name)
    except exceptions.NotFound:
        return Finding(check, False, f"{name} does not exist", create)
    if found.format_ != artifactregistry_v1.Repository.Format.DOCKER:
        kind = artifactregistry_v1.Repository.Format(found.format_).name
        return Finding(check, False, f"{name} holds {kind}, not Docker images", create)
    return Finding(check, True, f"{name} (Docker)")


def bucket_location_fits(location: str, region: str) -> bool:
    """Whether a bucket in ``location`` serves a run in ``region``: the region itself or the
    multi-region that contains it (``EU`` for ``europe-west4``)."""
    place = location.lower()
    return place == region or region.startswith(_MULTI_REGIONS.get(place, ("\0",)))


def check_bucket(clients: Clients, uri: str, region: str, purpose: str) -> Finding:
    """The bucket of ``uri`` exists, in the region or its multi-region."""
    from google.api_core import exceptions

    name = uri.removeprefix("gs://").split("/", 1)[0]
    check = f"bucket gs://{name} ({purpose})"
    try:
        bucket = clients.storage.lookup_bucket(name)
    except exceptions.Forbidden:
        return Finding(
            check,
            False,
            "exists, but these credentials may not read it",
            f"gcloud storage buckets add-iam-policy-binding gs://{name} --member=MEMBER "
            "--role=roles/storage.objectAdmin",
        )
    if bucket is None:
        return Finding(
            check,
            False,
            "does not exist",
            f"gcloud storage buckets create gs://{name} --location={region}",
        )
    if not bucket_location_fits(bucket.location, region):
        return Finding(
            check,
            False,
            f"in {bucket.location}, not in {region} or its multi-region: Vertex reads and "
            "writes batch data and artifacts only there",
            f"use a bucket in {region}: gcloud storage buckets create gs://NEW --location={region}",
        )
    return Finding(check, True, f"in {bucket.location}")


def check_roles(
    policy: Any, project: str, account: str, roles: dict[str, str], who: str
) -> list[Finding]:
    """``account``'s roles on the project (``roles/owner`` holds them all)."""
    member = f"serviceAccount:{account}"
    held = {binding.role for binding in policy.bindings if member in binding.members}
    findings = []
    for role, purpose in roles.items():
        ok = role in held or "roles/owner" in held
        fix = f"gcloud projects add-iam-policy-binding {project} --member={member} --role={role}"
        detail = purpose if ok else f"not granted on the project: needed to {purpose}"
        findings.append(Finding(f"{who} {account}: {role}", ok, detail, "" if ok else fix))
    return findings


def default_compute_account(clients: Clients, project: str) -> str:
    """The Compute Engine default service account, as which Vertex runs pipelines and Cloud
    Build runs builds when no account is named."""
    number = clients.projects.get_project(name=f"projects/{project}").name.rsplit("/", 1)[-1]
    return f"{number}-compute@developer.gserviceaccount.com"


def preflight(
    project: str,
    region: str,
    *,
    clients: Clients,
    repository: str = "train-to-serve",
    buckets: Sequence[tuple[str, str]] = (),
    service_account: str = "",
    build_service_account: str = "",
) -> list[Finding]:
    """Every check for a run of the pipeline in ``project`` and ``region``.

    Args:
        buckets: (``gs://`` URI, what it is for) of each bucket the run uses.
        service_account: the account the run executes as (default: Compute Engine's).
        build_service_account: the account Cloud Build runs as (default: Compute Engine's).
    """
    findings = check_apis(clients, project)
    findings.append(check_repository(clients, project, region, repository))
    findings += [check_bucket(clients, uri, region, purpose) for uri, purpose in buckets]
    default = ""
    if not (service_account and build_service_account):
        default = default_compute_account(clients, project)
    policy = clients.projects.get_iam_policy(resource=f"projects/{project}")
    runner = service_account or default
    builder = build_service_account or default
    findings += check_roles(policy, project, runner, PIPELINE_ROLES, "pipeline account")
    findings += check_roles(policy, project, builder, BUILD_ROLES, "build account")
    return findings


def table(findings: Sequence[Finding]) -> str:
    """The findings as Markdown: check, OK or MISSING, what was found, the fix."""
    rows = ["| check | status | found | fix |", "|---|---|---|---|"]
    for f in findings:
        fix = f"`{f.fix}`" if f.fix else ""
        rows.append(f"| {f.check} | {'OK' if f.ok else 'MISSING'} | {f.detail} | {fix} |")
    return "\n".join(rows)

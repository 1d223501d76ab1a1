"""preflight on recorded API responses (``preflight/*.json``, as the REST APIs answer): a
prepared project passes; each missing API, repository, bucket or role is reported with its fix.

The responses are read into Google's own types (Service Usage, Artifact Registry, Resource
Manager, IAM, Cloud Storage) and handed out by fake clients at the methods preflight calls.
"""

import json
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import artifactregistry_v1, resourcemanager_v3, service_usage_v1, storage
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

import compile as cli
from pipelines.preflight import (
    APIS,
    BUILD_ROLES,
    PIPELINE_ROLES,
    Clients,
    bucket_location_fits,
    preflight,
)

RECORDED = Path(__file__).parent / "preflight"
PIPELINE_SA = "pipelines@my-project.iam.gserviceaccount.com"
BUILD_SA = "builder@my-project.iam.gserviceaccount.com"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


class Recorded:
    """The four clients, answering with the recorded responses, as changed by a test."""

    def __init__(self) -> None:
        self.services = service_usage_v1.BatchGetServicesResponse.from_json(
            recorded("services.json")
        )
        self.repository: artifactregistry_v1.Repository | None = (
            artifactregistry_v1.Repository.from_json(recorded("repository.json"))
        )
        self.bucket: dict | None = json.loads(recorded("bucket.json"))
        self.policy = json_format.Parse(recorded("iam_policy.json"), policy_pb2.Policy())
        self.project = resourcemanager_v3.Project.from_json(recorded("project.json"))

    # Service Usage
    def batch_get_services(self, request):
        assert request["parent"] == "projects/my-project"
        return self.services

    # Artifact Registry
    def get_repository(self, name):
        if self.repository is None:
            raise exceptions.NotFound(f"Repository {name} not found")
        assert name == self.repository.name
        return self.repository

    # Cloud Storage, through its own client: the recorded JSON is what its HTTP call returns
    is_mtls = False

    def request(self, method, url, **_):
        answer = requests.Response()
        answer.request = requests.Request(method, url).prepare()
        answer.status_code, answer.headers["content-type"] = 404, "application/json"
        answer._content = b'{"error": {"code": 404, "message": "not found"}}'
        if method == "GET" and self.bucket is not None and "/b/my-bucket" in url:
            answer.status_code, answer._content = 200, json.dumps(self.bucket).encode()
        return answer

    # Resource Manager
    def get_project(self, name):
        assert name == "projects/my-project"
        return self.project

    def get_iam_policy(self, resource):
        assert resource == "projects/my-project"
        return self.policy

    def clients(self) -> Clients:
        gcs = storage.Client("my-project", credentials=AnonymousCredentials(), _http=self)
        return Clients(self, self, gcs, self)


def run(fake: Recorded, **kwargs):
    arguments = {
        "clients": fake.clients(),
        "buckets": [("gs://my-bucket/root", "pipeline root")],
        "service_account": PIPELINE_SA,
        "build_service_account": BUILD_SA,
    } | kwargs
    return preflight("my-project", "europe-west4", **arguments)


def test_a_prepared_project_passes_every_check() -> None:
    findings = run(Recorded())

    assert all(f.ok for f in findings), [f for f in findings if not f.ok]
    assert len(findings) == len(APIS) + 1 + 1 + len(PIPELINE_ROLES) + len(BUILD_ROLES)


def test_a_disabled_api_is_reported_with_the_command_that_enables_it() -> None:
    fake = Recorded()
    fake.services.services[1].state = service_usage_v1.State.DISABLED  # Cloud Build

    (missing,) = [f for f in run(fake) if not f.ok]

    assert missing.check == "API cloudbuild.googleapis.com"
    assert missing.fix == "gcloud services enable cloudbuild.googleapis.com --project my-project"


def test_a_missing_repository_is_reported_with_the_create_command() -> None:
    fake = Recorded()
    fake.repository = None

    (missing,) = [f for f in run(fake) if not f.ok]

    assert missing.check == "Artifact Registry repository train-to-serve in europe-west4"
    assert missing.fix == (
        "gcloud artifacts repositories create train-to-serve --repository-format=docker "
        "--location=europe-west4 --project=my-project"
    )


def test_a_repository_of_another_format_is_not_enough() -> None:
    fake = Recorded()
    fake.repository.format_ = artifactregistry_v1.Repository.Format.PYTHON

    (missing,) = [f for f in run(fake) if not f.ok]
    assert "holds PYTHON, not Docker images" in missing.detail


@pytest.mark.parametrize(
    ("location", "detail"),
    [(None, "does not exist"), ("US-CENTRAL1", "in US-CENTRAL1, not in europe-west4")],
)
def test_a_missing_or_misplaced_bucket_is_reported(location: str | None, detail: str) -> None:
    fake = Recorded()
    if location is None:
        fake.bucket = None
    else:
        fake.bucket["location"] = location

    (missing,) = [f for f in run(fake) if not f.ok]

    assert missing.check == "bucket gs://my-bucket (pipeline root)"
    assert missing.detail.startswith(detail)
    assert "--location=europe-west4" in missing.fix


def test_a_missing_role_is_reported_per_account_with_the_grant_command() -> None:
    fake = Recorded()
    writer = next(b for b in fake.policy.bindings if b.role == "roles/artifactregistry.writer")
    writer.members.remove(f"serviceAccount:{BUILD_SA}")

    (missing,) = [f for f in run(fake) if not f.ok]

    assert missing.check == f"build account {BUILD_SA}: roles/artifactregistry.writer"
    assert "push the checked serving image" in missing.detail
    assert missing.fix == (
        f"gcloud projects add-iam-policy-binding my-project "
        f"--member=serviceAccount:{BUILD_SA} --role=roles/artifactregistry.writer"
    )


def test_without_named_accounts_the_compute_default_account_is_checked() -> None:
    findings = run(Recorded(), service_account="", build_service_account="")

    default = "123456789012-compute@developer.gserviceaccount.com"
    roles = [f for f in findings if default in f.check]
    assert len(roles) == len(PIPELINE_ROLES) + len(BUILD_ROLES)
    assert not any(f.ok for f in roles)  # the recorded policy grants it nothing


@pytest.mark.parametrize(
    ("location", "region", "fits"),
    [
        ("EUROPE-WEST4", "europe-west4", True),
        ("EU", "europe-west4", True),
        ("US", "us-central1", True),
        ("US", "northamerica-northeast1", True),
        ("ASIA", "asia-east1", True),
        ("EU", "us-central1", False),
        ("EUROPE-WEST1", "europe-west4", False),
    ],
)
def test_bucket_locations(location: str, region: str, fits: bool) -> None:
    assert bucket_location_fits(location, region) is fits


def test_the_command_prints_a_table_and_fails_on_a_miss(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fake = Recorded()
    fake.repository = None
    monkeypatch.setattr(Clients, "default", classmethod(lambda cls, project: fake.clients()))

    code = cli.main(
        ["preflight", "--project", "my-project", "--region", "europe-west4",
         "--pipeline-root", "gs://my-bucket/root", "--service-account", PIPELINE_SA,
         "--build-service-account", BUILD_SA]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("| check | status | found | fix |")
    assert "| Artifact Registry repository train-to-serve in europe-west4 | MISSING |" in out
    assert out.rstrip().endswith(
        f"1 of {len(APIS) + 2 + len(PIPELINE_ROLES) + len(BUILD_ROLES)} checks failed"
    )

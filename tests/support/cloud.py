"""Google Cloud replaced at the client methods that would send a request: Cloud Storage
uploads and downloads, Cloud Build's create and get (the ``fake_cloud`` fixture installs it)."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

BUILD_ID = "0d2e5c1a-6f4b-4c5e-9f2d-3b7a1e8c9d00"
LOG_URL = f"https://console.cloud.google.com/cloud-build/builds;region=europe-west4/{BUILD_ID}"


class FakeCloud:
    """Stands in for Cloud Storage and Cloud Build at the methods that send requests."""

    def __init__(self, statuses: list[cloudbuild_v1.Build], log_growth: list[str]):
        self.statuses = statuses
        self.log_growth = log_growth  # the log object's content at each get_build
        self.polls = 0
        self.uploads: list[dict[str, Any]] = []
        self.created: list[cloudbuild_v1.CreateBuildRequest] = []
        self.fetched: list[cloudbuild_v1.GetBuildRequest] = []
        self.existing: set[str] = set()

    def upload_from_filename(self, blob: storage.Blob, filename: str, **kwargs: Any) -> None:
        if kwargs.get("if_generation_match") == 0 and blob.name in self.existing:
            raise exceptions.PreconditionFailed("exists")
        self.existing.add(blob.name)
        self.uploads.append(
            {"bucket": blob.bucket.name, "name": blob.name, "data": Path(filename).read_bytes()}
        )

    def download_as_bytes(self, blob: storage.Blob, start: int = 0, **_: Any) -> bytes:
        content = self.log_growth[min(self.polls, len(self.log_growth)) - 1].encode()
        if self.polls == 0 or not content:
            raise exceptions.NotFound("no log yet")
        if start >= len(content):
            raise exceptions.RequestRangeNotSatisfiable("nothing new")
        return content[start:]

    def create_build(self, client: Any, request: cloudbuild_v1.CreateBuildRequest) -> Any:
        self.created.append(request)
        created = cloudbuild_v1.Build(id=BUILD_ID, log_url=LOG_URL, status="QUEUED")
        return SimpleNamespace(metadata=cloudbuild_v1.BuildOperationMetadata(build=created))

    def get_build(self, client: Any, request: cloudbuild_v1.GetBuildRequest) -> Any:
        self.fetched.append(request)
        self.polls += 1
        return self.statuses[min(self.polls, len(self.statuses)) - 1]

"""Image names: Docker references, Artifact Registry images, the staging bucket."""

import pytest

from components.imaging.names import (
    BuildImageInputError,
    artifact_registry_image,
    local_image_name,
    parse_staging_bucket,
)
from tests.imaging.builds import DIGEST, LOCATION, PROJECT, REPOSITORY, STAGING


# ------------------------------------------------------------ image naming --
def test_a_bare_name_goes_into_the_repository_in_the_pipeline_region() -> None:
    image = artifact_registry_image(
        "penguins-server", project=PROJECT, location=LOCATION, repository=REPOSITORY
    )
    assert image.uri == f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server:latest"
    assert image.pinned(DIGEST) == (
        f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server@{DIGEST}"
    )


def test_a_full_artifact_registry_name_is_split_and_checked_against_the_settings() -> None:
    uri = f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/team/penguins-server:v2"
    image = artifact_registry_image(uri, location=LOCATION, default_tag="unused")
    assert (image.location, image.project, image.repository) == (LOCATION, PROJECT, REPOSITORY)
    assert (image.name, image.tag, image.uri) == ("team/penguins-server", "v2", uri)


@pytest.mark.parametrize(
    ("image_name", "settings", "message"),
    [
        (
            f"us-central1-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv",
            {"location": LOCATION},
            "is in location 'us-central1' but location 'europe-west4' was given",
        ),
        (
            f"{LOCATION}-docker.pkg.dev/other-project/{REPOSITORY}/srv",
            {"project": PROJECT},
            "is in project 'other-project'",
        ),
        (f"us-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv", {}, "'us' is a multi-region"),
        ("srv", {"location": "europe"}, "'europe' is a multi-region"),
        (f"gcr.io/{PROJECT}/srv", {}, "not an Artifact Registry Docker image"),
        (f"{LOCATION}-docker.pkg.dev/{PROJECT}/srv", {}, "not an Artifact Registry"),
        ("Penguins", {}, "invalid image name 'Penguins'"),
        ("penguins--/x", {}, "invalid image name"),
        ("srv:-bad", {}, "invalid tag '-bad'"),
        ("srv:", {}, "invalid tag"),
        (f"srv@{DIGEST}", {}, "has a digest"),
        ("srv", {"repository": ""}, "['repository'] not given"),
        ("srv", {"project": "123456789"}, "invalid project id '123456789'"),
        ("srv", {"repository": "Models_1"}, "invalid repository 'Models_1'"),
    ],
)
def test_bad_image_names_and_settings_are_refused_with_the_reason(
    image_name: str, settings: dict[str, str], message: str
) -> None:
    given = {"project": PROJECT, "location": LOCATION, "repository": REPOSITORY} | settings
    if "." in image_name.split("/", 1)[0]:  # a full name: only the settings under test
        given = settings
    with pytest.raises(BuildImageInputError) as caught:
        artifact_registry_image(image_name, **given)
    assert message in str(caught.value)


def test_local_names_go_under_localhost_unless_they_name_a_registry() -> None:
    assert local_image_name("srv", "t1") == "localhost/srv:t1"
    assert local_image_name("team/srv:v1", "t1") == "localhost/team/srv:v1"
    assert local_image_name("registry.example:5000/srv", "t1") == "registry.example:5000/srv:t1"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("my-bucket/staging", "must be a gs:// URI"),
        ("/gcs/my-bucket/staging", "(use gs://my-bucket/staging)"),
        ("s3://my-bucket", "must be a gs:// URI"),
        ("gs://My_Bucket/x", "invalid bucket name 'My_Bucket'"),
        ("gs://", "invalid bucket name ''"),
    ],
)
def test_a_staging_bucket_must_be_a_gs_uri(uri: str, message: str) -> None:
    with pytest.raises(BuildImageInputError) as caught:
        parse_staging_bucket(uri)
    assert message in str(caught.value)


def test_staging_object_names_are_under_the_prefix_and_named_by_content() -> None:
    staging = parse_staging_bucket(STAGING + "/")
    assert (staging.bucket, staging.prefix) == ("my-staging", "pipelines/run-1")
    assert staging.context_object("f" * 64) == (
        "pipelines/run-1/train-to-serve/build-image/contexts/" + "f" * 64 + ".tar.gz"
    )
    assert staging.logs_uri == "gs://my-staging/pipelines/run-1/train-to-serve/build-image/logs"
    assert staging.log_object("b1") == "pipelines/run-1/train-to-serve/build-image/logs/log-b1.txt"
    assert parse_staging_bucket("gs://my-staging").context_object("0") == (
        "train-to-serve/build-image/contexts/0.tar.gz"
    )

"""submit and schedule: the exact PipelineJob / PipelineJobSchedule requests, captured offline.

No credentials and no network: the SDK builds its requests with anonymous credentials and the
one API method that would send each request is patched to capture it.
"""

import json
import shlex
from pathlib import Path
from unittest import mock

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.pipeline_service import PipelineServiceClient
from google.cloud.aiplatform_v1.services.schedule_service import ScheduleServiceClient
from kfp import compiler, dsl

import compile as cli
from components.evaluation_gate import evaluation_gate
from pipelines.parameters import ParameterError, validate_parameters
from pipelines.vertex_jobs import RunSettings, SubmitError, check_settings, validate_cron


@dsl.pipeline(name="typed-parameters")
def typed_pipeline(
    project: str,
    threshold: float = 0.8,
    replicas: int = 1,
    use_gpu: bool = True,
    sources: list = [],  # noqa: B006
    labels: dict = {},  # noqa: B006
) -> None:
    """A small pipeline whose root parameters cover every KFP parameter type."""
    metrics = dsl.importer(artifact_uri="gs://b/metrics", artifact_class=dsl.Metrics)
    evaluation_gate(metrics=metrics.output, metric=project, threshold=threshold)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compiler.Compiler().compile(typed_pipeline, str(path))
    return path


@pytest.fixture
def captured():
    """Patch the API methods that send requests; collect what would have been sent."""
    sent: dict = {}

    def as_created(message, name: str):
        """What the service answers: the same resource, now with a name."""
        answer = type(message)()
        type(message).copy_from(answer, message)
        answer.name = name
        return answer

    def create_job(self, *, parent, pipeline_job, pipeline_job_id=None, **_):
        sent["job"] = {"parent": parent, "job": pipeline_job, "job_id": pipeline_job_id}
        return as_created(pipeline_job, f"{parent}/pipelineJobs/{pipeline_job_id or 'new'}")

    def create_schedule(self, *, parent, schedule, **_):
        sent["schedule"] = {"parent": parent, "schedule": schedule}
        return as_created(schedule, f"{parent}/schedules/123")

    def ensure_bucket(*, output_artifacts_gcs_dir, **_):
        sent["bucket"] = output_artifacts_gcs_dir

    with (
        mock.patch.object(PipelineServiceClient, "create_pipeline_job", create_job),
        mock.patch(
            "google.cloud.aiplatform.pipeline_jobs.gcs_utils."
            "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
            ensure_bucket,
        ),
        mock.patch.object(ScheduleServiceClient, "create_schedule", create_schedule),
        mock.patch("google.auth.default", return_value=(AnonymousCredentials(), "my-project")),
    ):
        yield sent


RUN = [
    "--project",
    "my-project",
    "--region",
    "europe-west4",
    "--pipeline-root",
    "gs://my-bucket/root",
]


def test_submit_sends_typed_parameters(template: Path, captured: dict) -> None:
    code = cli.main(
        [
            "submit",
            *RUN,
            "--template",
            str(template),
            *shlex.split(
                "--param project=accuracy --param threshold=0.93 --param replicas=3 "
                "--param use_gpu=false --param 'sources=[\"gs://b/x.jsonl\"]' "
                "--label team=ml --no-cache --job-id run-1 --display-name nightly"
            ),
        ]
    )
    assert code == 0
    request = captured["job"]
    assert request["parent"] == "projects/my-project/locations/europe-west4"
    assert request["job_id"] == "run-1"
    assert captured["bucket"] == "gs://my-bucket/root"
    job = request["job"]
    assert job.display_name == "nightly"
    assert job.labels["team"] == "ml"
    runtime = job.runtime_config
    assert runtime.gcs_output_directory == "gs://my-bucket/root"
    values = dict(runtime.parameter_values)
    assert values["project"] == "accuracy"
    assert values["threshold"] == 0.93
    assert values["replicas"] == 3
    assert values["use_gpu"] is False
    assert list(values["sources"]) == ["gs://b/x.jsonl"]
    tasks = job.pipeline_spec["root"]["dag"]["tasks"]
    assert all(
        task.get("cachingOptions", {}).get("enableCache", False) is False for task in tasks.values()
    )


def test_submit_reads_a_parameter_file(template: Path, captured: dict, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("project: f1_macro\nthreshold: 0.5\nlabels: {a: b}\n")
    assert (
        cli.main(
            [
                "submit",
                *RUN,
                "--template",
                str(template),
                "--params-file",
                str(params),
                "--param",
                "threshold=0.7",
            ]
        )
        == 0
    )
    values = dict(captured["job"]["job"].runtime_config.parameter_values)
    assert values["project"] == "f1_macro"
    assert values["threshold"] == 0.7  # the flag wins over the file
    assert dict(values["labels"]) == {"a": "b"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "projekt=x"], "unknown pipeline parameter(s) ['projekt']"),
        (
            ["--param", "project=x", "--param", "replicas=two"],
            "parameter 'replicas' must be an integer, got 'two'",
        ),
        (
            ["--param", "project=x", "--param", "use_gpu=maybe"],
            "parameter 'use_gpu' must be true or false",
        ),
        (
            ["--param", "project=x", "--param", "sources=[oops"],
            "parameter 'sources' must be a JSON list",
        ),
        (["--param", "project=x", "--label", "Team=ML"], "label Team='ML'"),
        (["--param", "noequals"], "--param expects NAME=VALUE, got 'noequals'"),
    ],
)
def test_submit_rejects_bad_input_before_any_request(
    template: Path, captured: dict, capsys: pytest.CaptureFixture, extra: list, message: str
) -> None:
    assert cli.main(["submit", *RUN, "--template", str(template), *extra]) == 2
    assert message in capsys.readouterr().err
    assert captured == {}


def test_settings_checks(template: Path) -> None:
    good = dict(
        template=template,
        project="my-project",
        region="us-central1",
        pipeline_root="gs://b/r",
        parameters={"project": "x"},
    )
    assert check_settings(RunSettings(**good)) == {"project": "x"}
    for change, message in [
        ({"project": ""}, "no project"),
        ({"project": "My_Project"}, "not a valid project ID"),
        ({"pipeline_root": "/tmp/root"}, "must be a gs:// URI"),
        ({"region": "central"}, "not a region name"),
        ({"template": template.parent / "missing.yaml"}, "not found; run compile first"),
        (
            {"parameters": {"project": "x", "threshold": "high"}},
            "parameter 'threshold' must be a number, got str 'high'",
        ),
        ({"parameters": {"project": "x", "replicas": True}}, "must be an integer, got bool"),
    ]:
        with pytest.raises((SubmitError, ParameterError), match=None) as caught:
            check_settings(RunSettings(**{**good, **change}))
        assert message in str(caught.value)


def test_schedule_create_request(template: Path, captured: dict) -> None:
    code = cli.main(
        [
            "schedule",
            "create",
            *RUN,
            "--template",
            str(template),
            *shlex.split(
                "--param project=accuracy --cron '0 3 * * mon-fri' --time-zone Europe/Berlin "
                "--max-concurrent-runs 2 --max-runs 10 --start-time 2026-12-01T00:00:00Z "
                "--end-time 2027-06-01T00:00:00+00:00 --schedule-name weekly "
                "--service-account runner@my-project.iam.gserviceaccount.com"
            ),
        ]
    )
    assert code == 0
    request = captured["schedule"]
    assert request["parent"] == "projects/my-project/locations/europe-west4"
    schedule = request["schedule"]
    assert schedule.display_name == "weekly"
    assert schedule.cron == "TZ=Europe/Berlin 0 3 * * mon-fri"
    assert schedule.max_concurrent_run_count == 2
    assert schedule.max_run_count == 10
    assert schedule.start_time.isoformat().startswith("2026-12-01T00:00:00")
    assert schedule.end_time.isoformat().startswith("2027-06-01T00:00:00")
    job = schedule.create_pipeline_job_request.pipeline_job
    assert job.service_account == "runner@my-project.iam.gserviceaccount.com"
    assert dict(job.runtime_config.parameter_values)["project"] == "accuracy"
    assert "job" not in captured  # a schedule creates no run by itself


@pytest.mark.parametrize(
    ("cron", "zone", "message"),
    [
        ("0 3 * *", None, "must have 5 fields"),
        ("61 3 * * *", None, "minute field item '61' is out of range 0-59"),
        ("0 25 * * *", None, "hour field item '25' is out of range 0-23"),
        ("0 3 * * funday", None, "day of week field item 'funday' is not a number"),
        ("*/0 * * * *", None, "invalid step"),
        ("0 3 10-2 * *", None, "range that runs backwards"),
        ("0 3 * * *", "Mars/Olympus", "time zone 'Mars/Olympus' is not an IANA name"),
    ],
)
def test_bad_cron(cron: str, zone: str | None, message: str) -> None:
    with pytest.raises(SubmitError) as caught:
        validate_cron(cron, zone)
    assert message in str(caught.value)


def test_good_cron_forms() -> None:
    assert validate_cron("*/15 0-6,22 1 jan-mar 0") == "*/15 0-6,22 1 jan-mar 0"
    assert validate_cron("0 3 * * 1", "UTC") == "TZ=UTC 0 3 * * 1"


def test_schedule_rejects_bad_times(
    template: Path, captured: dict, capsys: pytest.CaptureFixture
) -> None:
    base = [
        "schedule",
        "create",
        *RUN,
        "--template",
        str(template),
        "--param",
        "project=x",
        "--cron",
        "0 3 * * *",
    ]
    assert cli.main([*base, "--start-time", "tomorrow"]) == 2
    assert "is not an ISO 8601 time" in capsys.readouterr().err
    assert (
        cli.main(
            [*base, "--start-time", "2027-01-02T00:00:00Z", "--end-time", "2027-01-01T00:00:00Z"]
        )
        == 2
    )
    assert "is not after --start-time" in capsys.readouterr().err
    assert cli.main([*base, "--max-concurrent-runs", "0"]) == 2
    assert "--max-concurrent-runs must be at least 1" in capsys.readouterr().err
    assert captured == {}


def test_validate_parameters_accepts_ints_for_doubles() -> None:
    declared = {"x": {"parameterType": "NUMBER_DOUBLE"}}
    assert validate_parameters({"x": 1}, declared) == {"x": 1}


def test_project_and_location_default_to_the_runs(template: Path) -> None:
    settings = RunSettings(template, "my-project", "europe-west12", "gs://b/r", parameters={})
    assert check_settings(settings) == {"project": "my-project"}  # no location declared here


# --- where a train-to-serve run goes: project, region, resource names, aliases ---------------

VERTEX_REGIONS = [
    "africa-south1", "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2",
    "asia-northeast3", "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2",
    "australia-southeast1", "australia-southeast2", "europe-central2", "europe-north1",
    "europe-north2", "europe-southwest1", "europe-west1", "europe-west2", "europe-west3",
    "europe-west4", "europe-west6", "europe-west8", "europe-west9", "europe-west10",
    "europe-west12", "me-central1", "me-central2", "me-west1", "northamerica-northeast1",
    "northamerica-northeast2", "northamerica-south1", "southamerica-east1", "southamerica-west1",
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2",
    "us-west3", "us-west4",
]  # fmt: skip
"""Vertex AI's regions, from its "Vertex AI locations" page."""


@pytest.fixture(scope="module")
def train_to_serve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train-to-serve") / "pipeline.yaml"
    assert cli.main(["compile", "--output", str(path)]) == 0
    return path


def run_settings(template: Path, region: str = "europe-west4", **parameters) -> RunSettings:
    required = {
        "staging_bucket": "gs://b/staging",
        "batch_output_uri_prefix": "gs://b/out",
        "batch_gcs_source_uris": ["gs://b/in.jsonl"],
    }
    return RunSettings(template, "my-project", region, "gs://b/root", {**required, **parameters})


@pytest.mark.parametrize("region", VERTEX_REGIONS)
def test_every_vertex_region_is_accepted_and_becomes_the_location(
    train_to_serve: Path, region: str
) -> None:
    checked = check_settings(run_settings(train_to_serve, region))
    assert (checked["location"], checked["project"]) == (region, "my-project")


M = "projects/my-project/locations/europe-west4/models/123"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"project": "other-project"}, "project='other-project' differs from --project"),
        ({"location": "us-central1"}, "differs from --region 'europe-west4'"),
        ({"parent_model": "123"}, "parent_model='123' is not a resource name: give projects/"),
        ({"endpoint": "456"}, "projects/my-project/locations/europe-west4/endpoints/ID"),
        ({"parent_model": M.replace("models", "endpoints")}, "is not a resource name"),
        ({"parent_model": M.replace("europe-west4", "us-east1")}, "is in us-east1, not in"),
        ({"version_aliases": ["candidate", "Prod_v1"]}, "version alias 'Prod_v1'"),
        ({"version_aliases": ["x"]}, "2-128 characters"),
        ({"version_aliases": ["default"]}, "moves it to the new version only after its smoke"),
        ({"canary_traffic_percent": 150}, "canary_traffic_percent 150: a whole percent"),
        ({"promote": "half"}, "promote 'half': use one of all, canary"),
        ({"gate_metric": "acuracy"}, "gate_metric 'acuracy': a classification model's evaluation"),
    ],
)
def test_where_a_run_goes_is_checked_before_any_request(
    train_to_serve: Path, parameters: dict, message: str
) -> None:
    with pytest.raises(SubmitError, match=None) as caught:
        check_settings(run_settings(train_to_serve, **parameters))
    assert message in str(caught.value)


def test_cross_region_resources_only_when_allowed(train_to_serve: Path) -> None:
    settings = run_settings(train_to_serve, location="us-central1")
    settings.allow_cross_region = True
    assert check_settings(settings)["location"] == "us-central1"
    good = run_settings(train_to_serve, parent_model=M, version_aliases=["prod-v1"])
    assert check_settings(good)["parent_model"] == M


def test_submit_without_credentials_says_how_to_authenticate(
    train_to_serve: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.aiplatform import initializer

    def no_credentials(self):  # what google.auth.default() raises on a bare machine
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(initializer._Config, "credentials", property(no_credentials))
    code = cli.main(
        ["submit", "--project", "my-project", "--region", "europe-west4",
         "--pipeline-root", "gs://b/root", "--template", str(train_to_serve),
         "--param", "staging_bucket=gs://b/staging", "--param", "batch_output_uri_prefix=gs://b/o",
         "--param", 'batch_gcs_source_uris=["gs://b/in.jsonl"]']
    )  # fmt: skip

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Google Cloud credentials: authenticate with")
    assert "gcloud auth application-default login" in err and "Traceback" not in err


def test_the_runs_labels_also_label_the_model_endpoint_and_batch_job(train_to_serve: Path) -> None:
    settings = run_settings(train_to_serve)
    settings.labels = {"team": "ml"}
    assert check_settings(settings)["resource_labels"] == {"team": "ml"}
    settings.parameters["resource_labels"] = {"cost-center": "42"}  # given: kept as given
    assert check_settings(settings)["resource_labels"] == {"cost-center": "42"}


def test_submit_takes_deploy_and_batch_sizes_from_a_capacity_report(
    train_to_serve: Path, captured: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.pipelines.test_parameters import capacity_report

    report = capacity_report()
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps(report))
    args = ["submit", *RUN, "--template", str(train_to_serve), "--capacity", str(path)]
    args += ["--param", "staging_bucket=gs://b/staging", "--param", "batch_size=50"]
    args += ["--param", "batch_output_uri_prefix=gs://b/out"]
    args += ["--param", 'batch_gcs_source_uris=["gs://b/in.jsonl"]']
    assert cli.main(args) == 0
    values = dict(captured["job"]["job"].runtime_config.parameter_values)
    assert values["deploy_machine_type"] == report["machine_type"]
    assert values["deploy_min_replicas"] == report["deploy"]["min_replica_count"]
    assert values["deploy_max_replicas"] == report["deploy"]["max_replica_count"]
    assert values["deploy_autoscaling_target"] == report["deploy"]["autoscaling_target"]
    assert values["batch_machine_type"] == report["machine_type"]
    assert values["batch_replica_count"] == report["batch"]["replica_count"]
    assert values["batch_size"] == 50  # given: the run's own value wins
    assert "capacity: deploy_min_replicas: 7 from the capacity report" in capsys.readouterr().out


def test_an_advised_value_a_template_compiled_before_it_lacks_is_left_out_and_said(
    train_to_serve: Path, captured: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.pipelines.test_parameters import capacity_report

    old = yaml.safe_load(train_to_serve.read_text())
    del old["root"]["inputDefinitions"]["parameters"]["deploy_autoscaling_target"]
    template = tmp_path / "old.yaml"
    template.write_text(yaml.safe_dump(old))
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps(capacity_report()))
    args = ["submit", *RUN, "--template", str(template), "--capacity", str(path)]
    args += ["--param", "staging_bucket=gs://b/staging"]
    args += ["--param", "batch_output_uri_prefix=gs://b/out"]
    args += ["--param", 'batch_gcs_source_uris=["gs://b/in.jsonl"]']
    assert cli.main(args) == 0
    values = dict(captured["job"]["job"].runtime_config.parameter_values)
    assert "deploy_autoscaling_target" not in values
    assert values["deploy_min_replicas"] == 7
    out = capsys.readouterr().out
    assert "has no such parameter; compile it again with this version to apply it" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a readable capacity.json"),
        ('{"schema_version": 1}', "no 'machine_type' field"),
    ],
)
def test_submit_refuses_a_capacity_file_it_cannot_use(
    train_to_serve: Path,
    captured: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    content: str,
    message: str,
) -> None:
    path = tmp_path / "capacity.json"
    path.write_text(content)
    args = ["submit", *RUN, "--template", str(train_to_serve), "--capacity", str(path)]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert captured == {}

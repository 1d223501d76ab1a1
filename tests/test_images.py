"""The components image: named by digest when one is known, never silently by tag."""

import pytest
import yaml

import compile as cli
from components.images import pinned, repository_of

REPO = "europe-west4-docker.pkg.dev/p/train-to-serve/components"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        (f"{REPO}:0.1.0", REPO),
        (f"{REPO}@{DIGEST}", REPO),
        ("localhost:5000/components:1", "localhost:5000/components"),
        ("localhost:5000/components", "localhost:5000/components"),
    ],
)
def test_repository_of(reference: str, repository: str) -> None:
    assert repository_of(reference) == repository


def test_pinned_takes_the_digest_of_the_same_repository() -> None:
    other = f"docker.io/library/components@sha256:{'cd' * 32}"
    assert pinned(f"{REPO}:0.1.0", [other, f"{REPO}@{DIGEST}"]) == f"{REPO}@{DIGEST}"
    assert pinned(f"{REPO}:0.1.0", [other]) is None
    assert pinned(f"{REPO}@{DIGEST}", []) == f"{REPO}@{DIGEST}"


def test_compile_names_a_digest_as_given_and_warns_about_a_tag(tmp_path, capsys) -> None:
    by_digest = tmp_path / "digest.yaml"
    assert (
        cli.main(["compile", "--output", str(by_digest), "--components-image", f"{REPO}@{DIGEST}"])
        == 0
    )
    assert "named by tag" not in capsys.readouterr().err
    executors = yaml.safe_load(by_digest.read_text())["deploymentSpec"]["executors"]
    assert executors["exec-train"]["container"]["image"] == f"{REPO}@{DIGEST}"

    by_tag = tmp_path / "tag.yaml"
    assert (
        cli.main(["compile", "--output", str(by_tag), "--components-image", f"{REPO}:0.1.0"]) == 0
    )
    assert f"warning: the components image {REPO}:0.1.0 is named by tag" in capsys.readouterr().err

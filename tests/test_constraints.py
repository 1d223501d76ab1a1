"""The versions the project is tested with, in one place: ``components/constraints.txt``.

``scripts/setup.sh`` installs the development virtualenv with them and the components image
(``components/Dockerfile``) installs the project with them, so the trainer on Vertex runs what
the tests ran, and no upstream release reaches a run unannounced.
"""

from importlib import metadata

from components.imaging.context import serving_image_dir
from components.imaging.plan import SUPPORTED_VERSIONS, read_pinned_requirements
from tests.support import REPO_ROOT

CONSTRAINTS = REPO_ROOT / "components" / "constraints.txt"


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_this_virtualenv_was_installed_with_the_constraints() -> None:
    installed = {
        dist.metadata["Name"].lower().replace("_", "-"): dist.version
        for dist in metadata.distributions()
    }
    differing = {
        name: (version, installed.get(name))
        for name, version in constraints().items()
        if installed.get(name) != version
    }
    assert not differing, f"refresh components/constraints.txt or rerun setup: {differing}"


def test_the_trainer_and_the_serving_image_pin_the_same_model_libraries() -> None:
    pins = constraints()
    serving = read_pinned_requirements(serving_image_dir() / "requirements.txt")
    for name in SUPPORTED_VERSIONS:
        assert pins[name] == serving[name] == SUPPORTED_VERSIONS[name][1], name
    assert {"kfp", "google-cloud-pipeline-components", "google-cloud-aiplatform"} <= set(pins)


def test_the_components_image_and_setup_install_with_them() -> None:
    dockerfile = (REPO_ROOT / "components" / "Dockerfile").read_text()
    assert '-c components/constraints.txt ".[${EXTRAS}]"' in dockerfile
    assert '-c "$CONSTRAINTS" -e ".[$EXTRAS]"' in (REPO_ROOT / "scripts" / "setup.sh").read_text()

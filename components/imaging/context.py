"""The serving image's build context: laid out as a directory, or packed for Cloud Build.

A context holds the serving image's ``Dockerfile``, ``requirements*.txt`` (the ``FRAMEWORK``
build argument picks among them) and the ``server/`` package, and optionally a model
directory as ``model/`` (baked into the image at ``/model``) and the model's sample as
``check-sample/`` (for a contract check in the same build; the image does not copy it).
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from components.imaging.names import BuildImageInputError
from serving_image.server import artifact


def serving_image_dir() -> Path:
    """The ``serving_image`` directory (Dockerfile, requirements.txt, server/)."""
    import serving_image  # a plain package; importing it loads nothing else

    return Path(serving_image.__file__).resolve().parent


def assemble_build_context(
    dest: str | Path,
    model_dir: str | Path | None = None,
    *,
    source_dir: str | Path | None = None,
    pins: Mapping[str, str] | None = None,
) -> Path:
    """Lay out a serving-image build context in ``dest`` and return it.

    ``dest`` gets the ``Dockerfile``, ``.dockerignore`` (when present), the
    ``requirements*.txt`` files (the ``FRAMEWORK`` build argument picks among them) and the
    ``server/`` package from ``source_dir`` (default: ``serving_image_dir()``), and,
    when ``model_dir`` is given, a copy of it as ``model/`` (baked into the image at
    ``/model``). Without a model the image loads one from ``AIP_STORAGE_URI`` at start.
    ``pins`` (requirement -> version) replace the requirement file's pins, or are added to
    it (``pin_requirements``).
    ``dest`` must not exist or be empty.
    """
    source = Path(source_dir) if source_dir is not None else serving_image_dir()
    out = Path(dest)
    if out.exists() and any(out.iterdir()):
        raise BuildImageInputError(f"build context directory {out} is not empty")
    missing = [n for n in ("Dockerfile", "requirements.txt", "server") if not (source / n).exists()]
    if missing:
        raise BuildImageInputError(
            f"{source} lacks {missing}: the serving image sources are incomplete"
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "Dockerfile", out / "Dockerfile")
    for requirements in sorted(source.glob("requirements*.txt")):
        shutil.copy2(requirements, out / requirements.name)
    if pins:
        pin_requirements(out / "requirements.txt", pins)
    if (source / ".dockerignore").is_file():
        shutil.copy2(source / ".dockerignore", out / ".dockerignore")
    shutil.copytree(
        source / "server", out / "server", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    if model_dir is not None:
        model = Path(model_dir)
        if not model.is_dir():
            raise BuildImageInputError(f"model directory {model} does not exist")
        shutil.copytree(model, out / "model")
    return out


def pin_requirements(path: Path, pins: Mapping[str, str]) -> None:
    """Rewrite the requirements file at ``path`` with ``pins``' versions for those libraries,
    and add a line for each one it does not pin (a model library such as ``lightgbm``);
    when a pin differs from the file's, ``scipy`` is left for pip to match (scikit-learn's
    own dependency, built for a numpy range)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    wanted = {name.lower(): version for name, version in pins.items()}
    changed = False
    out = []
    for line in lines:
        name, sep, version = line.partition("==")
        key = name.strip().lower()
        if sep and key in wanted:
            pinned = wanted.pop(key)
            if pinned != version.strip():
                line, changed = f"{name.strip()}=={pinned}", True
        out.append(line)
    if wanted:
        out.append("# The model's own libraries (its manifest's versions), added by the build:")
        out += [f"{name}=={version}" for name, version in sorted(wanted.items())]
    if changed:
        out = [
            "scipy  # matched by pip to the model's numpy and scikit-learn"
            if line.partition("==")[0].strip().lower() == "scipy"
            else line
            for line in out
        ]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


CHECK_SAMPLE_DIR = "check-sample"
"""The context directory with the model's sample, for a check that runs in the build."""


def add_check_sample(context_dir: str | Path, model_dir: str | Path) -> str:
    """Copy the model's sample instances, expected predictions and manifest (whichever exist)
    into ``context_dir/CHECK_SAMPLE_DIR``; return that directory's path in the context."""
    sample = Path(context_dir) / CHECK_SAMPLE_DIR
    sample.mkdir()
    for name in (artifact.INSTANCES_FILE, artifact.EXPECTED_FILE, artifact.MANIFEST_FILE):
        if (Path(model_dir) / name).is_file():
            shutil.copy2(Path(model_dir) / name, sample / name)
    return CHECK_SAMPLE_DIR


def _reset_tar_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes for the same files: no owners or times; modes kept (scripts stay
    executable)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack_context(context_dir: str | Path, destination: str | Path) -> str:
    """Write ``context_dir``'s files as a reproducible ``.tar.gz`` (paths relative to the
    context, sorted; no owners, times or gzip timestamp) and return its sha256: the same
    context always gives the same bytes, so an unchanged context is not uploaded twice."""
    root = Path(context_dir)
    with (
        open(destination, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for path in sorted(root.rglob("*")):
            arcname = path.relative_to(root).as_posix()
            tar.add(path, arcname=arcname, recursive=False, filter=_reset_tar_info)
    return artifact.sha256_file(destination)

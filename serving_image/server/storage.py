"""Turn the model's location (a ``gs://`` directory or a local one) into a local directory.

On Vertex, ``AIP_STORAGE_URI`` is a ``gs://`` copy of the model's ``artifactUri`` that the
serving identity can read. Every worker process needs the files, but they are downloaded
once per container: the first worker takes a file lock and downloads into a staging
directory that is renamed into place when complete; the others wait on the lock and find
the directory there. A download that fails (after its retries) leaves its reason in a
``<dest>.failed`` file, and a worker that gets the lock after it fails at once with the same
reason: the container tries once, not once per worker in turn. A local path (a baked-in
``/model``, a mounted volume, a test directory) is used in place, without copying.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .logs import log_fields

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
DEFAULT_RETRY_S = 120
"""How long transient Cloud Storage failures are retried (the client library's default)."""


class StorageError(RuntimeError):
    """The model directory cannot be found or fetched; the message says where and why."""


def local_model_dir(
    source: str, download_root: Path, client: Any = None, retry_s: int = DEFAULT_RETRY_S
) -> Path:
    """Return a local directory holding the model files from ``source``.

    Args:
        source: ``gs://bucket/prefix`` or a local directory path.
        download_root: where ``gs://`` content is downloaded (shared by the workers).
        client: a ``google.cloud.storage.Client``; created with default credentials if None.
        retry_s: how long transient Cloud Storage failures are retried.
    """
    if source.startswith(GCS_SCHEME):
        return download_gcs_dir(source, download_root / "model", client, retry_s)
    path = Path(source)
    if not path.is_dir():
        raise StorageError(
            f"model directory {source!r} does not exist or is not a directory (set "
            "AIP_STORAGE_URI to a gs:// or local model directory, or SERVING_MODEL_DIR to "
            "the directory baked into the image)"
        )
    return path


def download_gcs_dir(
    uri: str, dest: Path, client: Any = None, retry_s: int = DEFAULT_RETRY_S
) -> Path:
    """Download every object under the ``gs://`` prefix ``uri`` into ``dest``, once.

    A failure to reach or read the bucket (after retrying transient ones for ``retry_s``)
    raises ``StorageError`` with the last cause in one line, not a library traceback.
    """
    # Heavy imports, only needed for gs://.
    from google.api_core.exceptions import GoogleAPIError, RetryError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket_name, _, prefix = uri[len(GCS_SCHEME) :].partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    retry = DEFAULT_RETRY.with_timeout(retry_s)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failed = dest.parent / f"{dest.name}.failed"
    with _exclusive_lock(dest.parent / f"{dest.name}.lock"):
        if dest.is_dir():  # another worker finished the download (the rename is the last step)
            return dest
        if failed.is_file():  # another worker tried and gave up: its reason stands
            raise StorageError(failed.read_text())
        staging = Path(tempfile.mkdtemp(prefix=f"{dest.name}.partial-", dir=dest.parent))
        try:
            client = client or storage.Client()
            count = 0
            for blob in client.list_blobs(bucket_name, prefix=prefix, retry=retry):
                relative = blob.name[len(prefix) :]
                if not relative or relative.endswith("/"):  # folder placeholder objects
                    continue
                if ".." in Path(relative).parts:
                    raise StorageError(f"refusing object name {blob.name!r} in {uri}")
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(target), retry=retry)
                count += 1
            if count == 0:
                raise StorageError(f"{uri} holds no objects; is it the model directory?")
            staging.rename(dest)
        except (GoogleAPIError, GoogleAuthError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            cause = exc.cause if isinstance(exc, RetryError) and exc.cause else exc
            retried = f" (retried for {retry_s:g} s)" if cause is not exc else ""
            reason = (
                f"cannot download the model from {uri}{retried}: {type(cause).__name__}: "
                f"{cause}. Check that the bucket exists, that the serving service account can "
                "read it and that the network reaches Cloud Storage"
            )
            failed.write_text(reason)
            raise StorageError(reason) from None
        except StorageError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            failed.write_text(str(exc))
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("downloaded the model directory", extra=log_fields(uri=uri, files=count))
    return dest


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

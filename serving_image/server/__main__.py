"""Entry point: ``python -m server`` in the image, ``python -m serving_image.server`` on a host.

Reads the configuration (a bad value stops the process with exit status 2 and one log line
that names the variable), then runs the gunicorn master in the foreground until SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .config import Config, ConfigError
from .logs import configure_logging, log_fields
from .serve import ServingApplication

log = logging.getLogger(__name__)

SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""One BLAS/OpenMP thread per worker unless set: workers already use every core."""


def main() -> int:
    """Run the server; return the process exit status."""
    configure_logging()
    try:
        config = Config.from_env()
    except ConfigError as exc:
        log.critical(f"invalid configuration: {exc}")
        return 2
    configure_logging(config.log_level)
    for name in SINGLE_THREAD_ENV:
        os.environ.setdefault(name, "1")
    log.info(
        "starting model server",
        extra=log_fields(
            port=config.port,
            health_route=config.health_route,
            predict_route=config.predict_route,
            model_source=config.model_source,
            workers=config.workers,
        ),
    )
    # Shared by the workers: the gs:// download, its lock, the "failure logged" marker.
    runtime_dir = Path(tempfile.mkdtemp(prefix="model-server-"))
    master_pid = os.getpid()
    try:
        ServingApplication(config, runtime_dir).run()
    finally:
        if os.getpid() == master_pid:  # workers leave through this frame too, after fork
            shutil.rmtree(runtime_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

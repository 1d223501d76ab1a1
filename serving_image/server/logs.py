"""JSON-lines logging to stdout, in the shape Cloud Logging turns into structured entries.

Each record is one line: ``{"time": ..., "severity": ..., "message": ..., "logger": ...,
"pid": ...}`` plus any ``extra={"fields": {...}}`` the caller attached, plus ``exception``
(the formatted traceback) when there is one. Cloud Logging maps ``severity`` and
``message`` onto the entry and reads ``time`` as an RFC 3339 timestamp (its ``timestamp``
key expects a ``{seconds, nanos}`` object, so the string goes under ``time``).

Everything goes to stdout: Python's default handler writes to stderr, which Vertex shows at
ERROR severity whatever the record says.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

FIELDS_ATTR = "fields"
"""Name of the ``extra`` key whose dict is merged into the JSON line."""

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=repr).decode()


def json_handler() -> logging.Handler:
    """A stdout handler with the JSON formatter; each line is written with one ``write``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    return handler


def configure_logging(level: str = "info") -> None:
    """Route the root logger (and ``warnings``) through one JSON handler on stdout."""
    root = logging.getLogger()
    root.handlers = [json_handler()]
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def log_fields(**fields: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` argument that adds ``fields`` to a record's JSON line."""
    return {FIELDS_ATTR: fields}

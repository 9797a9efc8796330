"""JSON log lines for the served application, the same in every uvicorn worker.

Our access log (``certvault.access``, written by the AccessLog middleware) replaces uvicorn's,
which would print request lines with their query strings. An exception is logged by its type and
frames only: its message may carry submitted data (DESIGN.md §5.7).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "certvault.access"
_MAX_MESSAGE = 2000


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid and the message. An access-log message
    (already a JSON object) is merged in as fields, so each request is one flat object."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
        }
        message = record.getMessage()
        fields = _json_object(message) if record.name == ACCESS_LOGGER else None
        if fields is not None:
            line.update({k: v for k, v in fields.items() if k not in line})
        else:
            line["message"] = message[:_MAX_MESSAGE]
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
            # Frames (file, line, function, source line): never the message or the locals.
            line["frames"] = traceback.format_tb(record.exc_info[2])[-20:]
        return json.dumps(line, ensure_ascii=False, default=str)


def _json_object(message: str) -> dict[str, Any] | None:
    if not message.startswith("{"):
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: uvicorn applies it in the
    supervisor and again in every worker it spawns."""
    handler = ["json"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "certvault": {"handlers": handler, "level": level, "propagate": False},
            "uvicorn": {"handlers": handler, "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # Off: its lines carry query strings; certvault.access replaces it.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            # At TRACE it would print ASGI messages, bodies included: never below WARNING here.
            "uvicorn.asgi": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": handler, "level": "WARNING"},
    }

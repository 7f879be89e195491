"""Logging for every `capsuled` process: plain text lines or one JSON object per line
(`log_format`), and the request id that lines logged while handling a request carry.

A leaf like `errors`: the API's middleware sets `REQUEST_ID` for the request it handles
(a context variable, so it follows the request into the threads its handler runs in and
never leaks into another request's lines); the composition root calls `setup`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

LogFormat = Literal["text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("capsuled_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and
    request_id when the record was logged inside a request; exception holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument of any type still makes a line, never a crash.
        return json.dumps(line, ensure_ascii=False, default=str)


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record. A filter on the handler, not on a
    logger: it sees the records of every logger, in the thread that logged them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def setup(level: str, fmt: LogFormat = "text", file: Path | None = None) -> None:
    """The root logger writes to stderr, or appends to `file`, in `fmt` at `level`
    (replacing earlier handlers). A file is reopened when it is moved or removed (logrotate
    without copytruncate): no line is lost or written to the rotated file."""
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)

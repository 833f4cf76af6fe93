"""Logging set-up: text for a terminal, JSON for collectors (LOG_FORMAT).

Records may carry context as `extra` (request_id, user_id, session_id, connection, client,
status, code); both formats print what is there, JSON as fields, text as `key=value` after
the message, and every record carries the node id. Nothing here ever logs a token: the
access log gets paths without query strings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

CONTEXT = ("request_id", "user_id", "session_id", "connection", "client", "status", "code",
           "task")


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(), "node_id": self._node,
        }
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT
                           if getattr(record, k, None) is not None)
        if not context:
            return text
        head, sep, rest = text.partition("\n")  # after the message, before a traceback
        return f"{head} [{context}]{sep}{rest}"


def configure(*, level: str, fmt: str, node_id: str) -> None:
    """Root logging for the process. `fmt`: text, json, or auto (text on a terminal)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")

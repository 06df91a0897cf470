"""Logging for every process: one JSON object per line, or plain text for a terminal (LOG_FORMAT).

Job lines carry their facts as `extra` fields (job, model, attempt, duration_ms...), which the JSON
formatter emits as keys. Nothing logs API keys or prompt text at INFO.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.settings import Settings

# Attributes every LogRecord has; anything else was passed through `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the extra fields stay visible in a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{key}={value}" for key, value in vars(record).items() if key not in _STANDARD)
        return f"{text} {extra}" if extra else text


def configure_logging(settings: Settings) -> None:
    """Root handler on stderr in the LOG_FORMAT of the settings, at LOG_LEVEL."""
    use_json = settings.LOG_FORMAT == "json" or (settings.LOG_FORMAT == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    # arq logs every job start and end with its arguments (our key ids), at INFO: ours say more.
    logging.getLogger("arq.worker").setLevel(max(logging.WARNING, root.level))

"""Structured logs: one JSON object per line on standard error, without personal data.

``configure`` installs one handler on the root logger (uvicorn's loggers propagate to it).
Each line carries ``ts``, ``level``, ``logger``, ``message`` and any ``extra`` fields a call
adds (ids, counts, states). Unless ``MAILMAG_LOG_PERSONAL_DATA`` is set for debugging, every
line is cleaned before it is written: e-mail addresses become ``<address>``, the tokens in
link paths (``/u/...``, ``/preferences/...``, ``/confirm/...``, ``/erase/...``) become
``<token>``, and the client address of an access-log line is left out. ``MAILMAG_LOG_FORMAT=
text`` gives plain lines for a terminal, cleaned the same way.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
LINK_TOKEN = re.compile(r"(/(?:u|preferences|confirm|erase|processor/v1/[\w-]+)/)[^/\s?\"']+")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}
QUIET = {"mail.log": logging.WARNING}  # aiosmtpd logs every peer address at INFO


def clean(text: str) -> str:
    """The text with addresses and link tokens replaced."""
    return LINK_TOKEN.sub(r"\1<token>", ADDRESS.sub("<address>", text))


class JSONFormatter(logging.Formatter):
    def __init__(self, *, personal_data: bool = False) -> None:
        super().__init__()
        self.personal_data = personal_data

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            client, method, path, _version, status = (record.args + ("",) * 5)[:5]
            entry |= {"message": "request", "method": method, "path": path, "status": status}
            if self.personal_data:
                entry["client"] = client
        else:
            entry["message"] = record.getMessage()
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        return line if self.personal_data else clean(line)


class CleanTextFormatter(logging.Formatter):
    def __init__(self, *, personal_data: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.personal_data = personal_data

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if self.personal_data else clean(line)


def configure(*, fmt: str = "json", level: str = "INFO", personal_data: bool = False) -> None:
    """Send every log record, mailmag's and uvicorn's, through one cleaned handler."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JSONFormatter(personal_data=personal_data)
        if fmt == "json"
        else CleanTextFormatter(personal_data=personal_data)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name, quiet_level in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet_level, root.level))

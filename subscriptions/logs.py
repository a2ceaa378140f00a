"""Structured logs: one JSON object per line on standard error, without personal data.

``configure`` installs one handler on the root logger (uvicorn's loggers propagate to it).
Each line carries ``ts``, ``level``, ``logger``, ``message`` and any ``extra`` fields a call
adds (ids, counts, states). Unless ``MAILMAG_LOG_PERSONAL_DATA`` is set for debugging, no
address, token or client address is logged, by two means:

- every record is cleaned as it is made (a log record factory): its message and its string
  arguments lose their addresses and tokens (``mailer.redact``: the tokens in link paths,
  ``/u/``, ``/preferences/``, ``/confirm/``, ``/erase/``, ``/verify/``, ``/disclosure/``, and
  the delivery tokens of return paths and Message-IDs), so no handler, ours or one an
  operator adds, ever sees them;
- every line is cleaned again as it is written, with what only formatting brings in: an
  exception's text and traceback (a database error quotes the values it refused), the
  ``extra`` fields; the client address of an access-log line is left out.

A verification or disclosure link in the log would let a reader of the log download the
person's data bundle: that is why this is done at the root, for every logger.
``MAILMAG_LOG_FORMAT=text`` gives plain lines for a terminal, cleaned the same way.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from mailer.redact import redact

_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}
QUIET = {"mail.log": logging.WARNING}  # aiosmtpd logs every peer address at INFO


def clean(text: str) -> str:
    """The text with addresses and tokens replaced."""
    return redact(text)


def _cleaned(value: object) -> object:
    """An argument of a record without addresses or tokens. An object (a URL, an address
    object) is replaced by its cleaned text only when its text held any."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float | bytes):
        return value
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class CleanRecords:
    """A log record factory that makes every record without addresses or tokens: it wraps
    the factory in place when installed, and is installed once."""

    def __init__(self, made: Callable[..., logging.LogRecord]) -> None:
        self.made = made

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.made(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_cleaned(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _cleaned(arg) for key, arg in record.args.items()}
        return record


def clean_every_record(on: bool) -> None:
    """Install (or remove) ``CleanRecords`` as the process's log record factory."""
    factory = logging.getLogRecordFactory()
    if on and not isinstance(factory, CleanRecords):
        logging.setLogRecordFactory(CleanRecords(factory))
    elif not on and isinstance(factory, CleanRecords):
        logging.setLogRecordFactory(factory.made)


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


def configure(
    *,
    fmt: str = "json",
    level: str = "INFO",
    personal_data: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Send every log record, mailmag's and uvicorn's, through one cleaned handler (on
    ``stream``, standard error by default)."""
    clean_every_record(not personal_data)
    handler = logging.StreamHandler(stream or sys.stderr)
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

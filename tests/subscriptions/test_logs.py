"""Log lines are JSON objects without addresses, link tokens or client addresses, unless the
debug setting keeps them."""

from __future__ import annotations

import json
import logging

from subscriptions.logs import CleanTextFormatter, JSONFormatter


def record(
    message: str, *args: object, name: str = "mailmag", **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_line_is_json_with_its_extra_fields_and_no_personal_data() -> None:
    line = JSONFormatter().format(
        record("mail to %s via /preferences/%s failed", "ann@example.org", "abc.DEF-1", issue_id=7)
    )
    entry = json.loads(line)
    assert entry["message"] == "mail to <address> via /preferences/<token> failed"
    assert entry["issue_id"] == 7
    assert entry["level"] == "info"
    assert "ann@example.org" not in line


def test_access_lines_keep_method_path_and_status_but_not_the_client() -> None:
    access = record(
        '%s - "%s %s HTTP/%s" %d',
        "192.0.2.44:5555",
        "POST",
        "/u/sometoken?lang=ja",
        "1.1",
        200,
        name="uvicorn.access",
    )
    entry = json.loads(JSONFormatter().format(access))
    assert entry == entry | {"message": "request", "method": "POST", "status": 200}
    assert entry["path"] == "/u/<token>?lang=ja"
    assert "client" not in entry
    debug = json.loads(JSONFormatter(personal_data=True).format(access))
    assert debug["client"] == "192.0.2.44:5555"
    assert debug["path"] == "/u/sometoken?lang=ja"


def test_text_lines_are_cleaned_too() -> None:
    line = CleanTextFormatter().format(record("bounce from bob@example.com"))
    assert line.endswith("mailmag: bounce from <address>")

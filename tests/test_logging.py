"""Error logs: readable tracebacks, no row contents, secrets still masked.

A forced database error goes through the vault's own ``Database`` on both backends and is
logged through the formatters the server installs; the captured line must show every frame
of the traceback as Python printed it, and none of the values the failing statement carried.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from grantvault_server.observability import ConsoleFormatter, JsonFormatter
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import apps

#: A value no traceback may show: it stands for a ciphertext, an id or any row content.
ROW_SECRET = "row-content-7f3a9c1e"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger with the server's JSON and console formatters on two in-memory streams."""
    logger = logging.getLogger(f"test.logging.{uuid.uuid4().hex}")
    logger.propagate = False
    json_out, console_out = io.StringIO(), io.StringIO()
    for stream, formatter in (
        (json_out, JsonFormatter()),
        (console_out, ConsoleFormatter("%(levelname)s %(name)s: %(message)s")),
    ):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    yield logger, json_out, console_out
    logger.handlers.clear()


def _frames_intact(logged: str, exc: BaseException) -> None:
    """Every frame and source line Python printed is in the logged text, byte for byte."""
    printed = "".join(traceback.format_exception(exc))
    frame_lines = [
        line
        for line in printed.splitlines()
        if line.lstrip().startswith('File "') or line.startswith("    ")
    ]
    assert frame_lines
    logged_lines = logged.splitlines()
    for line in frame_lines:
        assert line in logged_lines, line


async def _duplicate_app_row(vault: Vault) -> BaseException:
    """Insert an app row whose id already exists: a real constraint error, values attached."""
    now = datetime.now(UTC)
    async with vault.db.write() as conn:
        await conn.execute(sa.insert(apps).values(id=ROW_SECRET, name="a", created_at=now))
    try:
        async with vault.db.write() as conn:
            await conn.execute(
                sa.insert(apps).values(id=ROW_SECRET, name=f"{ROW_SECRET}-b", created_at=now)
            )
    except Exception as exc:
        return exc
    raise AssertionError("the duplicate insert succeeded")


async def test_a_database_error_is_logged_readable_and_without_row_contents(
    vault: Vault, captured: tuple[logging.Logger, io.StringIO, io.StringIO]
) -> None:
    exc = await _duplicate_app_row(vault)
    # The engines hide statement parameters (hide_parameters), so no formatter is the only
    # guard: an exporter that formats the exception itself sees no values either.
    raw = "".join(traceback.format_exception(exc))
    assert "[parameters: " not in raw and "hide_parameters" in raw
    logger, json_out, console_out = captured
    logger.error("unexpected error", exc_info=exc)
    entry = json.loads(json_out.getvalue())
    logged = entry["exc"]
    assert ROW_SECRET not in json_out.getvalue()
    assert ROW_SECRET not in console_out.getvalue()
    assert logged.startswith("Traceback (most recent call last):")
    assert "IntegrityError" in logged  # the operator still sees what failed, and where
    _frames_intact(logged, exc)
    _frames_intact(console_out.getvalue(), exc)


#: Built at run time: a secret is data, never in the source lines a traceback shows.
API_KEY = "-".join(("sk", "live", "abcdef1234567890"))
PASSWORD = "hunter2" * 2


def _fail_with_a_secret(api_key: str, password: str) -> None:
    token = f"Bearer {api_key}"
    raise RuntimeError(f"upstream refused Authorization: {token} (password={password})")


def test_redaction_masks_secrets_in_messages_and_leaves_traceback_lines_intact(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, json_out, console_out = captured
    try:
        _fail_with_a_secret(API_KEY, PASSWORD)
    except RuntimeError as exc:
        logger.exception(f"call failed with token={API_KEY}", extra={"token": "t0p"})
        raised: BaseException = exc
    entry = json.loads(json_out.getvalue())
    for text in (json_out.getvalue(), console_out.getvalue()):
        assert API_KEY not in text and PASSWORD not in text
    assert entry["token"] == "[redacted]" and "[redacted]" in entry["msg"]
    # The source lines mention token/password (code, not data): they stay as Python printed
    # them, one per line, instead of being "redacted" into garbage.
    _frames_intact(entry["exc"], raised)
    _frames_intact(console_out.getvalue(), raised)
    source = (
        '    raise RuntimeError(f"upstream refused Authorization: {token} (password={password})")'
    )
    assert source in entry["exc"].splitlines()
    last = entry["exc"].splitlines()[-1]
    assert last.startswith("RuntimeError: upstream refused") and "[redacted]" in last


def test_driver_detail_lines_and_argument_errors_are_hidden() -> None:
    """PostgreSQL's DETAIL and asyncpg's argument errors quote values; the log does not."""
    try:
        raise ValueError(
            "duplicate key value violates unique constraint\n"
            f"DETAIL:  Key (id)=({ROW_SECRET}) already exists.\n"
            f"invalid input for query argument $2: '{ROW_SECRET}' (expected str)"
        )
    except ValueError:
        record = logging.makeLogRecord(
            {"msg": "x", "levelname": "ERROR", "exc_info": sys.exc_info()}
        )
    line = JsonFormatter().format(record)
    assert ROW_SECRET not in line
    assert "duplicate key value violates unique constraint" in line

"""Structured JSON logs with secrets redacted, and the Prometheus metrics of one server."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Anything shaped like a credential is masked in every log line, whatever logged it.
_SECRET_PATTERNS = [
    re.compile(r"alter_(?:rk|ak|dk|pk)_[a-z2-7]{22}_[a-z2-7]{6}"),
    re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|token|secret|password|signature)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,]{4,}"
    ),
]
#: ``extra`` keys whose values are credentials whatever they look like.
_SECRET_KEY = re.compile(r"(?i)(api[_-]?key|token|secret|password|signature)")
_RESERVED = set(vars(logging.makeLogRecord({})))

# Lines of a traceback that are code, not data: "  File ..., line N, in f" and the source
# and caret lines indented under it. Only the other lines (exception messages) can carry
# values, so only they are redacted: redacting code garbled it ("token = [redacted]").
_FRAME = re.compile(r'^(\s*)File ".*", line \d+, in ')
_CODE_LINE = re.compile(r"^(Traceback \(most recent call last\):|\s*\[Previous line repeated)")
# Database errors quote row contents: SQLAlchemy appends the statement's parameters, and
# PostgreSQL's DETAIL line or asyncpg's argument errors quote the offending values.
_ROW_CONTENTS = [
    (re.compile(r"\[parameters: .*\]"), "[parameters hidden]"),
    (re.compile(r"^(\s*DETAIL:).*$"), r"\1 [hidden: it quotes row values]"),
    (re.compile(r"(?i)(Failing row contains).*$"), r"\1 [hidden]"),
    (re.compile(r"(?i)(invalid input for query argument \$\d+:).*$"), r"\1 [hidden]"),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) + " " if m.lastindex else "") + "[redacted]", text)
    return text


def redact_traceback(text: str) -> str:
    """A formatted traceback with its code intact and its exception messages cleaned.

    Frame lines and source lines stay byte for byte (they are code, and an operator needs
    them readable); message lines lose SQL parameters and quoted row values, then secrets.
    """
    lines: list[str] = []
    frame_indent: int | None = None
    for line in text.split("\n"):
        frame = _FRAME.match(line)
        if frame:
            frame_indent = len(frame.group(1))
            lines.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        if frame_indent is not None and line.strip() and indent > frame_indent:
            lines.append(line)  # the source line or the ^^^^ markers of the frame above
            continue
        frame_indent = None
        if _CODE_LINE.match(line):
            lines.append(line)
            continue
        for pattern, replacement in _ROW_CONTENTS:
            line = pattern.sub(replacement, line)
        lines.append(redact(line))
    return "\n".join(lines)


def _clean(key: str, value: Any) -> Any:
    """A log field made safe: credential-named fields masked, strings redacted, recursively."""
    if _SECRET_KEY.search(key) and isinstance(value, str | bytes) and value:
        return "[redacted]"
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(key, v) for v in value]
    return redact(str(value))


class _SafeFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return redact_traceback(super().formatException(ei))


class JsonFormatter(_SafeFormatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields.

    Each field is redacted before encoding, not the encoded line: in JSON a traceback's
    line breaks are ``\\n``, which the secret patterns ran through, eating the next line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = _clean(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(_SafeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        # Not ``super().format``: it reuses ``record.exc_text`` that another handler may
        # have cached unredacted.
        record.message = record.getMessage()
        text = redact(self.formatMessage(record))
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else ConsoleFormatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs full URLs at INFO; keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class Metrics:
    """Metrics of one app instance (own registry: several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "grantvault_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "grantvault_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.retrievals = Counter(
            "grantvault_credential_retrievals_total",
            "Credential retrievals by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "grantvault_retrieval_commit_batch_size",
            "Retrievals committed together by one group-commit transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.oauth_refreshes = Counter(
            "grantvault_oauth_refreshes_total",
            "OAuth token refreshes that reached a provider, by outcome "
            "(success, transient_failure, credential_revoked, config_error).",
            ["outcome"],
            registry=self.registry,
        )
        self.denials = Counter(
            "grantvault_denials_total",
            "Refused requests by error code.",
            ["code"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "grantvault_rate_limited_total",
            "Requests refused with 429 rate_limit_exceeded, by budget (api_key, app, ip).",
            ["scope"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "grantvault_requests_in_flight",
            "Requests admitted and being worked on (at most GRANTVAULT_MAX_IN_FLIGHT).",
            registry=self.registry,
        )
        self.queued = Gauge(
            "grantvault_requests_queued",
            "Requests waiting for admission.",
            registry=self.registry,
        )

"""Structured JSON logs with secrets redacted, and the Prometheus metrics of one server."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# Anything shaped like a credential is masked in every log line, whatever logged it.
_SECRET_PATTERNS = [
    re.compile(r"alter_(?:rk|ak|dk|pk)_[a-z2-7]{22}_[a-z2-7]{6}"),
    re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|token|secret|password|signature)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,]{4,}"
    ),
]
_RESERVED = set(vars(logging.makeLogRecord({})))


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) + " " if m.lastindex else "") + "[redacted]", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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

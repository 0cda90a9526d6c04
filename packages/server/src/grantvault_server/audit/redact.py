"""Redaction of secret-bearing values before they reach the audit trail or a log line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[redacted]"

#: Query parameter and header names whose values are credentials or may be.
_SENSITIVE_NAME = re.compile(
    r"(key|token|secret|sig|signature|password|passwd|auth|credential|session|code|cookie)",
    re.IGNORECASE,
)
_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"}
)


def is_sensitive_name(name: str) -> bool:
    return bool(_SENSITIVE_NAME.search(name))


def redact_url(url: str, max_length: int = 2048) -> str:
    """Drop userinfo and fragment, and redact the values of credential-like query parameters."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "[unparseable url]"
    host = parts.hostname or ""
    netloc = host if port is None else f"{host}:{port}"
    if ":" in host:
        netloc = f"[{host}]" if port is None else f"[{host}]:{port}"
    # Encode pair by pair so the marker stays readable ("[redacted]", not "%5Bredacted%5D").
    query = "&".join(
        urlencode([(k, "")]) + REDACTED if is_sensitive_name(k) else urlencode([(k, v)])
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    clean = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return clean[:max_length]


def redact_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Keep header names; replace credential-bearing values."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lowered = str(name).lower()
        sensitive = lowered in _SENSITIVE_HEADERS or lowered.startswith("x-amz-")
        out[str(name)[:128]] = (
            REDACTED if sensitive or is_sensitive_name(lowered) else str(value)[:1024]
        )
    return out

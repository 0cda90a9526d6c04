"""Checks on caller input, run before any I/O; each failure is an ``AlterValueError``."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from grantvault._constants import (
    LOOPBACK_HOSTS,
    MAX_CALLER_LENGTH,
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_KEY_LENGTH,
    MAX_CONTEXT_KEYS,
    MAX_CONTEXT_VALUE_LENGTH,
    MAX_PROVIDER_URL_LENGTH,
)
from grantvault.exceptions import AlterSDKError, AlterValueError
from grantvault.models import GrantPolicyInput

#: RFC 9110 ``token``: what a header field name may be.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PATH_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]+\Z")


def canonical_uuid(value: object, name: str) -> str:
    """``value`` if it is a canonical (lower-case, hyphenated) UUID string."""
    if isinstance(value, str):
        try:
            if str(uuid.UUID(value)) == value.lower() and len(value) == 36:
                return value.lower()
        except ValueError:
            pass
    raise AlterValueError(f"{name} must be a UUID such as 3f2b...-...; got {value!r}")


def optional_text(value: object, name: str, *, max_length: int = 1024) -> str | None:
    """``None`` or a non-empty string of at most ``max_length`` characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise AlterValueError(f"{name} must be a non-empty string when given")
    if len(value) > max_length:
        raise AlterValueError(f"{name} is longer than {max_length} characters")
    return value


def flag(value: object, name: str) -> bool:
    """A real ``bool`` (a truthy string such as ``"false"`` would invert intent)."""
    if not isinstance(value, bool):
        raise AlterValueError(f"{name} must be True or False")
    return value


def positive_number(value: object, name: str) -> float:
    """A finite number greater than zero (bools refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise AlterValueError(f"{name} must be a finite number greater than 0")
    return float(value)


def caller_label(value: object, name: str = "caller") -> str:
    """An audit caller label: printable ASCII, at most 255 characters."""
    if not isinstance(value, str) or not value:
        raise AlterValueError(f"{name} must be a non-empty string")
    if len(value) > MAX_CALLER_LENGTH:
        raise AlterValueError(f"{name} is longer than {MAX_CALLER_LENGTH} characters")
    if not _PRINTABLE.match(value):
        raise AlterValueError(f"{name} may contain printable ASCII only")
    return value


def context_header(context: object) -> str | None:
    """The ``X-Alter-Context`` value for an audit context (``None`` when empty)."""
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise AlterValueError(f"context must be a dict[str, str], got {type(context).__name__}")
    if not context:
        return None
    if len(context) > MAX_CONTEXT_KEYS:
        raise AlterValueError(f"context has {len(context)} keys; at most {MAX_CONTEXT_KEYS}")
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise AlterValueError("context keys and values must be strings")
        if len(key) > MAX_CONTEXT_KEY_LENGTH:
            raise AlterValueError(
                f"context key {key[:32]!r} is over {MAX_CONTEXT_KEY_LENGTH} chars"
            )
        if len(value) > MAX_CONTEXT_VALUE_LENGTH:
            raise AlterValueError(
                f"context value of {key!r} is over {MAX_CONTEXT_VALUE_LENGTH} characters"
            )
    encoded = json.dumps(dict(context), separators=(",", ":"))
    if len(encoded.encode()) > MAX_CONTEXT_BYTES:
        raise AlterValueError(f"context is over {MAX_CONTEXT_BYTES} bytes once encoded")
    return encoded


def fill_path_params(url: str, path_params: object) -> str:
    """Replace each ``{name}`` with its percent-encoded value; refuse any brace left over."""
    if path_params is not None:
        if not isinstance(path_params, Mapping) or not all(
            isinstance(k, str) and _PATH_PARAM_NAME.match(k) and isinstance(v, str)
            for k, v in path_params.items()
        ):
            raise AlterValueError("path_params must map identifiers to string values")
        for key, value in path_params.items():
            url = url.replace("{" + key + "}", quote(value, safe=""))
    if "{" in url or "}" in url:
        missing = re.search(r"\{([^{}]*)\}", url)
        name = f" {missing.group(1)!r}" if missing else ""
        raise AlterValueError(f"url has an unfilled or malformed path parameter{name}")
    return url


def provider_url(url: object, query_params: object) -> str:
    """Check a provider URL: https (http only on loopback), a host, bounded length."""
    if not isinstance(url, str) or not url:
        raise AlterValueError("url must be a non-empty absolute URL")
    if query_params is not None and not isinstance(query_params, Mapping):
        raise AlterValueError("query_params must be a dict")
    try:
        parsed = httpx.URL(url)
        full = parsed
        if query_params:
            extra = urlencode(
                [(str(k), _query_value(x)) for k, x in _query_items(query_params)], quote_via=quote
            )
            query = parsed.query.decode()
            full = parsed.copy_with(query=(f"{query}&{extra}" if query else extra).encode())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise AlterValueError(f"url is not a valid URL: {exc}") from None
    if not parsed.host:
        raise AlterValueError("url must be absolute, with a host")
    if parsed.scheme == "http" and parsed.host.lower() not in LOOPBACK_HOSTS:
        raise AlterValueError("url must use https (http only for localhost, 127.0.0.1 or ::1)")
    if parsed.scheme not in {"http", "https"}:
        raise AlterValueError("url must use https")
    if len(str(full)) > MAX_PROVIDER_URL_LENGTH:
        raise AlterValueError(f"url with its query is longer than {MAX_PROVIDER_URL_LENGTH:,}")
    return str(full)


def _query_items(params: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    items: list[tuple[Any, Any]] = []
    for key, value in params.items():
        if isinstance(value, list | tuple):
            items.extend((key, item) for item in value)
        else:
            items.append((key, value))
    return items


def _query_value(value: object) -> str:
    """Query values as httpx writes them (``true``/``false``, ``""`` for ``None``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TypeError(f"query_params values must be str, int, float, bool or None: {value!r}")


def header_map(headers: object, name: str = "extra_headers") -> dict[str, str]:
    """Header names must be RFC 9110 tokens and values single-line strings."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise AlterValueError(f"{name} must be a dict[str, str]")
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not _TOKEN.match(key):
            raise AlterValueError(f"{name} has an invalid header name {key!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise AlterValueError(f"{name}[{key!r}] must be a single-line string")
        out[key] = value
    return out


def json_body(value: Any) -> bytes:
    """Compact JSON of a ``json=`` argument; refuses NaN, infinities and custom objects."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise AlterValueError(
            "json must be JSON-serialisable with finite numbers (no NaN, Infinity, custom objects)"
        ) from exc


def grant_policy(value: object) -> dict[str, Any] | None:
    """A grant policy (dict or :class:`GrantPolicyInput`) in its wire form."""
    if value is None:
        return None
    if isinstance(value, GrantPolicyInput):
        return value.model_dump(mode="json", exclude_none=True)
    if not isinstance(value, Mapping):
        raise AlterValueError("grant_policy must be a dict or GrantPolicyInput")
    for key in ("max_ttl_seconds", "default_ttl_seconds"):
        if key in value and (isinstance(value[key], bool) or not isinstance(value[key], int)):
            raise AlterValueError(f"grant_policy.{key} must be a whole number of seconds")
    try:
        return GrantPolicyInput(**dict(value)).model_dump(mode="json", exclude_none=True)
    except ValueError as exc:
        raise AlterValueError(f"grant_policy is invalid: {exc}") from None


def base_url(value: str) -> str:
    """The vault URL: http(s), no credentials, query or fragment; http only on loopback."""
    normalized = value.strip().rstrip("/")
    try:
        parts = urlsplit(normalized)
        _ = parts.port
    except ValueError:
        raise AlterSDKError(f"The vault URL {value!r} is not a valid URL.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise AlterSDKError(f"The vault URL must be http(s)://host[:port]; got {value!r}.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise AlterSDKError("The vault URL must not carry credentials, a query or a fragment.")
    if parts.scheme == "http" and parts.hostname.lower() not in LOOPBACK_HOSTS:
        raise AlterSDKError(
            "The vault URL must use https:// (http:// only for localhost, 127.0.0.1 or ::1)."
        )
    return normalized

"""Credential injection (wire-protocol §2.7) and the post-call audit row (§2.8). No I/O.

The vault's token answer says where the credential goes; this module checks that answer
before any credential is placed anywhere (a malformed answer is a ``BackendError`` and no
provider is called), then computes the provider request's headers, query and body.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from grantvault import _sigv4
from grantvault._constants import MAX_AUDIT_BODY_BYTES
from grantvault.exceptions import BackendError
from grantvault.models import RetryInfo

_HEADER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_INJECTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_VALUE_SOURCE = re.compile(r"^(token|additional_credentials\.[a-z][a-z0-9_]*)$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:[0-5]\d)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "cookie",
        "set-cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-http-method-override",
        "x-method-override",
        "www-authenticate",
        "strict-transport-security",
        "content-security-policy",
    }
)
#: Headers never copied into an audit row, whatever injected them.
SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    }
)


def _bad(what: str) -> BackendError:
    return BackendError(f"The vault returned an invalid token answer ({what}); nothing was sent.")


def _canonical_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@dataclass(frozen=True)
class Injection:
    """A validated ``/sdk/token`` answer: the credential and where it goes."""

    access_token: str
    grant_id: str
    provider_id: str
    header: str
    format: str
    additional_credentials: dict[str, str] | None
    additional_injections: list[dict[str, str]]
    scope_mismatch: bool
    token_generation: str | None
    retry_info: RetryInfo | None

    @property
    def is_sigv4(self) -> bool:
        """Whether the credential is an AWS key pair to sign with."""
        return self.format.startswith(_sigv4.ALGORITHM) and self.additional_credentials is not None


def parse_token_answer(data: object) -> Injection:
    """Validate the vault's token answer; raise ``BackendError`` on anything malformed."""
    if not isinstance(data, dict):
        raise _bad("not an object")
    token = data.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\x00"):
        raise _bad("access_token")
    grant_id = data.get("grant_id")
    if not _canonical_uuid(grant_id):
        raise _bad("grant_id")
    assert isinstance(grant_id, str)
    provider_id = data.get("provider_id", "")
    if not isinstance(provider_id, str) or _CONTROL.search(provider_id) or len(provider_id) > 255:
        raise _bad("provider_id")
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type.strip() or _CONTROL.search(token_type):
        raise _bad("token_type")
    expires_in = data.get("expires_in")
    if expires_in is not None and (type(expires_in) is not int or expires_in < 0):
        raise _bad("expires_in")
    for name in ("expires_at", "grant_expires_at"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str) or not _RFC3339.fullmatch(value):
                raise _bad(name)
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise _bad(name) from None
    scopes = data.get("scopes", [])
    if not isinstance(scopes, list) or not all(
        isinstance(s, str) and s and s == s.strip() and not _CONTROL.search(s) for s in scopes
    ):
        raise _bad("scopes")
    scope_mismatch = data.get("scope_mismatch", False)
    if not isinstance(scope_mismatch, bool):
        raise _bad("scope_mismatch")
    generation = data.get("token_generation")
    if generation is not None and not _canonical_uuid(generation):
        raise _bad("token_generation")
    header = data.get("injection_header", "Authorization")
    if (
        not isinstance(header, str)
        or len(header) > 60
        or not _HEADER_NAME.fullmatch(header)
        or header.lower() in _FORBIDDEN_HEADERS
    ):
        raise _bad("injection_header")
    fmt = data.get("injection_format", "Bearer {token}")
    if (
        not isinstance(fmt, str)
        or len(fmt) > 200
        or any(c in fmt for c in "\r\n\x00")
        or (not fmt.startswith(_sigv4.ALGORITHM) and "{token}" not in fmt)
    ):
        raise _bad("injection_format")
    extra = data.get("additional_credentials")
    if extra is not None and (
        not isinstance(extra, dict)
        or len(extra) > 10
        or not all(
            isinstance(k, str)
            and len(k) <= 50
            and isinstance(v, str)
            and v.strip()
            and len(v) <= 8192
            and not any(c in v for c in "\r\n\x00")
            for k, v in extra.items()
        )
    ):
        raise _bad("additional_credentials")
    rules_raw = data.get("additional_injections")
    rules: list[dict[str, str]] = []
    if rules_raw is not None:
        if not isinstance(rules_raw, list) or len(rules_raw) > 10:
            raise _bad("additional_injections")
        for rule in rules_raw:
            target = rule.get("target") if isinstance(rule, dict) else None
            key = rule.get("key") if isinstance(rule, dict) else None
            source = rule.get("value_source") if isinstance(rule, dict) else None
            if (
                target not in ("header", "query_param")
                or not isinstance(key, str)
                or len(key) > 100
                or not _INJECTION_KEY.fullmatch(key)
                or not isinstance(source, str)
                or not _VALUE_SOURCE.fullmatch(source)
                or (target == "header" and key.lower() in _FORBIDDEN_HEADERS)
            ):
                raise _bad("additional_injections")
            assert isinstance(target, str)
            rules.append({"target": target, "key": key, "value_source": source})
    retry_info: RetryInfo | None = None
    raw_retry = data.get("retry_info")
    if isinstance(raw_retry, dict) and raw_retry:
        try:
            retry_info = RetryInfo.model_validate(raw_retry)
        except ValueError:
            retry_info = None
    return Injection(
        access_token=token,
        grant_id=grant_id,
        provider_id=provider_id,
        header=header,
        format=fmt,
        additional_credentials=dict(extra) if extra is not None else None,
        additional_injections=rules,
        scope_mismatch=scope_mismatch,
        token_generation=generation if isinstance(generation, str) else None,
        retry_info=retry_info,
    )


@dataclass
class ProviderRequest:
    """The provider call after injection, and what the audit row may show of it."""

    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, Any] | None
    content: bytes | None
    audit_headers: dict[str, str] = field(default_factory=dict)


def _source_value(source: str, injection: Injection) -> str | None:
    if source == "token":
        return injection.access_token
    name = source.removeprefix("additional_credentials.")
    return (injection.additional_credentials or {}).get(name)


def build_provider_request(
    injection: Injection,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str] | None,
    query_params: Mapping[str, Any] | None,
    content: bytes | None,
    json_content: bool,
) -> ProviderRequest:
    """Place the credential; the caller's own headers never override an injected one."""
    out = dict(headers or {})
    if json_content:
        out.setdefault("Content-Type", "application/json")
    params: dict[str, Any] | None = dict(query_params) if query_params else None
    injected: set[str] = set()
    if injection.is_sigv4:
        creds = injection.additional_credentials or {}
        secret = creds.get("secret_key")
        if not secret:
            raise BackendError("The AWS credential has no secret_key; store it again.")
        target = str(httpx.URL(url).copy_merge_params(params or {})) if params else url
        target = _sigv4.canonical_url(target)
        try:
            signed = _sigv4.sign(
                method=method,
                url=target,
                body=content or b"",
                access_key_id=injection.access_token,
                secret_key=secret,
                session_token=creds.get("session_token"),
                region=creds.get("region"),
                service=creds.get("service"),
            )
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        for name in list(out):
            if name.lower() in {k.lower() for k in signed}:
                del out[name]
        out.update(signed)
        injected |= {k.lower() for k in signed}
        return ProviderRequest(
            method,
            target,
            out,
            None,
            content,
            {k: v for k, v in out.items() if k.lower() not in injected | SENSITIVE_HEADERS},
        )
    for name in [n for n in out if n.lower() == injection.header.lower()]:
        del out[name]
    out[injection.header] = injection.format.replace("{token}", injection.access_token, 1)
    injected.add(injection.header.lower())
    for rule in injection.additional_injections:
        value = _source_value(rule["value_source"], injection)
        if not value:
            continue
        if rule["target"] == "header":
            for name in [n for n in out if n.lower() == rule["key"].lower()]:
                del out[name]
            out[rule["key"]] = value
            injected.add(rule["key"].lower())
        else:
            params = {**(params or {}), rule["key"]: value}
    audit = {k: v for k, v in out.items() if k.lower() not in injected | SENSITIVE_HEADERS}
    return ProviderRequest(method, url, out, params, content, audit)


def audit_body(content: bytes | None, json_value: Any = None, *, is_json: bool = False) -> Any:
    """A request or response body as the audit row keeps it (bounded, text or a size note)."""
    if is_json:
        return json_value
    if not content:
        return None
    if len(content) > MAX_AUDIT_BODY_BYTES:
        return f"<body too large: {len(content)} bytes>"
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return f"<binary body: {len(content)} bytes>"


def audit_response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Response headers without cookies or credentials."""
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}


_CHALLENGE_PARAM = re.compile(
    r'\s*(?P<key>[A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^,\s]+))'
)


def parse_bearer_challenge(value: str | None) -> dict[str, str]:
    """Auth-params of a ``WWW-Authenticate: Bearer ...`` challenge (RFC 6750), lower-cased keys.

    Lenient: stops at the first unparseable part and keeps what it read; another scheme or
    no parameters give ``{}``.
    """
    if not value:
        return {}
    scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s+", value)
    if scheme is None or scheme.group(1).lower() != "bearer":
        return {}
    rest = value[scheme.end() :]
    params: dict[str, str] = {}
    pos = 0
    while (match := _CHALLENGE_PARAM.match(rest, pos)) is not None:
        quoted = match.group("quoted")
        params[match.group("key").lower()] = (
            re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group("bare")
        )
        pos = match.end()
        comma = re.match(r"\s*,\s*", rest[pos:])
        if comma is None:
            break
        pos += comma.end()
    return params


def compact_json(value: Any) -> bytes:
    """The JSON bytes the SDK sends: compact separators, insertion order, finite numbers."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()

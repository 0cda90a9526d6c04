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
from grantvault.protocol import injection as rules

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:[0-5]\d)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
        return (
            self.format.startswith(rules.SIGV4_FORMAT) and self.additional_credentials is not None
        )


def parse_token_answer(data: object) -> Injection:
    """Validate the vault's token answer; raise ``BackendError`` on anything malformed.

    The fields are checked in a fixed order, so the error names the first bad one.
    """
    if not isinstance(data, dict):
        raise _bad("not an object")
    token = _access_token(data.get("access_token"))
    grant_id = _grant_id(data.get("grant_id"))
    provider_id = _provider_id(data.get("provider_id", ""))
    _check_token_type(data.get("token_type", "Bearer"))
    _check_expiry(data)
    _check_scopes(data.get("scopes", []))
    scope_mismatch = data.get("scope_mismatch", False)
    if not isinstance(scope_mismatch, bool):
        raise _bad("scope_mismatch")
    generation = data.get("token_generation")
    if generation is not None and not _canonical_uuid(generation):
        raise _bad("token_generation")
    header = _injection_header(data.get("injection_header", "Authorization"))
    fmt = _injection_format(data.get("injection_format", "Bearer {token}"))
    extra = _additional_credentials(data.get("additional_credentials"))
    injections = _additional_injections(data.get("additional_injections"))
    return Injection(
        access_token=token,
        grant_id=grant_id,
        provider_id=provider_id,
        header=header,
        format=fmt,
        additional_credentials=extra,
        additional_injections=injections,
        scope_mismatch=scope_mismatch,
        token_generation=generation if isinstance(generation, str) else None,
        retry_info=_retry_info(data.get("retry_info")),
    )


def _access_token(token: object) -> str:
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\x00"):
        raise _bad("access_token")
    return token


def _grant_id(grant_id: object) -> str:
    if not isinstance(grant_id, str) or not _canonical_uuid(grant_id):
        raise _bad("grant_id")
    return grant_id


def _provider_id(provider_id: object) -> str:
    if not isinstance(provider_id, str) or _CONTROL.search(provider_id) or len(provider_id) > 255:
        raise _bad("provider_id")
    return provider_id


def _check_token_type(token_type: object) -> None:
    if not isinstance(token_type, str) or not token_type.strip() or _CONTROL.search(token_type):
        raise _bad("token_type")


def _check_expiry(data: Mapping[str, Any]) -> None:
    expires_in = data.get("expires_in")
    if expires_in is not None and (type(expires_in) is not int or expires_in < 0):
        raise _bad("expires_in")
    for name in ("expires_at", "grant_expires_at"):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            raise _bad(name)
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(name) from None


def _check_scopes(scopes: object) -> None:
    if not isinstance(scopes, list) or not all(
        isinstance(s, str) and s and s == s.strip() and not _CONTROL.search(s) for s in scopes
    ):
        raise _bad("scopes")


def _injection_header(header: object) -> str:
    try:
        if isinstance(header, str):
            return rules.check_header_name(header)
    except ValueError:
        pass
    raise _bad("injection_header")


def _injection_format(fmt: object) -> str:
    try:
        if isinstance(fmt, str):
            return rules.check_format(fmt)
    except ValueError:
        pass
    raise _bad("injection_format")


def _credential_value_ok(name: object, value: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= 50
        and isinstance(value, str)
        and bool(value.strip())
        and len(value) <= 8192
        and not any(c in value for c in "\r\n\x00")
    )


def _additional_credentials(extra: object) -> dict[str, str] | None:
    if extra is None:
        return None
    if (
        not isinstance(extra, dict)
        or len(extra) > rules.MAX_EXTRA_INJECTIONS
        or not all(_credential_value_ok(k, v) for k, v in extra.items())
    ):
        raise _bad("additional_credentials")
    return dict(extra)


def _additional_injections(raw: object) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > rules.MAX_EXTRA_INJECTIONS:
        raise _bad("additional_injections")
    return [_additional_injection(rule) for rule in raw]


def _additional_injection(rule: object) -> dict[str, str]:
    if isinstance(rule, dict):
        target, key, source = rule.get("target"), rule.get("key"), rule.get("value_source")
        if (
            isinstance(key, str)
            and isinstance(source, str)
            and rules.VALUE_SOURCE.fullmatch(source)
        ):
            try:
                if target == "header":
                    rules.check_header_name(key)
                    return {"target": target, "key": key, "value_source": source}
                if target == "query_param":
                    rules.check_param_name(key)
                    return {"target": target, "key": key, "value_source": source}
            except ValueError:
                pass
    raise _bad("additional_injections")


def _retry_info(raw: object) -> RetryInfo | None:
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        return RetryInfo.model_validate(raw)
    except ValueError:
        return None


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
    if injection.is_sigv4:
        return _sigv4_request(injection, method, url, out, params, content)
    injected = {_set_header(out, injection.header, _formatted(injection))}
    for rule in injection.additional_injections:
        value = _source_value(rule["value_source"], injection)
        if not value:
            continue
        if rule["target"] == "header":
            injected.add(_set_header(out, rule["key"], value))
        else:
            params = {**(params or {}), rule["key"]: value}
    return ProviderRequest(method, url, out, params, content, _audit_headers(out, injected))


def _formatted(injection: Injection) -> str:
    return injection.format.replace(rules.TOKEN_PLACEHOLDER, injection.access_token, 1)


def _set_header(headers: dict[str, str], name: str, value: str) -> str:
    """Set ``name`` replacing any spelling of it the caller used; return it lower-cased."""
    for existing in [n for n in headers if n.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value
    return name.lower()


def _audit_headers(headers: Mapping[str, str], injected: set[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in injected | SENSITIVE_HEADERS}


def _sigv4_request(
    injection: Injection,
    method: str,
    url: str,
    headers: dict[str, str],
    params: dict[str, Any] | None,
    content: bytes | None,
) -> ProviderRequest:
    """Sign the whole request with the AWS key pair (the query is folded into the URL)."""
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
    injected = {k.lower() for k in signed}
    for name in [n for n in headers if n.lower() in injected]:
        del headers[name]
    headers.update(signed)
    return ProviderRequest(
        method, target, headers, None, content, _audit_headers(headers, injected)
    )


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

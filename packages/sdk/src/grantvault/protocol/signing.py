"""Request signing for the ``/sdk/*`` protocol: one implementation for the SDK and the vault.

Public: the vault verifies with these functions and constants, the SDK signs with them.

Every request carries ``x-api-key`` plus an HMAC-SHA256 signature over the method, the
canonical path and query, a timestamp, a nonce, the body hash and any attenuation headers.
The signing key is derived from the API key (``HMAC-SHA256(api_key, "alter-signing-v1")``), so
the vault does not need to store anything but a hash of the key: it derives the signing key
from the presented key after checking that key's hash.

When any actor header (``X-Alter-Caller``, ``X-Alter-Caller-Type``, ``X-Alter-Actor-ID``,
``X-Alter-Context``) is present, the actor values are appended to the string to sign (the "V2"
signature) and both signature headers carry the V2 digest, so that stripping the actor headers
cannot downgrade a request to the legacy form: the legacy digest would no longer match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode

__all__ = [
    "ACTOR_FIELDS",
    "HEADER_ACTOR_ID",
    "HEADER_CALLER",
    "HEADER_CALLER_TYPE",
    "HEADER_CONTENT_SHA256",
    "HEADER_CONTEXT",
    "HEADER_NONCE",
    "HEADER_REQUEST_RULE",
    "HEADER_SCOPE_CONSTRAINTS",
    "HEADER_SIGNATURE",
    "HEADER_SIGNATURE_V2",
    "HEADER_TIMESTAMP",
    "SIGNING_LABEL",
    "StringsToSign",
    "canonical_target",
    "content_sha256",
    "derive_signing_key",
    "hmac_hex",
    "sign_request",
    "strings_to_sign",
]

SIGNING_LABEL = b"alter-signing-v1"

HEADER_TIMESTAMP = "X-Alter-Timestamp"
HEADER_NONCE = "X-Alter-Nonce"
HEADER_CONTENT_SHA256 = "X-Alter-Content-SHA256"
HEADER_SIGNATURE = "X-Alter-Signature"
HEADER_SIGNATURE_V2 = "X-Alter-Signature-V2"
HEADER_SCOPE_CONSTRAINTS = "X-Alter-Scope-Constraints"
HEADER_REQUEST_RULE = "X-Alter-Request-Rule"
HEADER_CALLER = "X-Alter-Caller"
HEADER_CALLER_TYPE = "X-Alter-Caller-Type"
HEADER_ACTOR_ID = "X-Alter-Actor-ID"
HEADER_CONTEXT = "X-Alter-Context"

# The order in which actor headers are bound into the V2 string; it is part of the protocol.
ACTOR_FIELDS: tuple[tuple[str, str], ...] = (
    ("caller", HEADER_CALLER),
    ("caller-type", HEADER_CALLER_TYPE),
    ("actor-id", HEADER_ACTOR_ID),
    ("actor-context", HEADER_CONTEXT),
)


def derive_signing_key(api_key: str) -> bytes:
    """Derive the 32-byte HMAC key used to sign requests made with ``api_key``."""
    return hmac.new(api_key.encode(), SIGNING_LABEL, hashlib.sha256).digest()


def canonical_target(target: str) -> str:
    """Canonicalise a request target: decoded path plus the query sorted and re-encoded.

    A present but empty query (``/path?``) canonicalises without the ``?``; a non-empty raw
    query keeps it even if it re-encodes to the empty string.
    """
    path, _, query = target.partition("?")
    if query:
        pairs = sorted(parse_qsl(query, keep_blank_values=True, separator="&"))
        return f"{unquote(path)}?{urlencode(pairs)}"
    return unquote(path)


def content_sha256(body: bytes) -> str:
    """Lowercase hex SHA-256 of the body (of ``b""`` when there is none)."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class StringsToSign:
    """The legacy string and the V2 string (equal when no actor header is present)."""

    legacy: str
    v2: str

    @property
    def has_actor(self) -> bool:
        """Whether actor headers are bound (the request carries the V2 signature)."""
        return self.v2 != self.legacy


def strings_to_sign(
    *,
    method: str,
    target: str,
    timestamp: str,
    nonce: str,
    content_hash: str,
    scope_constraints: str = "",
    request_rule: str = "",
    actor: Mapping[str, str] | None = None,
) -> StringsToSign:
    """Build the legacy and V2 strings to sign.

    ``actor`` maps actor header names (``X-Alter-Caller``...) to values; empty values are
    skipped, exactly as the client does.
    """
    legacy = (
        f"{method.upper()}\n{canonical_target(target)}\n{timestamp}\n{nonce}\n"
        f"{content_hash}\n{scope_constraints}"
    )
    if request_rule:
        legacy += f"\nrequest-rule:{request_rule}"
    v2 = legacy
    actor = actor or {}
    for label, header in ACTOR_FIELDS:
        value = actor.get(header, "")
        if value:
            v2 += f"\n{label}:{value}"
    return StringsToSign(legacy=legacy, v2=v2)


def hmac_hex(signing_key: bytes, message: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``message`` under ``signing_key``."""
    return hmac.new(signing_key, message.encode(), hashlib.sha256).hexdigest()


def sign_request(
    api_key: str,
    *,
    method: str,
    target: str,
    body: bytes = b"",
    actor: Mapping[str, str] | None = None,
    scope_constraints: str = "",
    request_rule: str = "",
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the signature headers for one request (the caller adds ``x-api-key``)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_value = nonce if nonce is not None else secrets.token_hex(16)
    body_hash = content_sha256(body)
    strings = strings_to_sign(
        method=method,
        target=target,
        timestamp=ts,
        nonce=nonce_value,
        content_hash=body_hash,
        scope_constraints=scope_constraints,
        request_rule=request_rule,
        actor=actor,
    )
    key = derive_signing_key(api_key)
    headers = {
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce_value,
        HEADER_CONTENT_SHA256: body_hash,
    }
    if strings.has_actor:
        signature = hmac_hex(key, strings.v2)
        headers[HEADER_SIGNATURE] = signature
        headers[HEADER_SIGNATURE_V2] = signature
    else:
        headers[HEADER_SIGNATURE] = hmac_hex(key, strings.legacy)
    if scope_constraints:
        headers[HEADER_SCOPE_CONSTRAINTS] = scope_constraints
    if request_rule:
        headers[HEADER_REQUEST_RULE] = request_rule
    return headers

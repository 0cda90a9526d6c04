"""Verification of signed ``/sdk/*`` requests (wire protocol §2.3).

The rules, in the order they are checked:

1. all of timestamp, nonce, content hash and signature headers are present and well formed;
2. the timestamp is within the allowed skew of the server clock;
3. the body hashes to ``X-Alter-Content-SHA256``;
4. the signature matches, computed with the key derived from the presented API key: the
   V2 (actor-bound) string when any actor header is present, in which case both signature
   headers must carry it, else the legacy string. A request that had its actor headers
   stripped therefore fails, because its signature covered them;
5. the nonce has not been seen for this key within the window (checked by the caller in the
   database, after the signature, so unauthenticated traffic cannot fill the nonce table).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from grantvault.protocol.signing import (
    ACTOR_FIELDS,
    HEADER_CONTENT_SHA256,
    HEADER_NONCE,
    HEADER_REQUEST_RULE,
    HEADER_SCOPE_CONSTRAINTS,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_V2,
    HEADER_TIMESTAMP,
    content_sha256,
    derive_signing_key,
    hmac_hex,
    strings_to_sign,
)
from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _bad_signature(message: str) -> VaultError:
    return VaultError(ErrorCode.INVALID_SIGNATURE, message)


@dataclass(frozen=True)
class VerifiedRequest:
    nonce: str
    timestamp: int
    actor: dict[str, str]


def verify_signature(
    *,
    api_key: str,
    method: str,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    skew_seconds: int,
) -> VerifiedRequest:
    """Check one request's signature; raise a typed :class:`VaultError` if it fails."""
    timestamp = headers.get(HEADER_TIMESTAMP.lower(), "")
    nonce = headers.get(HEADER_NONCE.lower(), "")
    content_hash = headers.get(HEADER_CONTENT_SHA256.lower(), "")
    signature = headers.get(HEADER_SIGNATURE.lower(), "")
    if not (timestamp and nonce and content_hash and signature):
        raise _bad_signature(
            "Signed request headers are missing (X-Alter-Timestamp, X-Alter-Nonce, "
            "X-Alter-Content-SHA256, X-Alter-Signature); use a Grantvault or alter-sdk client."
        )
    if not _TIMESTAMP.fullmatch(timestamp):
        raise _bad_signature("X-Alter-Timestamp must be Unix seconds.")
    for value in (signature, headers.get(HEADER_SIGNATURE_V2.lower(), signature)):
        if not _HEX64.fullmatch(value):
            raise _bad_signature("Signature headers must be 64 lowercase hex characters.")
    if not _NONCE.fullmatch(nonce):
        raise _bad_signature("X-Alter-Nonce must be 32 lowercase hex characters.")
    ts = int(timestamp)
    if abs(now - ts) > skew_seconds:
        raise VaultError(
            ErrorCode.STALE_REQUEST,
            f"The request timestamp is more than {skew_seconds}s from the server clock; "
            "check the client's clock.",
        )
    if not _HEX64.fullmatch(content_hash) or not hmac.compare_digest(
        content_hash, content_sha256(body)
    ):
        raise _bad_signature("The body does not match X-Alter-Content-SHA256.")
    actor = {h: headers[h.lower()] for _, h in ACTOR_FIELDS if headers.get(h.lower())}
    strings = strings_to_sign(
        method=method,
        target=target,
        timestamp=timestamp,
        nonce=nonce,
        content_hash=content_hash,
        scope_constraints=headers.get(HEADER_SCOPE_CONSTRAINTS.lower(), ""),
        request_rule=headers.get(HEADER_REQUEST_RULE.lower(), ""),
        actor=actor,
    )
    key = derive_signing_key(api_key)
    if strings.has_actor:
        expected = hmac_hex(key, strings.v2)
        v2 = headers.get(HEADER_SIGNATURE_V2.lower(), "")
        if not (hmac.compare_digest(v2, expected) and hmac.compare_digest(signature, expected)):
            raise _bad_signature("The request signature does not match (actor-bound form).")
    elif not hmac.compare_digest(signature, hmac_hex(key, strings.legacy)):
        raise _bad_signature("The request signature does not match.")
    if headers.get(HEADER_SCOPE_CONSTRAINTS.lower()) or headers.get(HEADER_REQUEST_RULE.lower()):
        # Signed attenuation (``with_constraints``) must narrow what the request may do. Until
        # the policy engine enforces it, refuse rather than run the request unconstrained.
        raise VaultError(
            ErrorCode.CONSTRAINTS_UNSUPPORTED,
            "This vault does not enforce with_constraints() scopes or request rules yet; the "
            "request was refused rather than run without them.",
        )
    return VerifiedRequest(nonce=nonce, timestamp=ts, actor=actor)

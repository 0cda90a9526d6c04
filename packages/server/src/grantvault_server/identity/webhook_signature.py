"""Standard Webhooks signatures (what Svix and Clerk send), checked without any I/O.

A secret is ``whsec_<base64>``: the HMAC key is the decoded part. A delivery carries the
headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (Svix's ``svix-*``
names work too); the signature is ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``,
and several space-separated signatures are allowed during a secret rotation at the sender.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from grantvault_server.errors import InvalidInput

WEBHOOK_SECRET_PREFIX = "whsec_"
#: At most this many candidate signatures of one header are tried.
MAX_SIGNATURES = 10


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (raises :class:`InvalidInput` when malformed)."""
    body = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except ValueError:
        key = b""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX) or not 16 <= len(key) <= 128:
        raise InvalidInput(
            "A webhook secret is `whsec_` followed by the base64 of 16-128 random bytes."
        )
    return key


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The ``webhook-<name>`` header, or Svix's ``svix-<name>``."""
    return headers.get(f"webhook-{name}") or headers.get(f"svix-{name}")


def _digest(key: bytes, delivery_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for a delivery (what the IdP computes)."""
    digest = _digest(webhook_key(secret), delivery_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode()


def signature_ok(key: bytes, delivery_id: str, timestamp: str, body: bytes, given: str) -> bool:
    """Whether one of the ``v1`` signatures in ``given`` matches (constant-time compare)."""
    expected = _digest(key, delivery_id, timestamp, body)
    for candidate in given.split()[:MAX_SIGNATURES]:
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(raw, expected):
            return True
    return False

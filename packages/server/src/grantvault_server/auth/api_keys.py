"""API key hashing and state checks (minting uses the SDK's shared key grammar)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import VaultError


def hash_key(api_key: str) -> str:
    """SHA-256 of the key. Keys hold 110 random bits, so no salt or stretching is needed."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    id: str
    app_id: str
    app_name: str
    key_prefix: str
    expires_at: datetime | None
    revoked_at: datetime | None
    grace_expires_at: datetime | None
    last_used_at: datetime | None = None
    #: The app's policy generation, read in the same lookup (see ``services.policies``).
    policy_generation: int | None = None


def key_state_error(
    revoked_at: datetime | None,
    grace_expires_at: datetime | None,
    expires_at: datetime | None,
    now: datetime,
) -> VaultError | None:
    """The typed error for a key that may not be used at ``now``, or None."""
    if revoked_at is not None and revoked_at <= now:
        return VaultError(ErrorCode.KEY_REVOKED, "This API key was revoked; use an active key.")
    if grace_expires_at is not None and grace_expires_at <= now:
        return VaultError(
            ErrorCode.KEY_ROTATED_GRACE_EXPIRED,
            "This API key was rotated and its overlap window has ended; use its successor.",
        )
    if expires_at is not None and expires_at <= now:
        return VaultError(ErrorCode.KEY_EXPIRED, "This API key has expired; create a new one.")
    return None


def check_key_state(key: KeyRecord, now: datetime) -> None:
    """Raise the typed error for a key that may not be used at ``now``."""
    error = key_state_error(key.revoked_at, key.grace_expires_at, key.expires_at, now)
    if error is not None:
        raise error

"""API key grammar shared by the vault (which mints keys) and the SDK (which checks them).

Keys look like ``alter_<type>_<random>_<checksum>``: ``type`` is ``rk`` (app runtime key),
``ak`` (agent), ``dk`` (derived) or ``pk`` (publishable); ``random`` is 22 characters of
lowercase base32 (110 bits); ``checksum`` is the CRC-32 of ``"<type>:<random>"`` written as
six base32 characters, five bits at a time from the least significant end.

The grammar is the public ``alter-sdk`` client's, so keys minted here pass its client-side
check unmodified. The checksum is a typo gate, not a security boundary: the vault still
verifies the whole key against its stored hash.
"""

from __future__ import annotations

import secrets
import zlib

__all__ = [
    "BASE32_ALPHABET",
    "CHECKSUM_LENGTH",
    "DISPLAY_PREFIX_LENGTH",
    "KEY_TYPES",
    "RANDOM_LENGTH",
    "checksum_for",
    "display_prefix",
    "is_valid_key",
    "mint_key",
]

BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
RANDOM_LENGTH = 22
CHECKSUM_LENGTH = 6
KEY_TYPES = frozenset({"rk", "ak", "dk", "pk"})
# The visible, non-secret part of a key kept for display: "alter_rk_" plus six characters.
DISPLAY_PREFIX_LENGTH = len("alter_rk_") + 6


def checksum_for(key_type: str, random_part: str) -> str:
    """Return the six-character base32 CRC-32 checksum of ``"<type>:<random>"``."""
    crc = zlib.crc32(f"{key_type}:{random_part}".encode())
    return "".join(BASE32_ALPHABET[(crc >> (5 * i)) & 0x1F] for i in range(CHECKSUM_LENGTH))


def mint_key(key_type: str = "rk") -> str:
    """Mint a new random key of ``key_type`` from the operating system's CSPRNG."""
    if key_type not in KEY_TYPES:
        raise ValueError(f"unknown key type {key_type!r}; expected one of {sorted(KEY_TYPES)}")
    random_part = "".join(secrets.choice(BASE32_ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"alter_{key_type}_{random_part}_{checksum_for(key_type, random_part)}"


def is_valid_key(key: object) -> bool:
    """Say whether ``key`` is a syntactically valid scoped key (never raises)."""
    if not isinstance(key, str):
        return False
    parts = key.split("_")
    if len(parts) != 4 or parts[0] != "alter" or parts[1] not in KEY_TYPES:
        return False
    _, key_type, random_part, checksum = parts
    if len(random_part) != RANDOM_LENGTH or len(checksum) != CHECKSUM_LENGTH:
        return False
    if any(c not in BASE32_ALPHABET for c in random_part + checksum):
        return False
    return checksum == checksum_for(key_type, random_part)


def display_prefix(key: str) -> str:
    """The part of a key that may be shown and stored in clear (never enough to use it)."""
    return key[:DISPLAY_PREFIX_LENGTH]

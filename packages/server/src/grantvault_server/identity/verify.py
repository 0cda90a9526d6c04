"""Verification of end users' JWTs (RFC 8725 rules), with PyJWT doing the cryptography.

What is checked, in order (cheap and structural first, so junk is refused before any work):

1. size (16 KiB at most) and shape: a compact JWS of three base64url segments (a JWE, with
   five, is refused), each segment strictly base64url, header and payload JSON objects
   without duplicate keys (parsers that keep the first or the last key disagree);
2. header: ``alg`` on the configured allow-list (asymmetric only), no ``crit`` extension,
   no unencoded payload (``b64``), a ``typ`` of a JWT or an RFC 9068 access token; a ``kid``
   of at most 256 characters. ``jku``, ``x5u``, ``jwk`` and ``x5c`` are never read;
3. the key: looked up by ``kid`` in the issuer's JWKS cache, bound to its algorithms;
4. signature and claims (PyJWT): ``iss`` equal to the configured issuer, ``aud`` containing
   an accepted audience, ``exp`` required, ``nbf`` and ``iat`` not in the future, each with
   :data:`LEEWAY_S` of clock skew. The time claims must be JSON numbers (PyJWT alone takes
   ``"exp": "1999999999"`` and raises an untyped error on ``Infinity``), and ``exp`` at most
   the policy's maximum token lifetime away (from now, and from ``iat``): a token that
   claims to live for decades is a forgery or a misconfigured IdP, and either way it would
   stay in the verified-token cache for that long.

Verified tokens are remembered (:class:`VerifiedTokens`) until they expire, as long as the
key that verified them is still the cached key for their ``kid``: the hot path then costs a
dictionary lookup instead of an RSA verification, and a key the issuer removed still stops
every token it signed when the cache drops it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

from grantvault_server.identity.jwks import JwksCache, JwksUnavailable, KeyNotFound, VerificationKey

MAX_TOKEN_BYTES = 16 * 1024
#: Clock skew allowed on ``exp``, ``nbf`` and ``iat`` (RFC 8725 suggests "a few minutes" at
#: most; one minute keeps a stolen expired token useless almost at once).
LEEWAY_S = 60
MAX_CACHED_TOKENS = 10_000
ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")


class TokenRejected(Exception):
    """The token is not acceptable. ``str(exc)`` says why, never quoting the token."""


class IdpUnreachable(Exception):
    """The issuer's keys could not be fetched at all; the token may well be fine."""


#: Default of ``GRANTVAULT_USER_TOKEN_MAX_LIFETIME_SECONDS``: a day, the longest default
#: access-token lifetime among common IdPs (Auth0); ID tokens live minutes to an hour.
DEFAULT_MAX_LIFETIME_S = 86_400
TIME_CLAIMS = ("exp", "nbf", "iat")


@dataclass(frozen=True)
class VerifyPolicy:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    #: Longest accepted ``exp - now`` and ``exp - iat``, in seconds.
    max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise TokenRejected(f"the token repeats the JSON member {name[:40]!r}")
        result[name] = value
    return result


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    if not _SEGMENT.fullmatch(segment):
        raise TokenRejected(f"the token's {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw, object_pairs_hook=_reject_duplicates)
    except TokenRejected:
        raise
    except (binascii.Error, ValueError, RecursionError):
        raise TokenRejected(f"the token's {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenRejected(f"the token's {what} is not a JSON object")
    return value


def parse_header(token: object) -> dict[str, Any]:
    """Structural checks of steps 1 and 2; returns the (unverified) header."""
    if not isinstance(token, str) or not token:
        raise TokenRejected("the token is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"the token is larger than {MAX_TOKEN_BYTES // 1024} KiB")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("the token is not a signed JWT (three dot-separated parts)")
    header = _segment_json(parts[0], "header")
    _check_time_types(_segment_json(parts[1], "payload"))
    if not _SEGMENT.fullmatch(parts[2]) or not parts[2]:
        raise TokenRejected("the token's signature is missing or not base64url")
    if "crit" in header or "b64" in header:
        raise TokenRejected("the token uses JWS extensions (crit/b64) the vault does not support")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
        raise TokenRejected("the token's typ is not a JWT or an access token (at+jwt)")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 1 <= len(kid) <= 256):
        raise TokenRejected("the token's kid is malformed")
    return header


def _check_time_types(payload: dict[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat`` are JSON numbers (RFC 7519 NumericDate), finite ones.

    Checked before PyJWT, which converts with ``int()``: it would accept a numeric string
    and fail with an untyped ``OverflowError`` on ``1e999``.
    """
    for name in TIME_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TokenRejected(f"the token's {name} claim is not a number")
        if not math.isfinite(value):
            raise TokenRejected(f"the token's {name} claim is not a finite number")


def _check_times(claims: dict[str, Any], now: float) -> None:
    """``exp``, ``nbf`` and ``iat`` against ``now`` (the caller's clock), with the leeway.

    The same rules and order as PyJWT's own checks (which read the system clock, so they
    are turned off): expired when ``exp <= now - leeway``; not valid yet when ``nbf`` or
    ``iat`` is after ``now + leeway``.
    """
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is not None and (int(value) if name == "iat" else value) > now + LEEWAY_S:
            raise TokenRejected(_reason(jwt.ImmatureSignatureError()))
    if int(claims["exp"]) <= now - LEEWAY_S:
        raise TokenRejected(_reason(jwt.ExpiredSignatureError()))


def _check_lifetime(claims: dict[str, Any], max_lifetime_s: float, now: float) -> None:
    exp = float(claims["exp"])
    if exp - now > max_lifetime_s + LEEWAY_S:
        raise TokenRejected(
            f"the token's exp is further away than the maximum token lifetime "
            f"({max_lifetime_s:g} s, GRANTVAULT_USER_TOKEN_MAX_LIFETIME_SECONDS)"
        )
    iat = claims.get("iat")
    if iat is not None and exp - float(iat) > max_lifetime_s + LEEWAY_S:
        raise TokenRejected(
            f"the token lives longer (exp - iat) than the maximum token lifetime "
            f"({max_lifetime_s:g} s, GRANTVAULT_USER_TOKEN_MAX_LIFETIME_SECONDS)"
        )


_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidIssuerError, "the token was issued by another issuer"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm does not fit its key"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the required {exc.claim!r} claim"
    for kind, reason in _PYJWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return "the token is malformed"


def verify_with_key(
    token: str, key: VerificationKey, alg: str, policy: VerifyPolicy, now: float | None = None
) -> dict[str, Any]:
    """Step 4: signature and registered claims (PyJWT), times against ``now`` (epoch
    seconds; the system clock when not given)."""
    now = time.time() if now is None else now
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=list(policy.audiences),
            issuer=policy.issuer,
            leeway=LEEWAY_S,
            options={
                "require": ["exp", "iss", "aud"],
                "verify_signature": True,
                # Checked against ``now`` by _check_times below, not PyJWT's system clock.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise TokenRejected(_reason(exc)) from None
    _check_time_types(claims)  # the claims PyJWT returns are the payload parse_header saw
    _check_times(claims, now)
    _check_lifetime(claims, policy.max_lifetime_s, now)
    return claims


@dataclass(frozen=True)
class _Verified:
    claims: dict[str, Any]
    key: VerificationKey
    alg: str
    kid: str | None
    #: ``exp`` + leeway: the moment PyJWT itself would start refusing the token.
    valid_until: float


class VerifiedTokens:
    """Tokens already verified, by (configuration, token): the hot path's shortcut.

    An entry is used only while the token is unexpired and its key is still the cached key
    for its ``kid``; otherwise the token is verified again from scratch.
    """

    def __init__(self, limit: int = MAX_CACHED_TOKENS) -> None:
        self._limit = limit
        self._entries: dict[tuple[str, str], _Verified] = {}

    def get(self, scope: str, token: str, now: float | None = None) -> _Verified | None:
        """The unexpired entry for ``token`` at ``now`` (its key is checked by the caller)."""
        entry = self._entries.get((scope, token))
        if entry is not None and (time.time() if now is None else now) >= entry.valid_until:
            del self._entries[(scope, token)]
            return None
        return entry

    def forget(self, scope: str, token: str) -> None:
        self._entries.pop((scope, token), None)

    def put(
        self,
        scope: str,
        token: str,
        claims: dict[str, Any],
        key: VerificationKey,
        alg: str,
        kid: str | None,
    ) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            return
        if len(self._entries) >= self._limit:
            # Oldest first (dicts keep insertion order): a bounded, cheap eviction.
            for stale in list(self._entries)[: self._limit // 10 or 1]:
                del self._entries[stale]
        self._entries[(scope, token)] = _Verified(claims, key, alg, kid, float(exp) + LEEWAY_S)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


async def verify_token(
    token: object,
    policy: VerifyPolicy,
    jwks: JwksCache,
    cache: VerifiedTokens | None = None,
    *,
    scope: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` under ``policy`` at ``now`` (epoch seconds, default the system
    clock); return its claims or raise :class:`TokenRejected`.

    Raises :class:`IdpUnreachable` when no key set could ever be fetched (a 503, not the
    user's fault).
    """
    if cache is not None and isinstance(token, str):
        hit = cache.get(scope, token, now)
        if hit is not None:
            # No I/O for a known kid in a fresh key set; an expired set is refreshed first,
            # so a key the issuer removed stops this token too.
            try:
                current = await jwks.key_for(hit.kid, hit.alg)
            except (KeyNotFound, JwksUnavailable):
                current = None
            if current is hit.key:
                return hit.claims
            cache.forget(scope, token)
    header = parse_header(token)
    assert isinstance(token, str)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise TokenRejected(
            "the token's algorithm is not accepted (only the IdP's asymmetric algorithms are)"
        )
    kid = header.get("kid")
    try:
        key = await jwks.key_for(kid, alg)
    except KeyNotFound:
        raise TokenRejected("the token was signed with a key the IdP does not publish") from None
    except JwksUnavailable:
        raise IdpUnreachable from None
    claims = verify_with_key(token, key, alg, policy, now)
    if cache is not None:
        cache.put(scope, token, claims, key, alg, kid)
    return claims


def nonce_matches(claims: dict[str, Any], expected: str) -> bool:
    """Constant-time check of an ID token's ``nonce`` (OIDC Core 3.1.3.7)."""
    nonce = claims.get("nonce")
    return isinstance(nonce, str) and hmac.compare_digest(nonce.encode(), expected.encode())

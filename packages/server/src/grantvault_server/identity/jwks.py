"""The key cache of one issuer's JWKS: where user-token signatures are checked against.

The rules, and why:

* **Keys come only from the configured ``jwks_uri``.** A token's ``jku``/``x5u``/``jwk``/
  ``x5c`` headers are never read, and ``kid`` is only a dictionary key into this cache
  (never a path, a query or a URL), so a hostile ``kid`` cannot choose a key.
* **Each key is bound to the algorithms its type allows** (RSA: RS*/PS*, EC: the ES*
  of its curve, OKP: EdDSA; one algorithm if the JWK names ``alg``). A token's ``alg`` must
  be one of them, so no header can turn an RSA public key into an HMAC secret.
* **Unknown ``kid``: at most one refresh per cooldown** (30 s), counted from the last
  refresh an unknown ``kid`` caused, not from any fetch. Issuers rotate keys and sign with
  the new one at once, so a new ``kid`` must verify at its first sight, even seconds after
  a scheduled refresh (counting from that refresh refused it for up to 30 s); random
  ``kid``s must still not turn every request into a fetch: a flood costs one fetch per
  cooldown. Refreshes are single-flight.
* **Keys expire with the cache** (5 minutes): a key the issuer removed stops verifying at
  the next successful refresh.
* **Outages are tolerated for cached keys**: when a refresh fails, the last good key set
  keeps verifying (up to :data:`MAX_STALE_S`); unknown ``kid``s fail closed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from grantvault_server.identity.discovery import (
    EC_ALGORITHMS,
    OKP_CURVES,
    RSA_ALGORITHMS,
)
from grantvault_server.outbound.http import FetchError, OutboundClient, fetch_json

log = logging.getLogger(__name__)

JWKS_TTL_S = 300.0
REFRESH_COOLDOWN_S = 30.0
#: How long the last good key set keeps verifying while the JWKS endpoint is down.
MAX_STALE_S = 24 * 3600.0
MAX_KEYS = 100
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class JwksPolicy:
    ttl_s: float = JWKS_TTL_S
    cooldown_s: float = REFRESH_COOLDOWN_S
    max_stale_s: float = MAX_STALE_S


class KeyNotFound(Exception):
    """No key in the (refreshed) set matches the token's ``kid`` and ``alg``."""


class JwksUnavailable(Exception):
    """No usable key set: the JWKS was never fetched, or has been down for too long."""


@dataclass(frozen=True, eq=False)
class VerificationKey:
    """One public key, parsed once, with the algorithms it may verify."""

    kid: str | None
    algorithms: frozenset[str]
    #: The public key object PyJWT verifies with (parsed from the JWK once per fetch).
    key: Any = field(repr=False)


def _b64_len_bits(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) * 8
    except ValueError:
        return 0


def _algorithms_for(jwk: dict[str, Any]) -> frozenset[str]:
    """The algorithms a JWK may verify: by key type and curve, narrowed by its ``alg``."""
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = RSA_ALGORITHMS if _b64_len_bits(jwk.get("n")) >= MIN_RSA_BITS else frozenset()
    elif kty == "EC":
        alg = EC_ALGORITHMS.get(str(jwk.get("crv")))
        allowed = frozenset({alg}) if alg else frozenset()
    elif kty == "OKP":
        allowed = frozenset({"EdDSA"}) if jwk.get("crv") in OKP_CURVES else frozenset()
    else:  # "oct" (a shared secret) and anything unknown: never a verification key here
        allowed = frozenset()
    named = jwk.get("alg")
    if named is not None:
        return allowed & {named} if isinstance(named, str) else frozenset()
    return allowed


def parse_key_set(document: object) -> dict[str | None, list[VerificationKey]]:
    """The usable signing keys of a JWKS document, by ``kid`` (unusable keys are skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("The JWKS is not a JSON object with a `keys` list.")
    keys: dict[str | None, list[VerificationKey]] = {}
    for jwk in document["keys"][:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        if jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue  # encryption keys, and private keys an IdP should never publish
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            continue
        algorithms = _algorithms_for(jwk)
        if not algorithms:
            continue
        public = {k: v for k, v in jwk.items() if k not in {"x5c", "x5u", "jku"}}
        try:
            parsed = jwt.PyJWK(public, algorithm=sorted(algorithms)[0]).key
        except (jwt.PyJWTError, ValueError, TypeError):
            log.warning("skipping a malformed JWK", extra={"kid": kid})
            continue
        keys.setdefault(kid, []).append(VerificationKey(kid, algorithms, parsed))
    return keys


@dataclass
class _KeySet:
    keys: dict[str | None, list[VerificationKey]]
    fetched_at: float


class JwksCache:
    """The cached key set of one ``jwks_uri`` (shared by every app that trusts the issuer)."""

    def __init__(
        self,
        uri: str,
        *,
        policy: Callable[[], JwksPolicy],
        clock: Callable[[], float] = time.monotonic,
        http: Callable[[], OutboundClient | None] = lambda: None,
    ) -> None:
        self.uri = uri
        #: The client to fetch through (the vault's); ``None``: a short-lived https-only one.
        self._http = http
        self._policy = policy
        self._clock = clock
        self._set: _KeySet | None = None
        #: The last fetch of any kind: paces retries of the scheduled refresh while the
        #: endpoint is down.
        self._last_attempt: float | None = None
        #: The last fetch an unknown ``kid`` caused: what the unknown-kid cooldown counts from.
        self._last_unknown: float | None = None
        self._lock = asyncio.Lock()
        #: Fetches attempted (successful or not): what the cooldown bounds.
        self.fetch_count = 0

    def current(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The cached key for ``kid``/``alg`` without any I/O (None when unknown)."""
        if self._set is None:
            return None
        candidates = [k for k in self._set.keys.get(kid, ()) if alg in k.algorithms]
        if kid is None and not candidates:
            # A token without kid: only unambiguous when exactly one key fits the algorithm.
            every = [k for ks in self._set.keys.values() for k in ks if alg in k.algorithms]
            candidates = every if len(every) == 1 else []
        return candidates[0] if len(candidates) == 1 else None

    def _cooling(self, last: float | None, now: float) -> bool:
        return last is not None and now - last < self._policy().cooldown_s

    async def key_for(self, kid: str | None, alg: str) -> VerificationKey:
        """The key to verify a token with ``kid``/``alg``, refreshing within the rules above."""
        policy = self._policy()
        now = self._clock()
        seen = self.fetch_count
        if (self._set is None or now - self._set.fetched_at >= policy.ttl_s) and not self._cooling(
            self._last_attempt, now
        ):
            await self._refresh(seen)
        elif self._set is None and self._lock.locked():
            # The first fetch is in flight (its start began the cool-down): wait for it
            # rather than fail every caller that arrives meanwhile.
            async with self._lock:
                pass
        if self._set is None:
            raise JwksUnavailable("The identity provider's keys could not be fetched.")
        key = self.current(kid, alg)
        if (
            key is None
            and kid not in self._set.keys
            # A set fetched since this call began is as fresh as another fetch would be.
            and self.fetch_count == seen
            and not self._cooling(self._last_unknown, self._clock())
        ):
            await self._refresh(seen, unknown_kid=True)
            key = self.current(kid, alg)
        if key is None:
            raise KeyNotFound
        return key

    async def _refresh(self, seen: int, *, unknown_kid: bool = False) -> None:
        async with self._lock:
            if self.fetch_count != seen:
                return  # another request refreshed (or tried to) while this one waited
            self._last_attempt = self._clock()
            if unknown_kid:
                self._last_unknown = self._last_attempt
            self.fetch_count += 1
            try:
                fetched = await fetch_json(self.uri, "JWKS endpoint", client=self._http())
                if fetched.status != 200:
                    raise FetchError(f"The JWKS endpoint answered HTTP {fetched.status}.")
                keys = parse_key_set(fetched.body)
            except FetchError as exc:
                self._keep_stale(str(exc))
                return
            self._set = _KeySet(keys, self._clock())

    def _keep_stale(self, why: str) -> None:
        if self._set is None:
            log.warning("JWKS fetch failed", extra={"jwks_uri": self.uri, "reason": why})
            return
        age = self._clock() - self._set.fetched_at
        if age >= self._policy().max_stale_s:
            log.error(
                "JWKS fetch failed and the cached keys are too old; user tokens fail until "
                "the JWKS answers",
                extra={"jwks_uri": self.uri, "reason": why},
            )
            self._set = None
        else:
            log.warning(
                "JWKS fetch failed; verifying with the cached keys",
                extra={"jwks_uri": self.uri, "reason": why, "age_s": round(age)},
            )

    @property
    def kids(self) -> Sequence[str | None]:
        return [] if self._set is None else list(self._set.keys)

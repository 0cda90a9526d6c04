"""Per-vault, per-process identity state: key caches, verified tokens, configuration cache.

One :class:`IdentityState` lives on each vault object (``Vault.identity``, dropped with it),
never in module globals, so two vaults in one process (tests, the CLI next to a server)
never share caches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grantvault_server.identity.jwks import JwksCache, JwksPolicy
from grantvault_server.identity.verify import VerifiedTokens
from grantvault_server.outbound.http import OutboundClient

#: How long a server trusts its cached copy of an app's IdP configuration. Changes made by
#: this process apply at once; changes made by another process (the CLI) within this time.
CONFIG_TTL_S = 5.0


@dataclass(frozen=True)
class IdpConfig:
    """The active identity provider of one app, as the hot path needs it (no secrets)."""

    id: str
    app_id: str
    issuer: str
    jwks_uri: str
    algorithms: frozenset[str]
    audience: str
    user_id_claim: str
    groups_claim: str | None
    email_claim: str
    name_claim: str
    mappings_locked: bool
    signin_client_id: str | None
    endpoints: dict[str, Any]
    #: Changes whenever the row changes: verified-token cache entries are scoped by it.
    version: str

    @property
    def audiences(self) -> tuple[str, ...]:
        """Accepted ``aud`` values: the configured audience, and the vault's own sign-in
        client (the ID tokens the sign-in broker hands out are meant for it)."""
        if self.signin_client_id and self.signin_client_id != self.audience:
            return (self.audience, self.signin_client_id)
        return (self.audience,)

    @property
    def scope(self) -> str:
        return f"{self.id}|{self.version}"


@dataclass
class IdentityState:
    jwks_policy: JwksPolicy = field(default_factory=JwksPolicy)
    #: Monotonic clock of the key caches (tests replace it to step over cooldowns).
    clock: Callable[[], float] = time.monotonic
    config_ttl_s: float = CONFIG_TTL_S
    tokens: VerifiedTokens = field(default_factory=VerifiedTokens)
    configs: dict[str, tuple[float, IdpConfig | None]] = field(default_factory=dict)
    jwks: dict[str, JwksCache] = field(default_factory=dict)
    #: Sign-in sessions some poll is waiting on, woken by the callback in this process.
    waiters: dict[str, asyncio.Event] = field(default_factory=dict)
    #: The vault's outbound client, which the key caches fetch through (set by the vault).
    http: Callable[[], OutboundClient | None] = lambda: None

    def jwks_for(self, uri: str) -> JwksCache:
        cache = self.jwks.get(uri)
        if cache is None:
            cache = self.jwks[uri] = JwksCache(
                uri,
                policy=lambda: self.jwks_policy,
                clock=lambda: self.clock(),
                http=lambda: self.http(),
            )
        return cache

    def forget_config(self, app_id: str) -> None:
        self.configs.pop(app_id, None)

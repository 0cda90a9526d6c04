"""The service container: everything a request or a CLI command needs, built once."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grantvault_server import outbound
from grantvault_server.audit.chain import AuditChain
from grantvault_server.config import SchemaOutOfDate, Settings, resolve_master_key
from grantvault_server.crypto.barrier import Barrier, BarrierError, MasterKey
from grantvault_server.identity.state import IdentityState
from grantvault_server.oauth.client import OAuthClient
from grantvault_server.outbound.http import OutboundClient
from grantvault_server.policy.cache import PolicyCache
from grantvault_server.providers.catalog import load_templates
from grantvault_server.providers.schema import InjectionSpec, SecretTemplate
from grantvault_server.services.group_commit import RetrievalWriter
from grantvault_server.services.vault_time import SYSTEM_CLOCK, Clock
from grantvault_server.storage import migrate
from grantvault_server.storage.db import Database

log = logging.getLogger(__name__)

#: The vault-wide key of the audit HMAC chain (see ``audit.chain``).
AUDIT_KEY_NAME = "audit-chain"


@dataclass
class Vault:
    settings: Settings
    db: Database
    barrier: Barrier
    templates: dict[str, SecretTemplate]
    audit: AuditChain = field(default_factory=lambda: AuditChain(b""))
    #: Compiled policies per app (``services.policies``), invalidated by generation.
    policies: PolicyCache = field(default_factory=PolicyCache)
    key_generated: bool = False
    _specs: dict[str, InjectionSpec] = field(default_factory=dict, repr=False)
    _writer: RetrievalWriter | None = field(default=None, repr=False)
    _oauth: OAuthClient | None = field(default=None, repr=False)
    _http: OutboundClient | None = field(default=None, repr=False)
    #: In-process single flight of token refreshes: grant id -> the refresh in progress.
    refreshes: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Told the outcome of every refresh that reached a provider (wired to /metrics).
    refresh_observer: Callable[[str], None] = field(default=lambda _outcome: None, repr=False)
    #: The time every expiry, lease, cool-down and token check reads (tests advance a fake).
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)
    #: This vault's identity caches in this process (keys, verified tokens, IdP configs).
    identity: IdentityState = field(default_factory=IdentityState, repr=False)

    def __post_init__(self) -> None:
        # The identity key caches age on this vault's clock (read at each use: a test may
        # set ``vault.clock`` after start).
        self.identity.clock = lambda: self.clock.monotonic()
        # The key caches fetch through this vault's one outbound client.
        self.identity.http = lambda: self.http

    @property
    def retrieval_writer(self) -> RetrievalWriter:
        """The group-commit writer of the retrieval hot path (one per vault)."""
        if self._writer is None:
            self._writer = RetrievalWriter(self.db, self.audit, now=lambda: self.clock.now())
        return self._writer

    @property
    def http(self) -> OutboundClient:
        """The one pooled client of every call this vault makes to a third party (providers,
        IdPs): the URL rule, TLS from this vault's settings, no redirects, bounded time and
        size (see ``outbound.http``). Closed with the vault."""
        if self._http is None:
            self._http = OutboundClient(self.settings.allow_http_hosts, verify=self.tls_context)
        return self._http

    @property
    def oauth(self) -> OAuthClient:
        """Every call to an OAuth provider, through :attr:`http`."""
        if self._oauth is None:
            self._oauth = OAuthClient(http=self.http)
        return self._oauth

    @property
    def tls_context(self) -> ssl.SSLContext:
        """Outbound TLS trust from this vault's own settings (``GRANTVAULT_CA_BUNDLE``)."""
        return outbound.context_for(self.settings.ca_bundle)

    def injection_spec(self, raw: dict[str, Any]) -> InjectionSpec:
        """Parse a stored injection spec, memoised (it is validated data read on every use)."""
        key = json.dumps(raw, sort_keys=True)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= 4096:
                self._specs.clear()
            spec = self._specs[key] = InjectionSpec.model_validate(raw)
        return spec

    @classmethod
    async def start(
        cls, settings: Settings, *, migrate_schema: bool | None = None, allow_generate: bool = True
    ) -> Vault:
        """Open the database and the barrier; refuse to run with a wrong master key.

        The embedded SQLite database is migrated automatically; PostgreSQL is migrated only
        when asked (``grantvault db upgrade``), so replicas never race each other's DDL.
        """
        source = resolve_master_key(settings, allow_generate=allow_generate)
        # Fetches not given a context (the JWKS cache) use the process's: this vault's.
        outbound.configure(settings.ca_bundle)
        if settings.is_embedded:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(
            settings.effective_database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        try:
            if migrate_schema if migrate_schema is not None else settings.is_sqlite:
                await migrate.upgrade(db)
            current = await migrate.current_revision(db)
            if current != migrate.head_revision():
                raise SchemaOutOfDate(
                    f"The database schema is at {current or 'nothing'}; this server needs "
                    f"{migrate.head_revision()}. Run `grantvault db upgrade`."
                )
            barrier = Barrier(MasterKey(source.key))
            for attempt in range(3):
                try:
                    async with db.write() as conn:
                        await barrier.open(conn)
                        audit_key = await barrier.named_key(conn, AUDIT_KEY_NAME)
                    break
                except BarrierError as exc:
                    if "concurrently" not in str(exc) or attempt == 2:
                        raise
        except BaseException:
            await db.dispose()
            raise
        return cls(
            settings=settings,
            db=db,
            barrier=barrier,
            templates=load_templates(),
            audit=AuditChain(audit_key),
            key_generated=source.generated,
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        await self.db.dispose()


def operator_actor(via: str = "cli") -> dict[str, Any]:
    """Audit actor for operator actions taken on this machine."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return {"type": "operator", "via": via, "user": user}

"""OAuth tokens behind a grant: storage, refresh (once, across replicas) and revocation.

Refresh is where token vaults hurt their users (field-lessons §1.5-1.6): two refreshes with
the same rotating refresh token make the provider revoke the whole grant. So:

* **one refresh per grant at a time, everywhere.** Inside a process, callers of the same
  grant share one refresh (single flight). Across processes and replicas, the refresher
  takes a lease in the database row (``lease_owner``/``lease_until``), conditional on the
  token ``generation`` it read: the generation is the fencing token, so a process that read
  an old row can neither take the lease nor write its result. Whoever loses waits and reads
  the winner's tokens from the row.
* **the rotated refresh token is committed before the new access token is used**, and the
  old refresh token is kept when the provider's answer omits one. Once the provider has
  answered, its tokens are held and the commit is retried through a database stall (up to
  ``COMMIT_RETRY_S``, inside the lease): dropping them would make the next refresh send a
  used refresh token, which rotating providers punish by killing the grant (decision 0008).
* ``invalid_grant`` marks the grant "needs re-connect" (``credential_revoked``) and drops the
  dead tokens; transient failures are retried a few times with backoff and jitter, then the
  grant cools down (exponential, capped) instead of hammering the provider, and the current
  access token is served as long as it is still valid.
* a request that may have reached the provider without its answer reaching us (a provider
  that accepted the connection and hung) is never re-sent; it is a transient failure, and the
  row remembers that the answer was lost, so a later ``invalid_grant`` (the provider rotated
  the token when it processed the lost request) is audited as ``refresh_answer_lost``.
* tokens without an expiry are used until the provider says otherwise.

The same function serves retrieval (``/sdk/token``) and any later proxy mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import VaultError
from grantvault_server.oauth import client as oauth_client
from grantvault_server.oauth.client import OAuthError, TokenSet
from grantvault_server.services import oauth_providers as providers
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn, storage_unavailable
from grantvault_server.storage.tables import grants, oauth_revocations, oauth_tokens

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a refresher owns a grant's refresh (decision 0008): the provider phase (calls
#: start at most 25 s into the lease, each at most TOTAL_TIMEOUT_S = 15 s, all within
#: PROVIDER_BUDGET_S), then up to COMMIT_RETRY_S of database stall while the answer is
#: committed, plus LEASE_MARGIN_S for clock skew.
LEASE = timedelta(seconds=75)
#: How long the answer of a provider is held and its commit retried through a database stall.
COMMIT_RETRY_S = 30.0
#: The refresher stops trusting its lease this long before the lease ends.
LEASE_MARGIN_S = 5.0
#: ``last_refresh_error`` prefix of a grant whose last refresh request may have reached the
#: provider without its answer reaching us (the refresh token may have been rotated).
ANSWER_LOST = "answer_lost"
#: Audited reason when the provider then refuses the refresh token as used.
REFRESH_ANSWER_LOST = "refresh_answer_lost"
#: ``last_refresh_error`` of a grant whose lease expired while still owned: its refresher
#: crashed or was cancelled, maybe after sending the refresh token (decision 0008).
LEASE_EXPIRED_MARKER = f"{ANSWER_LOST}:lease_expired"
#: Lock wait of one try of a held commit on SQLite: the wait blocks the event loop, so the
#: retry loop waits between short tries (yielding) instead of inside one long one.
COMMIT_TRY_LOCK_WAIT_MS = 100
#: How long a caller waits for someone else's refresh before answering 409.
WAIT_FOR_REFRESH_S = 30.0
#: Refresh this long before expiry at most (less for short-lived tokens: a tenth of life).
MAX_MARGIN = timedelta(seconds=60)
ATTEMPTS = 3
#: Every provider call of one refresh, backoff included, ends within this long of the first:
#: a retry starts only if its wait and its whole call (TOTAL_TIMEOUT_S) still fit. Below the
#: SDK's 30 s default timeout, so a caller gets the provider's outcome, not a timeout.
PROVIDER_BUDGET_S = 25.0
COOLDOWN_BASE_S = 5.0
COOLDOWN_MAX_S = 300.0
REVOCATION_ATTEMPTS = 8


def token_aad(app_id: str, grant_id: str, column: str) -> bytes:
    return aad_for("oauth_tokens", app_id, grant_id, column)


def revocation_aad(app_id: str, row_id: str) -> bytes:
    return aad_for("oauth_revocations", app_id, row_id, "token_ct")


def expiry_for(tokens: TokenSet, now: datetime) -> datetime | None:
    return now + timedelta(seconds=tokens.expires_in) if tokens.expires_in else None


async def store_new_tokens(
    vault: Vault, conn: Conn, app_id: str, grant_id: str, tokens: TokenSet, now: datetime
) -> str:
    """Insert or replace a grant's tokens after a (re)connect; returns the new generation."""
    generation = str(uuid.uuid4())
    values: dict[str, Any] = {
        "access_ct": vault.barrier.encrypt(
            tokens.access_token.encode(), token_aad(app_id, grant_id, "access_ct")
        ),
        "refresh_ct": vault.barrier.encrypt(
            tokens.refresh_token.encode(), token_aad(app_id, grant_id, "refresh_ct")
        )
        if tokens.refresh_token
        else None,
        "access_expires_at": expiry_for(tokens, now),
        "generation": generation,
        "lease_owner": None,
        "lease_until": None,
        "refresh_failures": 0,
        "cooldown_until": None,
        "last_refresh_error": None,
        "needs_reconnect": False,
        "updated_at": now,
    }
    updated = await conn.execute(
        sa.update(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id).values(**values)
    )
    if updated.rowcount == 0:
        await conn.execute(
            sa.insert(oauth_tokens).values(grant_id=grant_id, app_id=app_id, **values)
        )
    return generation


@dataclass
class AccessToken:
    """What retrieval hands out: never the refresh token."""

    value: str
    expires_at: datetime | None
    generation: str
    retry_info: dict[str, Any] | None = None


@dataclass
class _Attempts:
    errors: list[dict[str, Any]] = field(default_factory=list)

    def info(self, success: int | None) -> dict[str, Any] | None:
        if not self.errors:
            return None
        return {
            "total_attempts": len(self.errors) + (1 if success else 0),
            "successful_attempt": success,
            "errors": self.errors,
        }


def _margin(row: Any) -> timedelta:
    if row.access_expires_at is None:
        return timedelta(0)
    life: timedelta = row.access_expires_at - row.updated_at
    return min(MAX_MARGIN, max(timedelta(0), life / 10))


def fresh_enough(row: Any, now: datetime) -> bool:
    return row.access_expires_at is None or row.access_expires_at - _margin(row) > now


def _still_valid(row: Any, now: datetime) -> bool:
    return row.access_ct is not None and (
        row.access_expires_at is None or row.access_expires_at > now
    )


def credential_revoked(grant_id: str, provider_id: str) -> VaultError:
    return VaultError(
        ErrorCode.CREDENTIAL_REVOKED,
        "The provider no longer accepts this grant's credentials (revoked or expired at the "
        "provider); ask the user to connect again (create a session with repair_grant_id).",
        grant_id=grant_id,
        provider_id=provider_id,
    )


async def _read(conn: Conn, grant_id: str) -> Any:
    return (
        await conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id))
    ).first()


async def _decrypt_access(vault: Vault, conn: Conn, row: Any) -> str:
    return (
        await vault.barrier.decrypt_fresh(
            conn, row.access_ct, token_aad(row.app_id, row.grant_id, "access_ct")
        )
    ).decode()


async def access_token(vault: Vault, cfg: providers.ProviderConfig, grant_id: str) -> AccessToken:
    """A usable access token for the grant, refreshing it first when it is (nearly) expired."""
    async with vault.db.read() as conn:
        row = await _read(conn, grant_id)
        if row is None or row.needs_reconnect or row.access_ct is None:
            raise credential_revoked(grant_id, cfg.provider_id)
        now = vault.clock.now()
        pending = vault.refreshes.get(grant_id)
        if fresh_enough(row, now) or (pending is not None and _still_valid(row, now)):
            # A refresh already under way here does not hold up a still-valid token.
            return AccessToken(
                await _decrypt_access(vault, conn, row), row.access_expires_at, row.generation
            )
    # Single flight inside this process: every caller of this grant awaits one refresh.
    if pending is None:
        pending = asyncio.get_running_loop().create_task(_refresh(vault, cfg, grant_id))
        vault.refreshes[grant_id] = pending
        pending.add_done_callback(lambda _t: vault.refreshes.pop(grant_id, None))
    result: AccessToken = await asyncio.shield(pending)
    return result


async def _refresh(vault: Vault, cfg: providers.ProviderConfig, grant_id: str) -> AccessToken:
    """Refresh under the database lease, or wait for whoever holds it."""
    owner = str(uuid.uuid4())
    deadline = asyncio.get_running_loop().time() + WAIT_FOR_REFRESH_S
    delay = 0.02
    while True:
        now = vault.clock.now()
        # Taken before the lease's own clock starts: this process's view of the lease ends
        # no later than the row's.
        leased_at = asyncio.get_running_loop().time()
        async with vault.db.write() as conn:
            row = await _read(conn, grant_id)
            if row is None or row.needs_reconnect or row.access_ct is None:
                raise credential_revoked(grant_id, cfg.provider_id)
            if fresh_enough(row, now):
                # Someone (maybe another replica) refreshed while we waited: use theirs.
                return AccessToken(
                    await _decrypt_access(vault, conn, row), row.access_expires_at, row.generation
                )
            if row.cooldown_until is not None and row.cooldown_until > now:
                if _still_valid(row, now):
                    return AccessToken(
                        await _decrypt_access(vault, conn, row),
                        row.access_expires_at,
                        row.generation,
                    )
                raise _unavailable(cfg, row.cooldown_until - now)
            previous = str(row.last_refresh_error or "")
            # A lease that ran out still owned (a clean release clears the owner): its
            # refresher crashed or was cancelled, maybe after the provider rotated the token.
            abandoned = row.lease_owner is not None
            if abandoned and not previous.startswith(ANSWER_LOST):
                previous = LEASE_EXPIRED_MARKER
            taken = await conn.execute(
                sa.update(oauth_tokens)
                .where(
                    oauth_tokens.c.grant_id == grant_id,
                    oauth_tokens.c.generation == row.generation,
                    sa.or_(oauth_tokens.c.lease_until.is_(None), oauth_tokens.c.lease_until < now),
                    # Exactly the holder we read, so what is recorded below is about it.
                    oauth_tokens.c.lease_owner.is_(None)
                    if row.lease_owner is None
                    else oauth_tokens.c.lease_owner == row.lease_owner,
                )
                .values(lease_owner=owner, lease_until=now + LEASE, last_refresh_error=previous)
            )
            leased = taken.rowcount == 1
            refresh_ct = row.refresh_ct
            if leased and abandoned:
                await vault.audit.append(
                    conn,
                    [
                        AuditRecord(
                            chain=row.app_id,
                            event=AuditEvent.TOKEN_REFRESH_FAILED,
                            outcome=Outcome.FAILURE,
                            actor={"type": "vault", "via": "refresh"},
                            grant_id=grant_id,
                            provider_id=cfg.provider_id,
                            reason="lease_expired",
                            details={"answer_lost": True},
                        )
                    ],
                )
            if (
                not leased
                and row.lease_owner is not None
                and row.lease_until is not None
                and row.lease_until >= now
                and _still_valid(row, now)
            ):
                # Someone else (another replica) is refreshing: the still-valid token is
                # served meanwhile rather than waiting for their answer.
                return AccessToken(
                    await _decrypt_access(vault, conn, row), row.access_expires_at, row.generation
                )
        if leased:
            lease_deadline = leased_at + LEASE.total_seconds() - LEASE_MARGIN_S
            return await _refresh_leased(
                vault, cfg, row, owner, refresh_ct, lease_deadline, previous
            )
        if asyncio.get_running_loop().time() > deadline:
            raise VaultError(
                ErrorCode.TOKEN_REFRESH_IN_PROGRESS,
                "Another process is refreshing this grant's token; retry in a moment.",
                grant_id=grant_id,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _unavailable(cfg: providers.ProviderConfig, wait: timedelta) -> VaultError:
    # Rounded up, never beyond the longest cool-down the docs promise.
    seconds = max(1, min(int(COOLDOWN_MAX_S), math.ceil(wait.total_seconds())))
    return VaultError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"{cfg.spec.display_name} could not refresh this grant's token; retry after {seconds} s.",
        provider_id=cfg.provider_id,
        retry_after_seconds=seconds,
    )


async def _refresh_leased(
    vault: Vault,
    cfg: providers.ProviderConfig,
    row: Any,
    owner: str,
    refresh_ct: bytes | None,
    lease_deadline: float,
    previous: str,
) -> AccessToken:
    """Call the provider while holding the lease, then record the outcome under the fence.

    ``lease_deadline`` (event-loop time) is when this process stops trusting its lease: every
    write of the outcome is retried through a database stall until then, never after, and
    a provider call starts only if it and a held commit still fit before it. ``previous`` is
    the row's ``last_refresh_error`` as this lease left it.
    """
    grant_id, app_id = row.grant_id, row.app_id
    fence = (
        (oauth_tokens.c.grant_id == grant_id)
        & (oauth_tokens.c.lease_owner == owner)
        & (oauth_tokens.c.generation == row.generation)
    )
    async with vault.db.read() as conn:
        creds = await providers.client_credentials(vault, conn, cfg)
        refresh_token = (
            (
                await vault.barrier.decrypt_fresh(
                    conn, refresh_ct, token_aad(app_id, grant_id, "refresh_ct")
                )
            ).decode()
            if refresh_ct is not None
            else None
        )
    if refresh_token is None or not cfg.spec.supports_refresh:
        # Nothing to refresh with: the token has expired for good.
        return await _mark_dead(vault, cfg, row, fence, "no_refresh_token", lease_deadline)
    attempts = _Attempts()
    tokens: TokenSet | None = None
    failure: OAuthError | None = None
    loop = asyncio.get_running_loop()
    budget_end = loop.time() + PROVIDER_BUDGET_S
    for attempt in range(1, ATTEMPTS + 1):
        if loop.time() + oauth_client.TOTAL_TIMEOUT_S + COMMIT_RETRY_S > lease_deadline:
            # Pool waits or a slow database ate into the lease: a call now could outlive it,
            # and another replica could send the same refresh token meanwhile. Stop unsent.
            log.warning("refresh stopped: not enough lease left", extra={"grant_id": grant_id})
            break
        try:
            tokens = await vault.oauth.refresh(cfg.spec, cfg.token_url, creds, refresh_token)
            break
        except OAuthError as exc:
            failure = exc
            # No answer to a request that may have arrived (a timeout, a connection dropped
            # after sending) may mean the provider rotated the token: sending the same refresh
            # token again would look like theft to it. Retry only what surely never arrived
            # (connection refused) or was answered (5xx, 429), within the lease.
            retryable = exc.transient and not exc.maybe_delivered
            wait = 0.0
            if retryable and attempt < ATTEMPTS:
                wait = min(exc.retry_after or 0.25 * 2 ** (attempt - 1), 2.0) * random.uniform(
                    0.5, 1.0
                )
            permanent = not retryable or (
                attempt < ATTEMPTS
                and loop.time() + wait + oauth_client.TOTAL_TIMEOUT_S > budget_end
            )
            if permanent:
                wait = 0.0
            attempts.errors.append(
                {
                    "attempt": attempt,
                    "error": exc.error[:500],
                    "error_type": "provider_error" if exc.status else "network_error",
                    "delay_s": round(wait, 3),
                    "permanent": permanent,
                }
            )
            if permanent:
                break
            if attempt < ATTEMPTS:
                await asyncio.sleep(wait)
    now = vault.clock.now()
    if tokens is not None:
        return await _commit_refreshed(
            vault, cfg, row, fence, tokens, refresh_token, attempts, now, lease_deadline
        )
    if failure is None:
        return await _release_unsent(vault, cfg, row, fence, lease_deadline)
    vault.refresh_observer(
        "credential_revoked"
        if failure.dead_credential
        else "config_error"
        if failure.config_error
        else "transient_failure"
    )
    if failure.dead_credential:
        if previous.startswith(ANSWER_LOST):
            # The provider says the refresh token was used: by the refresh whose answer we
            # never received. Say so, so the operator knows what killed the grant.
            return await _mark_dead(
                vault, cfg, row, fence, REFRESH_ANSWER_LOST, lease_deadline,
                details={"provider_error": failure.error, "earlier_failure": previous[:120]},
            )  # fmt: skip
        return await _mark_dead(vault, cfg, row, fence, failure.error, lease_deadline)
    # Once an answer is lost the marker stays until a refresh succeeds (or the user
    # reconnects), whatever fails in between.
    answer_lost = failure.maybe_delivered or previous.startswith(ANSWER_LOST)
    failures = int(row.refresh_failures or 0) + 1
    cooldown = timedelta(seconds=min(COOLDOWN_MAX_S, COOLDOWN_BASE_S * 2 ** (failures - 1)))

    async def record(conn: Conn, _try: int) -> AccessToken | None:
        stored = await conn.execute(
            sa.update(oauth_tokens)
            .where(fence)
            .values(
                lease_owner=None,
                lease_until=None,
                refresh_failures=failures,
                cooldown_until=now + cooldown,
                last_refresh_error=(
                    f"{ANSWER_LOST}:{failure.error}" if answer_lost else failure.error
                )[:255],
            )
        )
        if stored.rowcount != 1:
            # An earlier try committed although it reported a failure, or the lease was lost:
            # nothing to record (and audit) again; answer from what the row holds now.
            return await _current_answer(vault, cfg, conn, grant_id, now, attempts)
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app_id,
                    event=AuditEvent.TOKEN_REFRESH_FAILED,
                    outcome=Outcome.FAILURE,
                    actor={"type": "vault", "via": "refresh"},
                    grant_id=grant_id,
                    provider_id=cfg.provider_id,
                    reason=failure.error[:64],
                    details={
                        "attempts": len(attempts.errors),
                        "cooldown_s": cooldown.total_seconds(),
                        "answer_lost": failure.maybe_delivered,
                    },
                )
            ],
        )
        if _still_valid(row, now):
            return AccessToken(
                await _decrypt_access(vault, conn, row),
                row.access_expires_at,
                row.generation,
                attempts.info(None),
            )
        return None

    served = await _write_retrying(vault, grant_id, lease_deadline, record)
    if served is not None:
        return served
    if failure.config_error:
        raise VaultError(
            ErrorCode.CONNECT_CONFIG_ERROR,
            f"{cfg.spec.display_name} rejected this app's client credentials ({failure.error}); "
            "fix the provider registration.",
            provider_id=cfg.provider_id,
        )
    raise _unavailable(cfg, cooldown)


async def _commit_refreshed(
    vault: Vault,
    cfg: providers.ProviderConfig,
    row: Any,
    fence: Any,
    tokens: TokenSet,
    old_refresh: str,
    attempts: _Attempts,
    answered_at: datetime,
    lease_deadline: float,
) -> AccessToken:
    """Store what the provider answered, holding on to it through a database stall.

    The provider has rotated the refresh token: if these tokens were dropped, the next refresh
    would send the used one and the provider would kill the grant. So the commit is retried
    (within the lease, at most ``COMMIT_RETRY_S``), and only a committed access token leaves.
    """
    grant_id, app_id = row.grant_id, row.app_id
    new_refresh = tokens.refresh_token or old_refresh
    generation = str(uuid.uuid4())
    # Encrypted once, before the first try: the transaction stays as short as it can be.
    values = {
        "access_ct": vault.barrier.encrypt(
            tokens.access_token.encode(), token_aad(app_id, grant_id, "access_ct")
        ),
        "refresh_ct": vault.barrier.encrypt(
            new_refresh.encode(), token_aad(app_id, grant_id, "refresh_ct")
        ),
        "access_expires_at": expiry_for(tokens, answered_at),
        "generation": generation,
        "lease_owner": None,
        "lease_until": None,
        "refresh_failures": 0,
        "cooldown_until": None,
        "last_refresh_error": None,
        "updated_at": answered_at,
    }
    loop = asyncio.get_running_loop()
    deadline = min(loop.time() + COMMIT_RETRY_S, lease_deadline)
    overtaken_by: VaultError | None = None

    async def commit(conn: Conn, tries: int) -> bool:
        stored = await conn.execute(sa.update(oauth_tokens).where(fence).values(**values))
        if stored.rowcount != 1:
            current = await _read(conn, grant_id)
            if current is not None and current.generation == generation:
                # An earlier try committed although its connection reported a failure
                # (the answer to COMMIT was lost): the tokens are stored; nothing to redo.
                return False
            # Our lease was taken over, or the grant was revoked meanwhile: the row is
            # not ours. Never hand out a token the database does not know about, and do
            # not leave the provider's fresh tokens alive.
            log.error("refresh lease lost before commit", extra={"grant_id": grant_id})
            await _queue_orphans(vault, conn, row, cfg, tokens)
            nonlocal overtaken_by
            overtaken_by = await _overtaken_error(conn, cfg, grant_id, current)
            return True
        if tokens.scopes is not None:
            await conn.execute(
                sa.update(grants).where(grants.c.id == grant_id).values(scopes=list(tokens.scopes))
            )
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app_id,
                    event=AuditEvent.TOKEN_REFRESHED,
                    outcome=Outcome.SUCCESS,
                    actor={"type": "vault", "via": "refresh"},
                    grant_id=grant_id,
                    provider_id=cfg.provider_id,
                    details={
                        "attempts": len(attempts.errors) + 1,
                        "rotated": tokens.refresh_token is not None
                        and tokens.refresh_token != old_refresh,
                        "commit_tries": tries,
                    },
                )
            ],
        )
        return False

    try:
        lost = await _write_retrying(vault, grant_id, deadline, commit)
    except VaultError:
        # Out of lease: another process may refresh now (with the old refresh token), so
        # these tokens can no longer be stored safely. This is the window decision 0008
        # describes; say loudly that it happened.
        log.error(
            "refresh answer could not be committed within the lease; tokens dropped",
            extra={"grant_id": grant_id},
        )
        raise
    if lost:  # raised after the transaction, so the queued orphans are committed
        raise overtaken_by or VaultError(
            ErrorCode.TOKEN_REFRESH_IN_PROGRESS,
            "The token refresh was overtaken (the grant changed meanwhile); retry.",
            grant_id=grant_id,
        )
    vault.refresh_observer("success")
    # Committed: only now does the new access token leave this function.
    return AccessToken(
        tokens.access_token,
        expiry_for(tokens, answered_at),
        generation,
        attempts.info(len(attempts.errors) + 1),
    )


async def _write_retrying(
    vault: Vault, grant_id: str, deadline: float, work: Callable[[Conn, int], Awaitable[T]]
) -> T:
    """Run ``work(conn, try_number)`` in a write transaction, retrying while the database is unavailable
    (SQLite locked past its busy timeout, PostgreSQL restarting) until ``deadline``.

    Only for writes that record a provider's answer under the refresh lease: losing them
    would either drop rotated tokens or leave the lease held and no cool-down recorded.
    """
    loop = asyncio.get_running_loop()
    delay = 0.05
    tries = 0
    while True:
        tries += 1
        try:
            async with vault.db.write(lock_wait_ms=COMMIT_TRY_LOCK_WAIT_MS) as conn:
                return await work(conn, tries)
        except VaultError as exc:
            if exc.code is not ErrorCode.STORAGE_UNAVAILABLE or loop.time() + delay > deadline:
                raise
        log.warning("refresh outcome not stored yet; retrying", extra={"grant_id": grant_id})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _queue_orphans(
    vault: Vault, conn: Conn, row: Any, cfg: providers.ProviderConfig, tokens: TokenSet
) -> None:
    """Queue tokens that no grant holds any more for revocation at the provider."""
    now = vault.clock.now()
    for offset, (value, hint) in enumerate(
        ((tokens.refresh_token, "refresh_token"), (tokens.access_token, "access_token"))
    ):
        if value:
            await _queue_revocation(
                vault, conn, row.app_id, cfg.id, row.grant_id, value.encode(), hint,
                now + timedelta(microseconds=offset),
            )  # fmt: skip


async def _queue_revocation(
    vault: Vault,
    conn: Conn,
    app_id: str,
    oauth_provider_id: str,
    grant_id: str,
    token: bytes,
    hint: str,
    created_at: datetime,
) -> str:
    """One token waiting, encrypted, for the provider's revocation endpoint."""
    rid = str(uuid.uuid4())
    await conn.execute(
        sa.insert(oauth_revocations).values(
            id=rid,
            app_id=app_id,
            oauth_provider_id=oauth_provider_id,
            grant_id=grant_id,
            token_ct=vault.barrier.encrypt(token, revocation_aad(app_id, rid)),
            token_type_hint=hint,
            attempts=0,
            next_attempt_at=vault.clock.now(),
            created_at=created_at,
        )
    )
    return rid


async def _mark_dead(
    vault: Vault,
    cfg: providers.ProviderConfig,
    row: Any,
    fence: Any,
    reason: str,
    lease_deadline: float,
    details: dict[str, Any] | None = None,
) -> AccessToken:
    """Mark the credential dead under the fence, then raise ``credential_revoked`` (or serve
    what the row holds if the fence no longer matches and another refresh succeeded)."""

    async def mark(conn: Conn, _try: int) -> AccessToken | None:
        marked = await conn.execute(
            sa.update(oauth_tokens)
            .where(fence)
            .values(
                needs_reconnect=True,
                access_ct=None,
                refresh_ct=None,
                lease_owner=None,
                lease_until=None,
                last_refresh_error=reason[:255],
                updated_at=vault.clock.now(),
            )
        )
        if marked.rowcount != 1:
            # Already marked by an earlier try whose commit reported a failure, or the lease
            # was lost: audit nothing twice, and answer from what the row holds now.
            return await _current_answer(vault, cfg, conn, row.grant_id, vault.clock.now(), None)
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=row.app_id,
                    event=AuditEvent.GRANT_NEEDS_RECONNECT,
                    outcome=Outcome.FAILURE,
                    actor={"type": "vault", "via": "refresh"},
                    grant_id=row.grant_id,
                    provider_id=cfg.provider_id,
                    reason=reason[:64],
                    details=details,
                )
            ],
        )
        return None

    served = await _write_retrying(vault, row.grant_id, lease_deadline, mark)
    if served is not None:
        return served
    raise credential_revoked(row.grant_id, cfg.provider_id)


async def _current_answer(
    vault: Vault,
    cfg: providers.ProviderConfig,
    conn: Conn,
    grant_id: str,
    now: datetime,
    attempts: _Attempts | None,
) -> AccessToken | None:
    """After a fenced write matched nothing: what the row holds now decides the answer.

    A usable token (someone else refreshed, or ours is still valid) is returned; a dead or
    missing row raises ``credential_revoked``; ``None`` leaves the caller's own error.
    """
    current = await _read(conn, grant_id)
    if current is None or current.needs_reconnect or current.access_ct is None:
        raise credential_revoked(grant_id, cfg.provider_id)
    if fresh_enough(current, now) or _still_valid(current, now):
        return AccessToken(
            await _decrypt_access(vault, conn, current),
            current.access_expires_at,
            current.generation,
            attempts.info(None) if attempts is not None else None,
        )
    return None


async def _overtaken_error(
    conn: Conn, cfg: providers.ProviderConfig, grant_id: str, current: Any
) -> VaultError | None:
    """The answer for a refresh whose fenced commit found the row changed: a revoked (or
    deleted) grant, or a credential marked dead, says so; ``None`` means another refresher
    took over (the caller answers ``token_refresh_in_progress``)."""
    grant = (await conn.execute(sa.select(grants.c.status).where(grants.c.id == grant_id))).first()
    if grant is None or grant.status == "revoked":
        return VaultError(
            ErrorCode.GRANT_REVOKED,
            "This grant was revoked while its token was refreshed; create a new grant.",
            grant_id=grant_id,
        )
    if current is None or current.needs_reconnect or current.access_ct is None:
        return credential_revoked(grant_id, cfg.provider_id)
    return None


async def _release_unsent(
    vault: Vault, cfg: providers.ProviderConfig, row: Any, fence: Any, lease_deadline: float
) -> AccessToken:
    """Give the lease back when no provider call was started (too little lease left): no
    cool-down, nothing to remember; the still-valid token if there is one, else a 503."""
    now = vault.clock.now()

    async def release(conn: Conn, _try: int) -> AccessToken | None:
        await conn.execute(
            sa.update(oauth_tokens).where(fence).values(lease_owner=None, lease_until=None)
        )
        return await _current_answer(vault, cfg, conn, row.grant_id, now, None)

    served = await _write_retrying(vault, row.grant_id, lease_deadline, release)
    if served is not None:
        return served
    raise storage_unavailable()


async def token_strings(vault: Vault, conn: Conn, app_id: str, grant_id: str) -> list[str]:
    """The grant's current tokens, to scrub them from audit bodies the SDK posts."""
    row = await _read(conn, grant_id)
    out: list[str] = []
    for column in ("access_ct", "refresh_ct"):
        blob = None if row is None else row._mapping[column]
        if blob is not None:
            out.append(
                (
                    await vault.barrier.decrypt_fresh(
                        conn, blob, token_aad(app_id, grant_id, column)
                    )
                ).decode()
            )
    return sorted((s for s in out if len(s) >= 4), key=len, reverse=True)


# -- revocation -----------------------------------------------------------------------------


async def detach_tokens_for_revocation(
    vault: Vault, conn: Conn, app_id: str, grant_id: str, oauth_provider_id: str
) -> list[str]:
    """Inside the revoking transaction: delete the grant's tokens and queue their revocation
    at the provider (refresh token first). Returns the queued row ids."""
    row = await _read(conn, grant_id)
    if row is None:
        return []
    queued: list[str] = []
    now = vault.clock.now()
    for column, hint in (("refresh_ct", "refresh_token"), ("access_ct", "access_token")):
        blob = row._mapping[column]
        if blob is None:
            continue
        plaintext = await vault.barrier.decrypt_fresh(
            conn, blob, token_aad(app_id, grant_id, column)
        )
        # Queued in order (refresh token first: revoking it kills the access token too).
        rid = await _queue_revocation(
            vault, conn, app_id, oauth_provider_id, grant_id, plaintext, hint,
            now + timedelta(microseconds=len(queued)),
        )  # fmt: skip
        queued.append(rid)
    await conn.execute(sa.delete(oauth_tokens).where(oauth_tokens.c.grant_id == grant_id))
    return queued


async def run_revocations(vault: Vault, *, grant_id: str | None = None, limit: int = 50) -> int:
    """Call providers' revocation endpoints for queued tokens; returns how many are done.

    A success (or a provider with no revocation endpoint) deletes the queued token. A failure
    is retried later with backoff, up to ``REVOCATION_ATTEMPTS``; then the token is dropped
    and the give-up is audited (the grant itself was revoked in the vault long before).
    """
    now = vault.clock.now()
    stmt = (
        sa.select(oauth_revocations)
        .where(oauth_revocations.c.next_attempt_at <= now)
        .order_by(oauth_revocations.c.created_at)
        .limit(limit)
    )
    if grant_id is not None:
        stmt = stmt.where(oauth_revocations.c.grant_id == grant_id)
    async with vault.db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    done = 0
    for item in rows:
        error: str | None = None
        cfg = None
        try:
            async with vault.db.read() as conn:
                try:
                    cfg = await providers.get_config_by_id(
                        conn, item.app_id, item.oauth_provider_id
                    )
                except VaultError:
                    cfg = None
                creds = await providers.client_credentials(vault, conn, cfg) if cfg else None
                token = (
                    await vault.barrier.decrypt_fresh(
                        conn, item.token_ct, revocation_aad(item.app_id, item.id)
                    )
                ).decode()
            if cfg is not None and creds is not None and cfg.revocation_url is not None:
                await vault.oauth.revoke(
                    cfg.spec, cfg.revocation_url, creds, token, item.token_type_hint
                )
        except OAuthError as exc:
            error = exc.error
        except Exception as exc:  # one bad row must not stall the queue for every app
            # The traceback goes to the log (the formatter strips row values); the audit row
            # gets a stable code, not an exception class name.
            log.error("revocation item failed", exc_info=exc, extra={"grant_id": item.grant_id})
            error = "internal_error"
        attempts = int(item.attempts) + 1
        async with vault.db.write() as conn:
            if error is None or attempts >= REVOCATION_ATTEMPTS:
                await conn.execute(
                    sa.delete(oauth_revocations).where(oauth_revocations.c.id == item.id)
                )
                done += 1
                await vault.audit.append(
                    conn,
                    [
                        AuditRecord(
                            chain=item.app_id,
                            event=AuditEvent.GRANT_PROVIDER_REVOKED,
                            outcome=Outcome.SUCCESS if error is None else Outcome.FAILURE,
                            actor={"type": "vault", "via": "revocation"},
                            grant_id=item.grant_id,
                            provider_id=cfg.provider_id if cfg else None,
                            reason=error,
                            details={
                                "token_type": item.token_type_hint,
                                "attempts": attempts,
                                "endpoint": cfg is not None and cfg.revocation_url is not None,
                            },
                        )
                    ],
                )
            else:
                backoff = timedelta(seconds=min(3600, 10 * 2**attempts))
                await conn.execute(
                    sa.update(oauth_revocations)
                    .where(oauth_revocations.c.id == item.id)
                    .values(
                        attempts=attempts,
                        last_error=error[:255],
                        next_attempt_at=vault.clock.now() + backoff,
                    )
                )
    return done

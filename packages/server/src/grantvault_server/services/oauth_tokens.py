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
from grantvault_server.oauth.client import ClientCredentials, OAuthError, TokenSet
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
        found = await _try_lease(vault, cfg, grant_id, owner, now)
        if isinstance(found, AccessToken):
            return found
        if found is not None:
            lease_deadline = leased_at + LEASE.total_seconds() - LEASE_MARGIN_S
            return await _refresh_leased(
                vault, cfg, found.row, owner, lease_deadline, found.previous
            )
        if asyncio.get_running_loop().time() > deadline:
            raise VaultError(
                ErrorCode.TOKEN_REFRESH_IN_PROGRESS,
                "Another process is refreshing this grant's token; retry in a moment.",
                grant_id=grant_id,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


@dataclass(frozen=True)
class _Leased:
    """A lease this process took: the row it was taken on (its generation is the fence) and
    the ``last_refresh_error`` the lease left on it."""

    row: Any
    previous: str


async def _try_lease(
    vault: Vault, cfg: providers.ProviderConfig, grant_id: str, owner: str, now: datetime
) -> AccessToken | _Leased | None:
    """One look at the row, in one write transaction: serve the token it holds, take the
    lease, or (``None``) find the lease held elsewhere with no valid token to serve meanwhile,
    so the caller waits and looks again."""
    async with vault.db.write() as conn:
        row = await _read(conn, grant_id)
        _require_usable(row, grant_id, cfg)
        if _serve_without_refresh(cfg, row, now):
            return await _served(vault, conn, row)
        previous, abandoned = _lease_marker(row)
        leased = await _take_lease(conn, row, owner, now, previous)
        if leased and abandoned:
            await _audit_lease_expired(vault, conn, cfg, row)
        if not leased and _refreshing_elsewhere(row, now):
            # Someone else (another replica) is refreshing: the still-valid token is
            # served meanwhile rather than waiting for their answer.
            return await _served(vault, conn, row)
    return _Leased(row, previous) if leased else None


def _require_usable(row: Any, grant_id: str, cfg: providers.ProviderConfig) -> None:
    """Refuse a grant whose tokens are gone or marked dead: only a new connect helps."""
    if row is None or row.needs_reconnect or row.access_ct is None:
        raise credential_revoked(grant_id, cfg.provider_id)


def _serve_without_refresh(cfg: providers.ProviderConfig, row: Any, now: datetime) -> bool:
    """Whether the stored token answers without a refresh: it is fresh (someone, maybe another
    replica, refreshed while we waited), or the grant cools down after failed refreshes and
    the token is still valid. Cooling down with no valid token is ``provider_unavailable``
    until the cool-down ends: the provider is not called again sooner."""
    if fresh_enough(row, now):
        return True
    if row.cooldown_until is not None and row.cooldown_until > now:
        if _still_valid(row, now):
            return True
        raise _unavailable(cfg, row.cooldown_until - now)
    return False


def _lease_marker(row: Any) -> tuple[str, bool]:
    """The ``last_refresh_error`` a new lease writes, and whether the lease was abandoned.

    A lease that ran out still owned (a clean release clears the owner) was abandoned: its
    refresher crashed or was cancelled, maybe after the provider rotated the token, so the
    taker marks the answer lost (decision 0008), keeping an earlier answer-lost marker."""
    previous = str(row.last_refresh_error or "")
    abandoned = row.lease_owner is not None
    if abandoned and not previous.startswith(ANSWER_LOST):
        previous = LEASE_EXPIRED_MARKER
    return previous, abandoned


async def _take_lease(conn: Conn, row: Any, owner: str, now: datetime, marker: str) -> bool:
    """The fenced lease ``UPDATE``: only on the generation we read, only once the lease has run
    out, and only from exactly the holder we read (so what the taker records is about it)."""
    taken = await conn.execute(
        sa.update(oauth_tokens)
        .where(
            oauth_tokens.c.grant_id == row.grant_id,
            oauth_tokens.c.generation == row.generation,
            sa.or_(oauth_tokens.c.lease_until.is_(None), oauth_tokens.c.lease_until < now),
            oauth_tokens.c.lease_owner.is_(None)
            if row.lease_owner is None
            else oauth_tokens.c.lease_owner == row.lease_owner,
        )
        .values(lease_owner=owner, lease_until=now + LEASE, last_refresh_error=marker)
    )
    return bool(taken.rowcount == 1)


def _refreshing_elsewhere(row: Any, now: datetime) -> bool:
    """Whether someone else holds a live lease while the token we read is still valid (decision
    0008: their refresh does not hold up a still-valid token)."""
    return (
        row.lease_owner is not None
        and row.lease_until is not None
        and row.lease_until >= now
        and _still_valid(row, now)
    )


async def _audit_lease_expired(
    vault: Vault, conn: Conn, cfg: providers.ProviderConfig, row: Any
) -> None:
    """Record the takeover of an abandoned lease as a refresh whose answer may be lost."""
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=row.app_id,
                event=AuditEvent.TOKEN_REFRESH_FAILED,
                outcome=Outcome.FAILURE,
                actor={"type": "vault", "via": "refresh"},
                grant_id=row.grant_id,
                provider_id=cfg.provider_id,
                reason="lease_expired",
                details={"answer_lost": True},
            )
        ],
    )


async def _served(
    vault: Vault, conn: Conn, row: Any, retry_info: dict[str, Any] | None = None
) -> AccessToken:
    """The access token the row holds, handed out as it is."""
    return AccessToken(
        await _decrypt_access(vault, conn, row), row.access_expires_at, row.generation, retry_info
    )


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
    lease_deadline: float,
    previous: str,
) -> AccessToken:
    """Call the provider while holding the lease, then record the outcome under the fence.

    ``lease_deadline`` (event-loop time) is when this process stops trusting its lease: every
    write of the outcome is retried through a database stall until then, never after, and
    a provider call starts only if it and a held commit still fit before it. ``previous`` is
    the row's ``last_refresh_error`` as this lease left it.
    """
    fence = _fence(row, owner)
    creds, refresh_token = await _refresh_inputs(vault, cfg, row)
    if refresh_token is None or not cfg.spec.supports_refresh:
        # Nothing to refresh with: the token has expired for good.
        return await _mark_dead(vault, cfg, row, fence, "no_refresh_token", lease_deadline)
    called = await _call_provider(vault, cfg, creds, refresh_token, row.grant_id, lease_deadline)
    now = vault.clock.now()
    if called.tokens is not None:
        return await _commit_refreshed(
            vault,
            cfg,
            row,
            fence,
            called.tokens,
            refresh_token,
            called.attempts,
            now,
            lease_deadline,
        )
    if called.failure is None:
        return await _release_unsent(vault, cfg, row, fence, lease_deadline)
    return await _settle_failure(
        vault, cfg, row, fence, called.failure, called.attempts, now, lease_deadline, previous
    )


def _fence(row: Any, owner: str) -> Any:
    """The condition of every write under the lease: the lease is still ours and the row still
    holds the generation we read (the fencing token, decision 0007), so a refresher that
    stalled past its lease cannot overwrite newer tokens."""
    return (
        (oauth_tokens.c.grant_id == row.grant_id)
        & (oauth_tokens.c.lease_owner == owner)
        & (oauth_tokens.c.generation == row.generation)
    )


async def _refresh_inputs(
    vault: Vault, cfg: providers.ProviderConfig, row: Any
) -> tuple[ClientCredentials, str | None]:
    """The app's client credentials and the grant's refresh token (``None``: it has none)."""
    async with vault.db.read() as conn:
        creds = await providers.client_credentials(vault, conn, cfg)
        refresh_token = (
            (
                await vault.barrier.decrypt_fresh(
                    conn, row.refresh_ct, token_aad(row.app_id, row.grant_id, "refresh_ct")
                )
            ).decode()
            if row.refresh_ct is not None
            else None
        )
    return creds, refresh_token


@dataclass
class _ProviderPhase:
    """How the provider phase of a refresh ended: with tokens, with the last failure, or with
    neither (stopped before any call: too little lease left)."""

    tokens: TokenSet | None = None
    failure: OAuthError | None = None
    attempts: _Attempts = field(default_factory=_Attempts)


async def _call_provider(
    vault: Vault,
    cfg: providers.ProviderConfig,
    creds: ClientCredentials,
    refresh_token: str,
    grant_id: str,
    lease_deadline: float,
) -> _ProviderPhase:
    """Up to ``ATTEMPTS`` refresh calls, each started only while it and a held commit still fit
    in the lease, retried only as :func:`_retry_wait` and :func:`_gives_up` allow."""
    phase = _ProviderPhase()
    loop = asyncio.get_running_loop()
    budget_end = loop.time() + PROVIDER_BUDGET_S
    for attempt in range(1, ATTEMPTS + 1):
        if loop.time() + oauth_client.TOTAL_TIMEOUT_S + COMMIT_RETRY_S > lease_deadline:
            # Pool waits or a slow database ate into the lease: a call now could outlive it,
            # and another replica could send the same refresh token meanwhile. Stop unsent.
            log.warning("refresh stopped: not enough lease left", extra={"grant_id": grant_id})
            break
        try:
            phase.tokens = await vault.oauth.refresh(cfg.spec, cfg.token_url, creds, refresh_token)
            break
        except OAuthError as exc:
            phase.failure = exc
            wait = _retry_wait(exc, attempt)
            permanent = _gives_up(exc, attempt, loop.time() + wait, budget_end)
            if permanent:
                wait = 0.0
            phase.attempts.errors.append(_attempt_entry(exc, attempt, wait, permanent))
            if permanent:
                break
            if attempt < ATTEMPTS:
                await asyncio.sleep(wait)
    return phase


def _retryable(exc: OAuthError) -> bool:
    """No answer to a request that may have arrived (a timeout, a connection dropped after
    sending) may mean the provider rotated the token: sending the same refresh token again
    would look like theft to it. Retry only what surely never arrived (connection refused) or
    was answered (5xx, 429)."""
    return exc.transient and not exc.maybe_delivered


def _retry_wait(exc: OAuthError, attempt: int) -> float:
    """The backoff before the next attempt: 0.25 s doubling, or the provider's ``Retry-After``,
    capped at 2 s and jittered to 50-100 %; 0 when no attempt follows."""
    if not (_retryable(exc) and attempt < ATTEMPTS):
        return 0.0
    return min(exc.retry_after or 0.25 * 2 ** (attempt - 1), 2.0) * random.uniform(0.5, 1.0)


def _gives_up(exc: OAuthError, attempt: int, next_call_at: float, budget_end: float) -> bool:
    """Whether this failure ends the provider phase for good: it may not be retried, or a retry
    starting at ``next_call_at`` could not finish a whole call within the provider budget."""
    return not _retryable(exc) or (
        attempt < ATTEMPTS and next_call_at + oauth_client.TOTAL_TIMEOUT_S > budget_end
    )


def _attempt_entry(exc: OAuthError, attempt: int, wait: float, permanent: bool) -> dict[str, Any]:
    """One failed attempt as the caller's ``retry_info`` and the audit report it."""
    return {
        "attempt": attempt,
        "error": exc.error[:500],
        "error_type": "provider_error" if exc.status else "network_error",
        "delay_s": round(wait, 3),
        "permanent": permanent,
    }


def _observed_outcome(failure: OAuthError) -> str:
    """The refresh observer's name for a failed refresh."""
    if failure.dead_credential:
        return "credential_revoked"
    return "config_error" if failure.config_error else "transient_failure"


async def _settle_failure(
    vault: Vault,
    cfg: providers.ProviderConfig,
    row: Any,
    fence: Any,
    failure: OAuthError,
    attempts: _Attempts,
    now: datetime,
    lease_deadline: float,
    previous: str,
) -> AccessToken:
    """Record a failed refresh under the fence: a dead credential marks the grant for a new
    connect; anything else cools it down (:func:`_record_failure`)."""
    vault.refresh_observer(_observed_outcome(failure))
    if failure.dead_credential:
        if previous.startswith(ANSWER_LOST):
            # The provider says the refresh token was used: by the refresh whose answer we
            # never received. Say so, so the operator knows what killed the grant.
            return await _mark_dead(
                vault, cfg, row, fence, REFRESH_ANSWER_LOST, lease_deadline,
                details={"provider_error": failure.error, "earlier_failure": previous[:120]},
            )  # fmt: skip
        return await _mark_dead(vault, cfg, row, fence, failure.error, lease_deadline)
    return await _record_failure(
        vault, cfg, row, fence, failure, attempts, now, lease_deadline, previous
    )


async def _record_failure(
    vault: Vault,
    cfg: providers.ProviderConfig,
    row: Any,
    fence: Any,
    failure: OAuthError,
    attempts: _Attempts,
    now: datetime,
    lease_deadline: float,
    previous: str,
) -> AccessToken:
    """Give the lease back with a cool-down (held through a database stall: a lost write would
    leave the lease held and the provider called again), then serve the still-valid token, or
    raise ``connect_config_error`` / ``provider_unavailable``."""
    failures = int(row.refresh_failures or 0) + 1
    cooldown = _cooldown(failures)
    marker = _failure_marker(failure, previous)

    async def record(conn: Conn, _try: int) -> AccessToken | None:
        stored = await conn.execute(
            sa.update(oauth_tokens)
            .where(fence)
            .values(
                lease_owner=None,
                lease_until=None,
                refresh_failures=failures,
                cooldown_until=now + cooldown,
                last_refresh_error=marker,
            )
        )
        if stored.rowcount != 1:
            # An earlier try committed although it reported a failure, or the lease was lost:
            # nothing to record (and audit) again; answer from what the row holds now.
            return await _current_answer(vault, cfg, conn, row.grant_id, now, attempts)
        await _audit_refresh_failed(vault, conn, cfg, row, failure, attempts, cooldown)
        if _still_valid(row, now):
            return await _served(vault, conn, row, attempts.info(None))
        return None

    served = await _write_retrying(vault, row.grant_id, lease_deadline, record)
    if served is not None:
        return served
    raise _failure_error(cfg, failure, cooldown)


def _cooldown(failures: int) -> timedelta:
    """How long a grant rests after its ``failures``-th failed refresh in a row (exponential,
    capped): an overloaded provider is not called again at once."""
    return timedelta(seconds=min(COOLDOWN_MAX_S, COOLDOWN_BASE_S * 2 ** (failures - 1)))


def _failure_marker(failure: OAuthError, previous: str) -> str:
    """The row's ``last_refresh_error`` after a failed refresh. Once an answer is lost the
    marker stays until a refresh succeeds (or the user reconnects), whatever fails in
    between, so a later ``invalid_grant`` is audited as ``refresh_answer_lost``."""
    answer_lost = failure.maybe_delivered or previous.startswith(ANSWER_LOST)
    return (f"{ANSWER_LOST}:{failure.error}" if answer_lost else failure.error)[:255]


def _failure_error(
    cfg: providers.ProviderConfig, failure: OAuthError, cooldown: timedelta
) -> VaultError:
    """The caller's error when a failed refresh leaves no valid token to serve."""
    if failure.config_error:
        return VaultError(
            ErrorCode.CONNECT_CONFIG_ERROR,
            f"{cfg.spec.display_name} rejected this app's client credentials ({failure.error}); "
            "fix the provider registration.",
            provider_id=cfg.provider_id,
        )
    return _unavailable(cfg, cooldown)


async def _audit_refresh_failed(
    vault: Vault,
    conn: Conn,
    cfg: providers.ProviderConfig,
    row: Any,
    failure: OAuthError,
    attempts: _Attempts,
    cooldown: timedelta,
) -> None:
    """Audit a refresh that failed and cooled the grant down; ``answer_lost`` says whether this
    failure's request may have reached the provider."""
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=row.app_id,
                event=AuditEvent.TOKEN_REFRESH_FAILED,
                outcome=Outcome.FAILURE,
                actor={"type": "vault", "via": "refresh"},
                grant_id=row.grant_id,
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
    grant_id = row.grant_id
    generation = str(uuid.uuid4())
    # Encrypted once, before the first try: the transaction stays as short as it can be.
    values = _refreshed_values(vault, row, tokens, old_refresh, answered_at, generation)
    loop = asyncio.get_running_loop()
    deadline = min(loop.time() + COMMIT_RETRY_S, lease_deadline)
    overtaken_by: VaultError | None = None

    async def commit(conn: Conn, tries: int) -> bool:
        nonlocal overtaken_by
        stored = await conn.execute(sa.update(oauth_tokens).where(fence).values(**values))
        if stored.rowcount != 1:
            current = await _read(conn, grant_id)
            if current is not None and current.generation == generation:
                # An earlier try committed although its connection reported a failure
                # (the answer to COMMIT was lost): the tokens are stored; nothing to redo.
                return False
            overtaken_by = await _drop_overtaken(vault, conn, cfg, row, tokens, current)
            return True
        if tokens.scopes is not None:
            await conn.execute(
                sa.update(grants).where(grants.c.id == grant_id).values(scopes=list(tokens.scopes))
            )
        await _audit_refreshed(vault, conn, cfg, row, tokens, old_refresh, attempts, tries)
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


def _refreshed_values(
    vault: Vault,
    row: Any,
    tokens: TokenSet,
    old_refresh: str,
    answered_at: datetime,
    generation: str,
) -> dict[str, Any]:
    """The row after a successful refresh: the new tokens encrypted under the new generation
    (the old refresh token kept when the answer omits one), the lease released, the failure
    count, cool-down and any answer-lost marker cleared."""
    app_id, grant_id = row.app_id, row.grant_id
    new_refresh = tokens.refresh_token or old_refresh
    return {
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


async def _drop_overtaken(
    vault: Vault,
    conn: Conn,
    cfg: providers.ProviderConfig,
    row: Any,
    tokens: TokenSet,
    current: Any,
) -> VaultError | None:
    """Our lease was taken over, or the grant was revoked meanwhile: the row is not ours.
    Never hand out a token the database does not know about, and do not leave the provider's
    fresh tokens alive: queue them for revocation. Returns the caller's error
    (:func:`_overtaken_error`)."""
    log.error("refresh lease lost before commit", extra={"grant_id": row.grant_id})
    await _queue_orphans(vault, conn, row, cfg, tokens)
    return await _overtaken_error(conn, cfg, row.grant_id, current)


async def _audit_refreshed(
    vault: Vault,
    conn: Conn,
    cfg: providers.ProviderConfig,
    row: Any,
    tokens: TokenSet,
    old_refresh: str,
    attempts: _Attempts,
    tries: int,
) -> None:
    """Audit a committed refresh: how many provider calls and commit tries it took, and
    whether the provider rotated the refresh token."""
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=row.app_id,
                event=AuditEvent.TOKEN_REFRESHED,
                outcome=Outcome.SUCCESS,
                actor={"type": "vault", "via": "refresh"},
                grant_id=row.grant_id,
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
    done = 0
    for item in await _due_revocations(vault, grant_id, limit):
        error, cfg = await _revoke_at_provider(vault, item)
        attempts = int(item.attempts) + 1
        async with vault.db.write() as conn:
            if error is None or attempts >= REVOCATION_ATTEMPTS:
                await conn.execute(
                    sa.delete(oauth_revocations).where(oauth_revocations.c.id == item.id)
                )
                done += 1
                await _audit_provider_revoked(vault, conn, item, cfg, error, attempts)
            else:
                await _postpone_revocation(vault, conn, item, error, attempts)
    return done


async def _due_revocations(vault: Vault, grant_id: str | None, limit: int) -> list[Any]:
    """Queued tokens whose next attempt is due, oldest first (only ``grant_id``'s if given)."""
    stmt = (
        sa.select(oauth_revocations)
        .where(oauth_revocations.c.next_attempt_at <= vault.clock.now())
        .order_by(oauth_revocations.c.created_at)
        .limit(limit)
    )
    if grant_id is not None:
        stmt = stmt.where(oauth_revocations.c.grant_id == grant_id)
    async with vault.db.read() as conn:
        return list((await conn.execute(stmt)).all())


async def _revoke_at_provider(
    vault: Vault, item: Any
) -> tuple[str | None, providers.ProviderConfig | None]:
    """Send one queued token to its provider's revocation endpoint (if the provider still
    exists and has one). Returns the error code (``None``: done) and the provider's config as
    far as it was read; never raises, since one bad row must not stall the queue for every
    app."""
    cfg: providers.ProviderConfig | None = None
    try:
        async with vault.db.read() as conn:
            cfg = await _revocation_config(conn, item)
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
        return exc.error, cfg
    except Exception as exc:
        # The traceback goes to the log (the formatter strips row values); the audit row
        # gets a stable code, not an exception class name.
        log.error("revocation item failed", exc_info=exc, extra={"grant_id": item.grant_id})
        return "internal_error", cfg
    return None, cfg


async def _revocation_config(conn: Conn, item: Any) -> providers.ProviderConfig | None:
    """The queued token's provider configuration; ``None`` once the provider is gone."""
    try:
        return await providers.get_config_by_id(conn, item.app_id, item.oauth_provider_id)
    except VaultError:
        return None


async def _postpone_revocation(
    vault: Vault, conn: Conn, item: Any, error: str, attempts: int
) -> None:
    """Try a failed revocation again later, backing off (doubling, at most an hour)."""
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


async def _audit_provider_revoked(
    vault: Vault,
    conn: Conn,
    item: Any,
    cfg: providers.ProviderConfig | None,
    error: str | None,
    attempts: int,
) -> None:
    """Audit a queued token leaving the queue: revoked (or nothing to call), or given up."""
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

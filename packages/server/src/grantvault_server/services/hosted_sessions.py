"""The hosted browser-session engine: the mechanics every browser flow of the vault shares.

A hosted session is created by a signed call of the app, completed by an end user in a
browser, and its outcome collected by the app with a bearer token. Connect
(``services.connect``) and the sign-in broker (``services.signin``) are its two users; each
keeps its own table, its own steps (providers, IdPs, grants, users) and its own wording.
What they share, and what this module does once:

* **create**: a random bearer session token, stored only as its SHA-256, and an expiry;
* **bind to the first browser**: the first browser to open the session's link gets a
  random HttpOnly cookie, stored hashed; the binding is a conditional write (``browser_hash
  IS NULL``), so of two browsers racing only one wins, and every later step compares the
  cookie in constant time;
* **state**: a random value per trip to the third party, stored hashed, looked up on the
  way back;
* **claim exactly once**: the callback claims its state with one conditional write before
  anything leaves the vault; a replay, or a concurrent copy, finds it claimed;
* **result**: the outcome is written only while the session is still going;
* **poll**: the app reads the outcome; :func:`long_poll` holds the request until the
  session ends, woken by :class:`Waiters` in this process and re-reading the database
  regularly for an outcome written by another replica.

Every write here takes the caller's connection, so a step can join it with its own writes
in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from grantvault_server.storage.db import Conn

T = TypeVar("T")

#: A long poll re-reads the database at least this often (another replica may finish it).
POLL_RECHECK_S = 1.0


def digest(value: str) -> str:
    """How every bearer value (token, cookie, state) is stored: its SHA-256, in hex."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def matches(value: str | None, stored_hash: str | None) -> bool:
    """Whether ``value`` is the bearer value behind ``stored_hash`` (constant time)."""
    if value is None or stored_hash is None:
        return False
    return secrets.compare_digest(digest(value), stored_hash)


@dataclass(frozen=True)
class SessionKind:
    """One kind of hosted session: its table (with ``id``, ``token_hash``,
    ``browser_hash``, ``status`` and ``expires_at`` columns), its token prefix, its time to
    live and the statuses in which it is still going."""

    table: sa.Table
    token_prefix: str
    ttl: timedelta
    pending: frozenset[str] = field(default_factory=lambda: frozenset({"pending"}))

    def status(self, row: Any, now: datetime) -> str:
        """The row's status, ``expired`` for a session still going past its expiry."""
        if row.status in self.pending and row.expires_at <= now:
            return "expired"
        return str(row.status)

    def live(self, row: Any, now: datetime) -> bool:
        return row.status in self.pending and row.expires_at > now


# -- create --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSession:
    """A session about to be inserted: the bearer token goes to the app, once."""

    id: str
    token: str
    created_at: datetime
    expires_at: datetime

    def columns(self) -> dict[str, Any]:
        """The engine's columns of the new row; the caller adds its own."""
        return {
            "id": self.id,
            "token_hash": digest(self.token),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


def new_session(kind: SessionKind, now: datetime) -> NewSession:
    """A new session of ``kind`` created at ``now`` (the vault's clock)."""
    return NewSession(
        id=str(uuid.uuid4()),
        token=kind.token_prefix + new_secret(),
        created_at=now,
        expires_at=now + kind.ttl,
    )


async def find(conn: Conn, column: sa.Column[Any], value: str, *where: Any) -> Any:
    """The row whose hashed ``column`` holds ``value`` (a token, a handle, a state)."""
    stmt = sa.select(column.table).where(column == digest(value), *where)
    return (await conn.execute(stmt)).first()


async def by_id(conn: Conn, kind: SessionKind, session_id: str) -> Any:
    return (await conn.execute(sa.select(kind.table).where(kind.table.c.id == session_id))).first()


# -- bind to the first browser ---------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """This browser's hold on a session: the stored hash, and a new cookie to set when this
    browser is the first one (``None`` when it already carries the session's cookie)."""

    browser_hash: str
    cookie: str | None

    @property
    def first(self) -> bool:
        return self.cookie is not None


def binding(bound_hash: str | None, cookie: str | None) -> Binding | None:
    """The binding of a browser presenting ``cookie`` to a session bound to ``bound_hash``;
    ``None`` when the session belongs to another browser."""
    if bound_hash is None:
        fresh = new_secret()
        return Binding(digest(fresh), fresh)
    if matches(cookie, bound_hash):
        return Binding(bound_hash, None)
    return None


async def bind_browser(
    conn: Conn,
    kind: SessionKind,
    session_id: str,
    hold: Binding,
    *where: Any,
    values: Mapping[str, Any] | None = None,
) -> bool:
    """Write the binding (with the caller's ``values``, under its extra ``where``): a first
    browser only if no other bound the session meanwhile. False if the write lost."""
    column = kind.table.c.browser_hash
    bound = column.is_(None) if hold.first else column == hold.browser_hash
    written = await conn.execute(
        sa.update(kind.table)
        .where(kind.table.c.id == session_id, bound, *where)
        .values(browser_hash=hold.browser_hash, **(values or {}))
    )
    return written.rowcount == 1


# -- state and the callback claim --------------------------------------------------------------


def new_state() -> tuple[str, str]:
    """``(state, its hash)``: the state travels to the third party, the hash is stored."""
    state = new_secret()
    return state, digest(state)


async def claim_once(
    conn: Conn,
    table: sa.Table,
    row_id: str,
    unclaimed: Any,
    values: Mapping[str, Any],
) -> bool:
    """Claim a callback: one conditional write, true for exactly one caller however many
    copies of the callback arrive. Claim before anything is sent anywhere."""
    claimed = await conn.execute(
        sa.update(table).where(table.c.id == row_id, unclaimed).values(**values)
    )
    return claimed.rowcount == 1


# -- result and poll -------------------------------------------------------------------------


async def settle(conn: Conn, kind: SessionKind, session_id: str, values: Mapping[str, Any]) -> bool:
    """Record the outcome, only while the session is still going (never overwrite one)."""
    written = await conn.execute(
        sa.update(kind.table)
        .where(kind.table.c.id == session_id, kind.table.c.status.in_(sorted(kind.pending)))
        .values(**values)
    )
    return written.rowcount == 1


async def hand_out_once(conn: Conn, kind: SessionKind, session_id: str) -> bool:
    """Delete the finished session: whoever deletes it hands the result out."""
    deleted = await conn.execute(sa.delete(kind.table).where(kind.table.c.id == session_id))
    return deleted.rowcount == 1


async def purge(conn: Conn, kind: SessionKind, before: datetime, *where: Any) -> int:
    """Delete sessions that expired before ``before``."""
    result = await conn.execute(
        sa.delete(kind.table).where(kind.table.c.expires_at < before, *where)
    )
    return int(result.rowcount or 0)


@dataclass
class Waiters:
    """Long polls waiting in this process, by session id; :meth:`wake` ends their wait."""

    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def wake(self, session_id: str) -> None:
        event = self.events.pop(session_id, None)
        if event is not None:
            event.set()

    def forget(self, session_id: str) -> None:
        self.events.pop(session_id, None)

    async def wait(self, session_id: str, timeout_s: float) -> None:
        event = self.events.setdefault(session_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout_s)


def wait_budget(wait_ms: int | None, max_wait_ms: int) -> float:
    """Seconds a poll may wait: ``wait_ms`` bounded to ``[0, max_wait_ms]``."""
    return min(max(wait_ms or 0, 0), max_wait_ms) / 1000


async def long_poll(
    collect: Callable[[], Awaitable[tuple[str, T | None]]],
    waiters: Waiters,
    budget_s: float,
    recheck_s: float = POLL_RECHECK_S,
) -> T | None:
    """Call ``collect`` (``(session id, result or None while pending)``) until it has a
    result or ``budget_s`` has passed; ``None`` means still pending."""
    deadline = time.monotonic() + budget_s
    while True:
        session_id, result = await collect()
        if result is not None:
            waiters.forget(session_id)
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await waiters.wait(session_id, min(remaining, recheck_s))

"""Operator policies: storage with versions, the per-app compiled cache, the one decision
every retrieval passes through, and the shared quota counters (issue 11).

The pure parts live in :mod:`grantvault_server.policy` (document, compile, evaluate); this
module adds what needs storage or the vault:

* **Writes** (:func:`put_policy`, :func:`delete_policy`) validate the document, keep every
  version in ``policy_versions`` (versions of a name never restart, so an audit row's
  ``(policy, version)`` always names one text), audit the change, and bump the app's
  ``policy_generation`` in the same transaction.
* **The cache** (:class:`PolicyCache`): compiled policies per app, keyed by that generation.
  The key lookup every signed request makes already reads the generation (``App``), so a
  replica notices a change on the next request after it commits; nothing is polled and the
  hot path makes no extra query while the policies are unchanged.
* **The decision** (:func:`decide`): the compiled policies of the app judged against the
  call's :class:`~grantvault_server.policy.facts.Facts`. A stored row that no longer
  validates denies every retrieval of its app (fail closed), as does a storage error while
  loading (the caller's read fails).
* **Counters** (:func:`apply_charges`): quota and rate-limit charges applied in the caller's
  write transaction, all-or-nothing per call, exact across replicas (decision 0011).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import yaml

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.identity.claims import Identity
from grantvault_server.policy.cache import AppPolicies, Broken, PolicyCache
from grantvault_server.policy.compile import CompiledPolicy, compile_policy
from grantvault_server.policy.document import (
    PolicyDocumentError,
    validate_document,
    validate_name,
)
from grantvault_server.policy.engine import POLICY_EVALUATION_FAILED, Decision
from grantvault_server.policy.facts import Facts, IPAddress
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import for_update
from grantvault_server.storage.tables import apps, policies, policy_versions
from grantvault_server.timefmt import iso

log = logging.getLogger(__name__)

#: The largest policy file accepted (a document is a few hundred bytes in practice).
MAX_SOURCE_BYTES = 64 * 1024
#: Policies one app may hold: evaluation is linear in their number (see bench/).
MAX_POLICIES_PER_APP = 500


# --------------------------------------------------------------------------- documents


def parse_source(text: str) -> dict[str, Any]:
    """A policy file (YAML, or JSON, which YAML reads too) as a mapping.

    Syntax errors become :class:`PolicyDocumentError` naming the line, like schema errors.
    """
    if len(text.encode()) > MAX_SOURCE_BYTES:
        raise PolicyDocumentError(
            [("(document)", f"the file is larger than {MAX_SOURCE_BYTES // 1024} KiB")]
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = getattr(exc, "problem", None) or "not valid YAML or JSON"
        raise PolicyDocumentError([(where, str(problem))]) from None
    if not isinstance(raw, dict):
        raise PolicyDocumentError([("(document)", "a policy document is a mapping of keys")])
    return raw


def invalid_document(exc: PolicyDocumentError) -> VaultError:
    """The 422 an operator gets for a document that cannot be stored: every problem, each
    with the key it is about, so the file can be fixed in one pass."""
    first_loc, first_msg = exc.errors[0]
    more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
    return InvalidInput(
        f"The policy document is invalid: {first_loc}: {first_msg}{more}.",
        errors=[{"loc": loc, "msg": msg} for loc, msg in exc.errors],
    )


def _canonical(raw: dict[str, Any]) -> dict[str, Any]:
    """The validated document in its stored JSON form (absent keys left out)."""
    document = validate_document(raw)
    dumped: dict[str, Any] = document.model_dump(mode="json", exclude_none=True)
    return dumped


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PolicyInfo:
    """One stored policy version, as the CLI and the admin API show it."""

    policy_id: str
    name: str
    version: int
    document: dict[str, Any]
    source: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def description(self) -> str | None:
        value = self.document.get("description")
        return value if isinstance(value, str) else None

    @property
    def applies_to(self) -> dict[str, Any] | None:
        value = self.document.get("applies_to")
        return value if isinstance(value, dict) else None

    def summary(self) -> dict[str, Any]:
        return {
            "policy_id": self.policy_id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "applies_to": self.applies_to,
            "rules": sorted((self.document.get("rules") or {}).keys()),
            "updated_at": iso(self.updated_at),
        }


def _info(row: Any) -> PolicyInfo:
    return PolicyInfo(
        policy_id=row.id,
        name=row.name,
        version=row.version,
        document=row.document if isinstance(row.document, dict) else {},
        source=row.source,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def list_policies(vault: Vault, app: App) -> list[PolicyInfo]:
    """The app's live policies, in evaluation order (by name)."""
    async with vault.db.read() as conn:
        rows = await conn.execute(sa.select(policies).where(policies.c.app_id == app.id))
        # Evaluation order, in Python: independent of the database's collation.
        return sorted((_info(r) for r in rows), key=lambda p: p.name)


async def get_policy(vault: Vault, app: App, name: str, version: int | None = None) -> PolicyInfo:
    """A live policy, or with ``version`` any version ever stored (also after a delete)."""
    async with vault.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(policies).where(policies.c.app_id == app.id, policies.c.name == name)
            )
        ).first()
        if version is None or (row is not None and row.version == version):
            if row is None:
                raise _not_found(name)
            return _info(row)
        old = (
            await conn.execute(
                sa.select(policy_versions).where(
                    policy_versions.c.app_id == app.id,
                    policy_versions.c.name == name,
                    policy_versions.c.version == version,
                    policy_versions.c.document.is_not(None),
                )
            )
        ).first()
    if old is None:
        raise NotFound("policy version", f"{name} v{version}", ErrorCode.POLICY_NOT_FOUND)
    return PolicyInfo(
        policy_id=old.policy_id,
        name=name,
        version=old.version,
        document=old.document,
        source=old.source,
        created_at=old.created_at,
        updated_at=old.created_at,
    )


def _not_found(name: str) -> VaultError:
    return NotFound(
        "policy",
        name,
        ErrorCode.POLICY_NOT_FOUND,
        hint="List them with `grantvault policies list`.",
    )


# --------------------------------------------------------------------------- writing


async def _next_version(conn: Conn, app_id: str, name: str) -> int:
    latest = (
        await conn.execute(
            sa.select(sa.func.max(policy_versions.c.version)).where(
                policy_versions.c.app_id == app_id, policy_versions.c.name == name
            )
        )
    ).scalar_one()
    return int(latest or 0) + 1


async def _bump_generation(conn: Conn, app_id: str) -> None:
    """Every replica's cached policies of the app become stale with this commit. Taking the
    app row's lock first also serialises concurrent writes to the app's policies."""
    await conn.execute(
        sa.update(apps)
        .where(apps.c.id == app_id)
        .values(policy_generation=apps.c.policy_generation + 1)
    )


async def put_policy(
    vault: Vault,
    app: App,
    name: str,
    raw: dict[str, Any],
    *,
    actor: dict[str, Any],
    source: str | None = None,
) -> PolicyInfo:
    """Create the policy ``name`` or store a new version of it; validated before anything is
    written (422 ``invalid_request`` with every problem and its key)."""
    try:
        validate_name(name)
        document = _canonical(raw)
        # Compiling proves the stored form evaluates (zones load, patterns compile).
        compile_policy(name, 1, validate_document(document))
    except PolicyDocumentError as exc:
        raise invalid_document(exc) from None
    now = vault.clock.now()
    async with vault.db.write() as conn:
        await _bump_generation(conn, app.id)
        current = (
            await conn.execute(
                for_update(
                    conn,
                    sa.select(policies.c.id, policies.c.created_at).where(
                        policies.c.app_id == app.id, policies.c.name == name
                    ),
                )
            )
        ).first()
        if current is None:
            count = (
                await conn.execute(sa.select(sa.func.count()).where(policies.c.app_id == app.id))
            ).scalar_one()
            if count >= MAX_POLICIES_PER_APP:
                raise InvalidInput(
                    f"This app already has {MAX_POLICIES_PER_APP} policies; merge or delete "
                    "some before adding another."
                )
        version = await _next_version(conn, app.id, name)
        policy_id = current.id if current is not None else str(uuid.uuid4())
        created_at = current.created_at if current is not None else now
        values = {"version": version, "document": document, "source": source, "updated_at": now}
        if current is None:
            await conn.execute(
                sa.insert(policies).values(
                    id=policy_id, app_id=app.id, name=name, created_at=now, **values
                )
            )
        else:
            await conn.execute(
                sa.update(policies).where(policies.c.id == policy_id).values(**values)
            )
        await conn.execute(
            sa.insert(policy_versions).values(
                app_id=app.id,
                name=name,
                version=version,
                policy_id=policy_id,
                document=document,
                source=source,
                created_at=now,
                actor=actor,
            )
        )
        event = AuditEvent.POLICY_CREATED if current is None else AuditEvent.POLICY_UPDATED
        await _audit(vault, conn, app, event, actor, name, version, policy_id)
    return PolicyInfo(policy_id, name, version, document, source, created_at, now)


async def delete_policy(vault: Vault, app: App, name: str, *, actor: dict[str, Any]) -> int:
    """Remove a policy (its versions stay readable); return the version that was live."""
    now = vault.clock.now()
    async with vault.db.write() as conn:
        await _bump_generation(conn, app.id)
        row = (
            await conn.execute(
                sa.select(policies.c.id, policies.c.version).where(
                    policies.c.app_id == app.id, policies.c.name == name
                )
            )
        ).first()
        if row is None:
            raise _not_found(name)
        await conn.execute(sa.delete(policies).where(policies.c.id == row.id))
        # The deletion takes a version number of its own, so a later policy of the same
        # name starts after it and an audit row's version never names two texts.
        await conn.execute(
            sa.insert(policy_versions).values(
                app_id=app.id,
                name=name,
                version=row.version + 1,
                policy_id=row.id,
                # SQL NULL, not JSON null: "no document" is what a deletion row records.
                document=sa.null(),
                source=None,
                created_at=now,
                actor=actor,
            )
        )
        await _audit(vault, conn, app, AuditEvent.POLICY_DELETED, actor, name, row.version, row.id)
    return int(row.version)


async def _audit(
    vault: Vault,
    conn: Conn,
    app: App,
    event: AuditEvent,
    actor: dict[str, Any],
    name: str,
    version: int,
    policy_id: str,
) -> None:
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=app.id,
                event=event,
                outcome=Outcome.SUCCESS,
                actor=actor,
                details={"policy": name, "policy_version": version, "policy_id": policy_id},
                occurred_at=vault.clock.now(),
            )
        ],
    )


# --------------------------------------------------------------------------- loading


def _compile_row(row: Any) -> CompiledPolicy | Broken:
    try:
        raw = row.document
        if isinstance(raw, str | bytes):
            raw = json.loads(raw)
        return compile_policy(row.name, int(row.version), validate_document(raw))
    except Exception as exc:
        why = str(exc) if isinstance(exc, PolicyDocumentError) else type(exc).__name__
        log.error(
            "a stored policy cannot be compiled; the app's retrievals are refused",
            extra={"policy": row.name, "policy_version": row.version, "error": why[:200]},
        )
        return Broken(row.name, int(row.version), why[:300])


_GENERATION = sa.select(apps.c.policy_generation).where(apps.c.id == sa.bindparam("app_id"))
_ROWS = sa.select(policies.c.name, policies.c.version, policies.c.document).where(
    policies.c.app_id == sa.bindparam("app_id")
)


async def load(conn: Conn, app_id: str) -> AppPolicies:
    """Read and compile the app's policies (the generation first: a write that commits in
    between leaves the entry stale, never wrongly current)."""
    generation = (await conn.execute(_GENERATION, {"app_id": app_id})).scalar_one_or_none()
    rows = (await conn.execute(_ROWS, {"app_id": app_id})).all()
    compiled: list[CompiledPolicy] = []
    broken: list[Broken] = []
    # Sorted here, not by the database: "by name" must not depend on its collation.
    for row in sorted(rows, key=lambda r: r.name):
        result = _compile_row(row)
        (broken if isinstance(result, Broken) else compiled).append(result)  # type: ignore[arg-type]
    return AppPolicies(int(generation or 0), tuple(compiled), tuple(broken))


async def for_app(vault: Vault, conn: Conn, app: App) -> AppPolicies:
    """The app's compiled policies, current as of ``app.policy_generation``.

    Generation 0 means the app never had a policy: no read at all. Otherwise the cached entry
    is used while it is as new as the generation the caller's key lookup saw. (The retrieval
    hot path asks the cache itself first and awaits this only on a miss.)
    """
    cache: PolicyCache = vault.policies
    entry = cache.current(app.id, app.policy_generation)
    if entry is None:
        entry = await reload(vault, conn, app.id)
    return entry


async def reload(vault: Vault, conn: Conn, app_id: str) -> AppPolicies:
    """Load the app's policies and keep them in the replica's cache."""
    entry = await load(conn, app_id)
    vault.policies.loads += 1
    vault.policies.store(app_id, entry)
    return entry


# --------------------------------------------------------------------------- deciding


def caller_address(text: str | None) -> IPAddress | None:
    """The caller's address as a fact; ``None`` (unknown) for anything unparsable."""
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def call_facts(
    app_id: str,
    row: Any,
    identity: Identity | None,
    *,
    method: str,
    url: str,
    at: datetime,
    caller_ip: IPAddress | None,
) -> Facts:
    """What the policies judge for a call with the grant ``row`` (the retrieval's resolved
    grant: id, kind, slug, principal): the end user and groups from the verified user token;
    without one, a user grant's owner is the end user and the groups are unknown. The
    retrieval path and ``grantvault policies test`` both build their facts here."""
    if identity is not None:
        end_user: str | None = identity.subject
        groups: frozenset[str] | None = identity.groups
    else:
        end_user = row.principal_id if row.principal_type == "user" else None
        groups = None
    return Facts(
        app_id=app_id,
        grant_id=row.id,
        kind="oauth" if row.kind == "oauth" else "managed_secret",
        credential=row.slug,
        principal_type=row.principal_type,
        principal_id=row.principal_id,
        method=method,
        url=url,
        at=at,
        end_user_id=end_user,
        groups=groups,
        caller_ip=caller_ip,
    )


def denial_error(decision: Decision) -> VaultError:
    """The 403 a denial is answered with: the policy, its version, the rule and the reason."""
    code = (
        ErrorCode.POLICY_EVALUATION_FAILED
        if decision.code == POLICY_EVALUATION_FAILED
        else ErrorCode.POLICY_VIOLATION
    )
    return VaultError(
        code,
        decision.reason,
        policy=decision.policy,
        policy_version=decision.policy_version,
        rule=decision.matched_rule,
    )


def applies_statically(
    policy: CompiledPolicy, kind: str, credential: str, principal_type: str
) -> bool | None:
    """Whether a policy governs a grant's calls: True, False, or None when it depends on the
    end user's groups at call time (``applies_to.groups``). For ``grants list``."""
    secrets, providers = policy.credentials_secrets, policy.credentials_providers
    if secrets is not None or providers is not None:
        chosen = secrets if kind == "managed_secret" else providers
        if chosen is None or credential not in chosen:
            return False
    if policy.principals is not None and principal_type not in policy.principals:
        return False
    return None if policy.groups is not None else True

"""The audit hash chain on SQLite and PostgreSQL: edits, deletions and reordering are caught."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from grantvault_server.services import apps as app_service, audit_log
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import audit_events
from tests.conftest import OPERATOR, make_app


async def _app_with_events(vault: Vault, n: int = 4) -> app_service.App:
    app, _ = await make_app(vault)
    for _ in range(n):
        await app_service.create_key(vault, app, OPERATOR)
    return app


async def _problems(vault: Vault, app: app_service.App) -> list[str]:
    async with vault.db.read() as conn:
        return [p.problem for p in await vault.audit.verify(conn, app.id)]


async def test_intact_chain_verifies(vault: Vault) -> None:
    app = await _app_with_events(vault)
    assert await _problems(vault, app) == []
    report = await audit_log.verify(vault)
    assert report["ok"] is True and any(
        c["chain"] == app.id and c["events"] == 6 for c in report["chains"]
    )


async def test_edited_row_is_detected(vault: Vault) -> None:
    app = await _app_with_events(vault)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.update(audit_events)
            .where(audit_events.c.chain == app.id, audit_events.c.seq == 3)
            .values(outcome="denied")
        )
    assert "row content was modified" in await _problems(vault, app)


async def test_deleted_row_is_detected(vault: Vault) -> None:
    app = await _app_with_events(vault)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.delete(audit_events).where(audit_events.c.chain == app.id, audit_events.c.seq == 2)
        )
    problems = await _problems(vault, app)
    assert any("rows missing" in p for p in problems)


async def test_truncated_tail_is_detected(vault: Vault) -> None:
    app = await _app_with_events(vault)
    async with vault.db.write() as conn:
        await conn.execute(
            sa.delete(audit_events).where(audit_events.c.chain == app.id, audit_events.c.seq == 6)
        )
    assert any("head says" in p for p in await _problems(vault, app))


async def test_reordered_rows_are_detected(vault: Vault) -> None:
    app = await _app_with_events(vault)
    async with vault.db.write() as conn:
        rows = {
            r.seq: r
            for r in (
                await conn.execute(
                    sa.select(audit_events).where(
                        audit_events.c.chain == app.id, audit_events.c.seq.in_([2, 3])
                    )
                )
            ).all()
        }
        # Swap the contents of rows 2 and 3 (keeping each row's seq), as an attacker reordering history would.
        for seq, other in ((2, 3), (3, 2)):
            src = rows[other]
            await conn.execute(
                sa.update(audit_events)
                .where(audit_events.c.chain == app.id, audit_events.c.seq == seq)
                .values(
                    event=src.event, details=src.details, prev_hash=src.prev_hash, hash=src.hash
                )
            )
    problems = await _problems(vault, app)
    assert problems and any("link" in p or "modified" in p for p in problems)


async def test_concurrent_appends_keep_one_chain(vault: Vault) -> None:
    app, _ = await make_app(vault)
    await asyncio.gather(*(app_service.create_key(vault, app, OPERATOR) for _ in range(12)))
    assert await _problems(vault, app) == []
    async with vault.db.read() as conn:
        seqs = (
            (
                await conn.execute(
                    sa.select(audit_events.c.seq).where(audit_events.c.chain == app.id)
                )
            )
            .scalars()
            .all()
        )
    assert sorted(seqs) == list(range(1, 15))


async def test_query_filters(vault: Vault) -> None:
    app = await _app_with_events(vault, 2)
    events = await audit_log.query(vault, app=app.name, event="key.created", limit=10)
    assert [e["event"] for e in events] == ["key.created"] * 3
    assert all(e["actor"]["type"] == "operator" for e in events)


async def test_deleted_head_is_reported_and_blocks_writes(vault: Vault) -> None:
    from grantvault_server.errors import VaultError
    from grantvault_server.storage.tables import audit_heads

    app = await _app_with_events(vault, 1)
    async with vault.db.write() as conn:
        await conn.execute(sa.delete(audit_heads).where(audit_heads.c.chain == app.id))
    report = await audit_log.verify(vault)
    assert report["ok"] is False
    assert any(
        "head record is missing" in p["problem"] for c in report["chains"] for p in c["problems"]
    )
    try:
        await app_service.create_key(vault, app, OPERATOR)
    except VaultError as exc:
        assert exc.code == "audit_unavailable" and exc.status == 503
    else:
        raise AssertionError("a write without a chain head must be refused")


async def test_recomputed_chain_without_the_audit_key_is_detected(vault: Vault) -> None:
    """An attacker with database access edits a row and recomputes plain SHA-256 links."""
    import hashlib
    import json as _json

    from grantvault_server.audit.chain import _iso

    app = await _app_with_events(vault, 2)
    async with vault.db.write() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.chain == app.id)
                    .order_by(audit_events.c.seq)
                )
            )
            .mappings()
            .all()
        )
        prev = "0" * 64
        for row in rows:
            data = {k: v for k, v in dict(row).items() if k not in {"id", "hash"}}
            if data["seq"] == 2:
                data["outcome"] = "denied"
            data["occurred_at"] = _iso(data["occurred_at"])
            data["prev_hash"] = prev
            digest = hashlib.sha256(
                _json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()
            await conn.execute(
                sa.update(audit_events)
                .where(audit_events.c.id == row["id"])
                .values(outcome=data["outcome"], prev_hash=prev, hash=digest)
            )
            prev = digest
        from grantvault_server.storage.tables import audit_heads

        await conn.execute(
            sa.update(audit_heads).where(audit_heads.c.chain == app.id).values(hash=prev)
        )
    assert "row content was modified" in await _problems(vault, app)


async def test_hostile_strings_are_stored_not_fatal(vault: Vault) -> None:
    from grantvault_server.audit.chain import AuditRecord
    from grantvault_server.audit.events import AuditEvent, Outcome

    app, _ = await make_app(vault)
    record = AuditRecord(
        chain=app.id,
        event=AuditEvent.PROVIDER_API_CALL,
        outcome=Outcome.SUCCESS,
        actor={"context": {"x": "\ud800"}},
        reason="r" * 2000,
        url="https://x.example/\x00",
        details={"body": "lone \udfff surrogate"},
    )
    async with vault.db.write() as conn:
        await vault.audit.append(conn, [record])
    assert await _problems(vault, app) == []


async def test_anchor_detects_a_truncated_tail(vault: Vault) -> None:
    """Deleting the newest rows and moving the head back is consistent on its own; an anchor catches it."""
    from grantvault_server.storage.tables import audit_heads

    app = await _app_with_events(vault, 2)
    anchor = await audit_log.verify(vault, app.name)
    assert anchor["ok"] and anchor["chains"][0]["head"]["seq"] == 4
    await app_service.create_key(vault, app, OPERATOR)  # legitimate growth after the anchor
    assert (await audit_log.verify(vault, app.name, anchor=anchor))["ok"] is True
    async with vault.db.write() as conn:
        rows = {
            r.seq: r
            for r in await conn.execute(
                sa.select(audit_events).where(audit_events.c.chain == app.id)
            )
        }
        await conn.execute(
            sa.delete(audit_events).where(audit_events.c.chain == app.id, audit_events.c.seq >= 4)
        )
        await conn.execute(
            sa.update(audit_heads)
            .where(audit_heads.c.chain == app.id)
            .values(seq=3, hash=rows[3].hash)
        )
    assert (await audit_log.verify(vault, app.name))["ok"] is True  # undetectable alone
    report = await audit_log.verify(vault, app.name, anchor=anchor)
    assert report["ok"] is False
    assert "rolled back or truncated" in report["chains"][0]["problems"][0]["problem"]

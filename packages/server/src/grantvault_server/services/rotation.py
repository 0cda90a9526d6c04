"""Master-key rotation, online and resumable.

1. A new master key is staged next to the current one (``master.key.next-<key id>``, 0600) or
   supplied by the operator.
2. One transaction wraps every existing data-key term with the new master key too, adds a
   new term (wrapped by both keys) as the active term for new writes, and records the
   rotation in ``keyring_state``. Servers still holding the old master key keep working:
   every term is wrapped for both keys.
3. The key files are swapped (``master.key`` -> ``master.key.prev``, staged -> ``master.key``).
4. The re-encryption pass rewrites every encrypted column to the new term in batches, each
   batch its own transaction; killed at any point, it resumes where rows still carry an old
   term, and every row is readable with either key throughout.
5. Once every server runs with the new key, ``grantvault master-key retire-old`` drops the old
   master key's wrappings and clears the rotation state. Until then servers still holding
   the old key keep serving (they can open every term, old and new), which is what makes the
   rotation online; a server whose key was retired seals itself (503 ``sealed``, ``/readyz``
   fails) instead of misreading data.

Running ``grantvault master-key rotate`` again while a rotation is recorded resumes it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from grantvault_server.audit.chain import AuditChain, AuditRecord
from grantvault_server.audit.events import SYSTEM_CHAIN, AuditEvent, Outcome
from grantvault_server.config import (
    MASTER_KEY_FILENAME,
    ConfigError,
    Settings,
    decode_master_key,
    generate_master_key_text,
    resolve_master_key,
    write_key_file,
)
from grantvault_server.crypto.barrier import (
    Barrier,
    BarrierError,
    MasterKey,
    aad_for,
    new_data_key,
    now,
)
from grantvault_server.services.vault import Vault, operator_actor
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import for_update
from grantvault_server.storage.tables import ENCRYPTED_COLUMNS, NO_APP, data_keys, keyring_state

Progress = Callable[[str, int], None]


async def begin(barrier: Barrier, conn: Conn, new_master: MasterKey, audit: AuditChain) -> int:
    """Step 2: wrap all terms for ``new_master`` and start a new active term."""
    old = barrier.master
    current = (
        await conn.execute(
            for_update(conn, sa.select(keyring_state).where(keyring_state.c.id == 1))
        )
    ).one()
    if current.rotation_to is not None:
        raise BarrierError(
            f"another rotation (to master key {current.rotation_to}) is in progress; run "
            "`grantvault master-key rotate` again to resume it"
        )
    await barrier.reload(conn)
    rows = (
        await conn.execute(sa.select(data_keys).where(data_keys.c.master_key_id == old.key_id))
    ).all()
    for row in rows:
        dek = old.unwrap(row.term, row.wrapped)
        await conn.execute(
            sa.insert(data_keys).values(
                term=row.term,
                master_key_id=new_master.key_id,
                wrapped=new_master.wrap(row.term, dek),
                created_at=now(),
            )
        )
    term = int(max(r.term for r in rows)) + 1
    dek = new_data_key()
    for master in (old, new_master):
        await conn.execute(
            sa.insert(data_keys).values(
                term=term,
                master_key_id=master.key_id,
                wrapped=master.wrap(term, dek),
                created_at=now(),
            )
        )
    await conn.execute(
        sa.update(keyring_state)
        .where(keyring_state.c.id == 1)
        .values(
            active_term=term,
            rotation_from=old.key_id,
            rotation_to=new_master.key_id,
            updated_at=now(),
        )
    )
    await audit.append(
        conn,
        [
            AuditRecord(
                chain=SYSTEM_CHAIN,
                event=AuditEvent.MASTER_KEY_ROTATION_STARTED,
                outcome=Outcome.SUCCESS,
                actor=operator_actor(),
                details={
                    "old_key_id": old.key_id,
                    "new_key_id": new_master.key_id,
                    "new_term": term,
                },
            )
        ],
    )
    barrier.add_term(term, dek)
    barrier.active_term = term
    return term


async def reencrypt_batch(
    barrier: Barrier, conn: Conn, batch: int, *, dry_run: bool = False
) -> int:
    """Re-encrypt up to ``batch`` rows still on an old term; returns how many (would be) converted.

    Rows are selected in SQL by the term bytes of their ciphertext header, so each batch reads
    only rows that still need work, however large the table.
    """
    converted = 0
    term_bytes = struct.pack(">I", barrier.active_term)
    for column in ENCRYPTED_COLUMNS:
        table = column.table
        col = table.c[column.column]
        key = table.c[column.key]
        rows = (
            await conn.execute(
                sa.select(
                    key.label("id"),
                    (table.c[column.app] if column.app else sa.literal(NO_APP)).label("app_id"),
                    col,
                )
                .where(sa.func.substr(col, 2, 4) != term_bytes)
                .limit(batch - converted)
            )
        ).all()
        for row in rows:
            converted += 1
            if dry_run:
                continue
            blob: bytes = row._mapping[col]
            aad = aad_for(table.name, row.app_id, row.id, column.column)
            plaintext = await barrier.decrypt_fresh(conn, blob, aad)
            await conn.execute(
                sa.update(table)
                .where(key == row.id, col == blob)
                .values({column.column: barrier.encrypt(plaintext, aad)})
            )
        if converted >= batch:
            break
    return converted


async def finish(barrier: Barrier, conn: Conn, old_key_id: str, audit: AuditChain) -> None:
    """Step 5: forget the old master key's wrappings once every row is on the new term."""
    await conn.execute(sa.delete(data_keys).where(data_keys.c.master_key_id == old_key_id))
    await conn.execute(
        sa.update(keyring_state)
        .where(keyring_state.c.id == 1)
        .values(rotation_from=None, rotation_to=None, updated_at=now())
    )
    await audit.append(
        conn,
        [
            AuditRecord(
                chain=SYSTEM_CHAIN,
                event=AuditEvent.MASTER_KEY_ROTATED,
                outcome=Outcome.SUCCESS,
                actor=operator_actor(),
                details={
                    "old_key_id": old_key_id,
                    "new_key_id": barrier.master.key_id,
                    "active_term": barrier.active_term,
                },
            )
        ],
    )


async def state(conn: Conn) -> tuple[str | None, str | None]:
    row = (await conn.execute(sa.select(keyring_state).where(keyring_state.c.id == 1))).one()
    return row.rotation_from, row.rotation_to


def next_key_path(current: Path, key_id: str) -> Path:
    """Where a rotation stages its new key (named by key id: two runs never share a file)."""
    return current.with_name(f"{current.name}.next-{key_id}")


def swap_key_files(current: Path, new_key_id: str) -> None:
    """Step 3: ``master.key`` -> ``master.key.prev``; the staged new key -> ``master.key``."""
    nxt = next_key_path(current, new_key_id)
    if not nxt.exists():
        return
    if current.exists():
        # Link, then replace: at every instant a key file named `current` exists.
        prev = current.with_name(current.name + ".prev")
        prev.unlink(missing_ok=True)
        os.link(current, prev)
    os.replace(nxt, current)


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise BarrierError(message)


async def rotate(
    settings: Settings,
    *,
    new_key_file: Path | None = None,
    batch: int = 500,
    stop_after: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or resume) steps 1-4; the old key stays valid until :func:`retire_old`."""
    report = progress or (lambda _stage, _count: None)
    current = resolve_master_key(settings, allow_generate=False)
    from_env = settings.master_key is not None
    key_file = (
        None if from_env else (settings.master_key_file or settings.data_dir / MASTER_KEY_FILENAME)
    )
    if from_env and new_key_file is None:
        raise ConfigError(
            "The master key comes from GRANTVAULT_MASTER_KEY; pass --new-key-file with the new "
            "key (make one with `grantvault master-key generate --output FILE`)."
        )
    vault = await Vault.start(settings, migrate_schema=False, allow_generate=False)
    try:
        async with vault.db.read() as conn:
            rotating_from, rotating_to = await state(conn)
        resumed = rotating_to is not None
        if not resumed:
            text = (
                new_key_file.read_text().strip()
                if new_key_file is not None
                else generate_master_key_text()
            )
            new_master = MasterKey(decode_master_key(text, str(new_key_file or "new key")))
            ensure(
                new_master.key_id != current_key_id(current.key),
                "the new master key equals the current one",
            )
            staged = next_key_path(key_file, new_master.key_id) if key_file is not None else None
            if staged is not None:
                # Written before the database learns of the key, so a crash cannot leave data
                # wrapped under a key that exists nowhere.
                write_key_file(staged, text)
            try:
                async with vault.db.write() as conn:
                    await begin(vault.barrier, conn, new_master, vault.audit)
            except BaseException:
                if staged is not None:
                    staged.unlink(missing_ok=True)
                raise
            old_id, new_id = vault.barrier.master.key_id, new_master.key_id
            report("new data key term", vault.barrier.active_term)
        else:
            assert rotating_from is not None
            old_id, new_id = rotating_from, str(rotating_to)
            async with vault.db.read() as conn:
                await vault.barrier.reload(conn)
            report("resuming rotation to master key", 0)
        if key_file is not None and vault.barrier.master.key_id == old_id:
            swap_key_files(key_file, new_id)
        total, batches = 0, 0
        while stop_after is None or batches < stop_after:
            async with vault.db.write() as conn:
                converted = await reencrypt_batch(vault.barrier, conn, batch)
            batches += 1
            total += converted
            report("rows re-encrypted", total)
            if converted < batch:
                return _result(
                    old_id, new_id, vault, total, resumed, complete=True, key_file=key_file
                )
        return _result(old_id, new_id, vault, total, resumed, complete=False, key_file=key_file)
    finally:
        await vault.close()


async def retire_old(settings: Settings) -> dict[str, Any]:
    """Step 5: forget the old master key, once every server runs with the new one.

    Refused while rows still carry an old data-key term (run ``rotate`` again to finish the
    re-encryption first), and when run with the old key itself.
    """
    vault = await Vault.start(settings, migrate_schema=False, allow_generate=False)
    try:
        async with vault.db.write() as conn:
            rotating_from, rotating_to = await state(conn)
            if rotating_to is None or rotating_from is None:
                raise ConfigError("No master-key rotation is waiting to be retired.")
            ensure(
                vault.barrier.master.key_id == rotating_to,
                "run this with the NEW master key configured (the rotation swapped the key "
                "file; for GRANTVAULT_MASTER_KEY set the new value)",
            )
            left = await reencrypt_batch(vault.barrier, conn, 1, dry_run=True)
            ensure(left == 0, "some rows still use an old data key; run `master-key rotate` again")
            await finish(vault.barrier, conn, rotating_from, vault.audit)
        return {"retired_key_id": rotating_from, "active_key_id": rotating_to}
    finally:
        await vault.close()


def current_key_id(key: bytes) -> str:
    return MasterKey(key).key_id


def _result(
    old_id: str,
    new_id: str,
    vault: Vault,
    total: int,
    resumed: bool,
    *,
    complete: bool,
    key_file: Path | None,
) -> dict[str, Any]:
    return {
        "old_key_id": old_id,
        "new_key_id": new_id,
        "active_term": vault.barrier.active_term,
        "rows_reencrypted": total,
        "resumed": resumed,
        "complete": complete,
        "key_file": str(key_file) if key_file else None,
    }

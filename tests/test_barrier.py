"""The barrier on SQLite and PostgreSQL: confidentiality, integrity, binding, keys, rotation."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from grantvault_server.config import ConfigError, Settings, resolve_master_key
from grantvault_server.crypto.barrier import (
    Barrier,
    BarrierError,
    CorruptCiphertext,
    MasterKey,
    WrongMasterKey,
    aad_for,
)
from grantvault_server.services import rotation, secrets as secret_service, tokens
from grantvault_server.services.vault import Vault
from grantvault_server.storage.tables import credentials
from tests.conftest import OPERATOR, make_app, new_master_key

SECRET = "sk-live-very-secret-value-0123456789"


async def _secret_with_value(
    vault: Vault, value: str = SECRET
) -> tuple[object, secret_service.ManagedSecret, str]:
    app, _ = await make_app(vault)
    secret = await secret_service.create_secret(vault, app, OPERATOR, template="openai", slug=None)
    cred_id = await secret_service.set_credential(vault, app, secret, {"token": value}, OPERATOR)
    return app, secret, cred_id


async def _dump(vault: Vault) -> str:
    """Every row of every table, as text: what someone with a database dump sees."""
    from grantvault_server.storage.tables import metadata

    parts = []
    async with vault.db.read() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                for value in row:
                    parts.append(
                        value.decode("latin-1")
                        if isinstance(value, bytes)
                        else json.dumps(value, default=str)
                    )
    return "\n".join(parts)


async def test_no_plaintext_in_any_column(vault: Vault) -> None:
    await _secret_with_value(vault)
    dump = await _dump(vault)
    assert SECRET not in dump
    assert base64.b64encode(SECRET.encode()).decode() not in dump


async def test_same_value_encrypts_differently(vault: Vault) -> None:
    aad = aad_for("t", "a", "r", "c")
    assert vault.barrier.encrypt(b"x", aad) != vault.barrier.encrypt(b"x", aad)


async def test_flipped_byte_fails_and_nothing_is_released(vault: Vault) -> None:
    app, secret, cred_id = await _secret_with_value(vault)
    from grantvault_server.services.grants import create_grant

    grant = await create_grant(vault, app, secret, OPERATOR, principal_type="system")
    async with vault.db.write() as conn:
        blob = (
            await conn.execute(
                sa.select(credentials.c.secret_ct).where(credentials.c.id == cred_id)
            )
        ).scalar_one()
        flipped = blob[:-1] + bytes([blob[-1] ^ 1])
        await conn.execute(
            sa.update(credentials).where(credentials.c.id == cred_id).values(secret_ct=flipped)
        )
    with pytest.raises(Exception) as info:
        await tokens.retrieve(
            vault,
            app,
            OPERATOR,
            tokens.TokenRequest(
                method="GET", url="https://api.openai.com/v1/models", grant_id=grant["grant_id"]
            ),
        )
    assert getattr(info.value, "code", None) == "credential_corrupt"
    assert SECRET not in str(info.value)


async def test_ciphertext_swapped_between_rows_fails(vault: Vault) -> None:
    app_a, _, cred_a = await _secret_with_value(vault, "value-of-app-a-000000")
    app_b, _, cred_b = await _secret_with_value(vault, "value-of-app-b-111111")
    async with vault.db.write() as conn:
        blob_a = (
            await conn.execute(sa.select(credentials.c.secret_ct).where(credentials.c.id == cred_a))
        ).scalar_one()
        await conn.execute(
            sa.update(credentials).where(credentials.c.id == cred_b).values(secret_ct=blob_a)
        )
        blob_b = (
            await conn.execute(sa.select(credentials.c.secret_ct).where(credentials.c.id == cred_b))
        ).scalar_one()
    with pytest.raises(CorruptCiphertext):
        vault.barrier.decrypt(blob_b, secret_service.credential_aad(app_b.id, cred_b))  # type: ignore[attr-defined]
    # The original still opens in its own row and field only.
    assert vault.barrier.decrypt(blob_a, secret_service.credential_aad(app_a.id, cred_a))  # type: ignore[attr-defined]
    with pytest.raises(CorruptCiphertext):
        vault.barrier.decrypt(blob_a, aad_for("credentials", app_a.id, cred_a, "other_field"))  # type: ignore[attr-defined]


async def test_wrong_master_key_refuses_to_start(vault: Vault, settings: Settings) -> None:
    await _secret_with_value(vault)
    wrong = settings.model_copy(update={"master_key": SecretStr(new_master_key())})
    with pytest.raises(WrongMasterKey) as info:
        await Vault.start(wrong, migrate_schema=False)
    assert "refusing to start" in str(info.value)
    # Nothing was written with the wrong key: the right key still opens everything.
    again = await Vault.start(settings, migrate_schema=False)
    await again.close()


async def test_missing_master_key_refuses_outside_embedded_mode(settings: Settings) -> None:
    no_key = settings.model_copy(update={"master_key": None})
    with pytest.raises(ConfigError, match="No master key"):
        resolve_master_key(no_key, allow_generate=True)


def test_master_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        MasterKey(b"short")
    with pytest.raises(ConfigError, match="32 bytes"):
        resolve_master_key(
            Settings(master_key=base64.b64encode(b"x" * 16).decode()), allow_generate=False
        )  # type: ignore[arg-type]


async def test_rotation_interrupted_then_resumed_keeps_every_row_readable(
    vault: Vault, settings: Settings, tmp_path: Path
) -> None:
    created = [await _secret_with_value(vault, f"value-{i:04d}-abcdefgh") for i in range(7)]
    old_term = vault.barrier.active_term
    new_key_file = tmp_path / "new.key"
    new_key_text = new_master_key()
    new_key_file.write_text(new_key_text)

    # Interrupted after one batch of two rows.
    partial = await rotation.rotate(settings, new_key_file=new_key_file, batch=2, stop_after=1)
    assert partial["complete"] is False and partial["rows_reencrypted"] == 2

    async def read_all(v: Vault) -> list[str]:
        values = []
        async with v.db.read() as conn:
            for app, _secret, cred_id in created:
                blob = (
                    await conn.execute(
                        sa.select(credentials.c.secret_ct).where(credentials.c.id == cred_id)
                    )
                ).scalar_one()
                values.append(
                    json.loads(
                        await v.barrier.decrypt_fresh(
                            conn, blob, secret_service.credential_aad(app.id, cred_id)
                        )
                    )["token"]
                )  # type: ignore[attr-defined]
        return values

    expected = [f"value-{i:04d}-abcdefgh" for i in range(7)]
    # Mid-rotation, both the old and the new master key open every row.
    for key in (settings.master_key, SecretStr(new_key_text)):
        mid = await Vault.start(
            settings.model_copy(update={"master_key": key}), migrate_schema=False
        )
        try:
            assert await read_all(mid) == expected
        finally:
            await mid.close()
    # The running server (old key in memory) still reads the re-encrypted rows.
    assert await read_all(vault) == expected

    # Resume: the operator now runs with the new key.
    new_settings = settings.model_copy(update={"master_key": SecretStr(new_key_text)})
    done = await rotation.rotate(new_settings, new_key_file=new_key_file, batch=2)
    assert done["complete"] is True and done["resumed"] is True
    after = await Vault.start(new_settings, migrate_schema=False)
    try:
        assert after.barrier.active_term > old_term
        assert await read_all(after) == expected
        async with after.db.read() as conn:
            terms = {
                Barrier.term_of(b)
                for b in (await conn.execute(sa.select(credentials.c.secret_ct))).scalars()
            }
        assert terms == {after.barrier.active_term}
    finally:
        await after.close()
    # Until retired, a server started with the old key still opens everything (online rotation).
    lingering = await Vault.start(settings, migrate_schema=False)
    try:
        assert await read_all(lingering) == expected
    finally:
        await lingering.close()
    # Retiring with the old key configured is refused; with the new key it works.
    with pytest.raises(BarrierError, match="NEW master key"):
        await rotation.retire_old(settings)
    assert (await rotation.retire_old(new_settings))["retired_key_id"] == done["old_key_id"]
    # The old master key no longer opens the keyring.
    with pytest.raises(WrongMasterKey):
        await Vault.start(settings, migrate_schema=False)


async def test_running_server_keeps_serving_through_rotation_then_seals_after_retirement(
    vault: Vault, settings: Settings, tmp_path: Path
) -> None:
    """A server that started with the old key reads rows re-encrypted under the new term."""
    app, secret, _ = await _secret_with_value(vault, "value-before-rotation")
    from grantvault_server.services.grants import create_grant

    grant = await create_grant(vault, app, secret, OPERATOR, principal_type="system")
    request = tokens.TokenRequest(
        method="GET", url="https://api.openai.com/v1/models", grant_id=grant["grant_id"]
    )
    new_key_file = tmp_path / "new.key"
    new_key_file.write_text(new_master_key())
    await rotation.rotate(settings, new_key_file=new_key_file)
    # The running vault (old key in memory, new term unknown to it) still answers.
    assert (await tokens.retrieve(vault, app, OPERATOR, request))[
        "access_token"
    ] == "value-before-rotation"
    new_settings = settings.model_copy(update={"master_key": SecretStr(new_key_file.read_text())})
    await rotation.retire_old(new_settings)
    # New writes under yet another term would need a key this process no longer has: sealed.
    await rotation.rotate(
        new_settings, new_key_file=_write(tmp_path / "third.key", new_master_key())
    )
    await rotation.retire_old(
        new_settings.model_copy(
            update={"master_key": SecretStr((tmp_path / "third.key").read_text())}
        )
    )
    with pytest.raises(Exception) as info:
        await tokens.retrieve(vault, app, OPERATOR, request)
    assert getattr(info.value, "code", None) == "sealed"
    assert vault.barrier.sealed_reason


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_missing_keyring_state_refuses_instead_of_starting_a_second_keyring(
    vault: Vault, settings: Settings
) -> None:
    from grantvault_server.storage.tables import keyring_state

    await _secret_with_value(vault)
    async with vault.db.write() as conn:
        await conn.execute(sa.delete(keyring_state))
    with pytest.raises(WrongMasterKey, match="state is missing"):
        await Vault.start(
            settings.model_copy(update={"master_key": SecretStr(new_master_key())}),
            migrate_schema=False,
        )


async def test_second_rotation_while_one_is_recorded_is_refused(
    vault: Vault, settings: Settings, tmp_path: Path
) -> None:
    await _secret_with_value(vault)
    first = _write(tmp_path / "first.key", new_master_key())
    partial = await rotation.rotate(settings, new_key_file=first, stop_after=0)
    assert partial["complete"] is False
    # Another operator starts a rotation to a different key: refused, nothing changes.
    async with vault.db.write() as conn:
        with pytest.raises(BarrierError, match="in progress"):
            await rotation.begin(
                vault.barrier, conn, MasterKey(base64.b64decode(new_master_key())), vault.audit
            )
    # Rerunning resumes the recorded rotation.
    done = await rotation.rotate(
        settings, new_key_file=_write(tmp_path / "other.key", new_master_key())
    )
    assert done["resumed"] is True and done["new_key_id"] == partial["new_key_id"]

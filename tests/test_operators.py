"""Operator accounts (issue 12): roles, passwords, tokens, lockout, second factor.

Service level, on SQLite and PostgreSQL; the admin API and the portal have their own tests.
"""

from __future__ import annotations

from datetime import timedelta

import pyotp
import pytest
import sqlalchemy as sa

from grantvault_server.errors import VaultError
from grantvault_server.services import operators as ops
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import audit_events, operators
from tests.conftest import OPERATOR, make_app

PASSWORD = "correct-stapler-orbit-47"


async def test_create_and_list_never_show_secrets(vault: Vault) -> None:
    alice = await ops.create_operator(vault, "alice", "owner", actor=OPERATOR, password=PASSWORD)
    shown = alice.public()
    assert shown["role"] == "owner" and shown["password"] is True and shown["totp"] is False
    assert PASSWORD not in str(shown) and "argon2" not in str(shown)
    async with vault.db.read() as conn:
        stored = (await conn.execute(sa.select(operators.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(VaultError) as dup:
        await ops.create_operator(vault, "alice", "admin", actor=OPERATOR, password=PASSWORD)
    assert dup.value.code == "already_exists" and dup.value.status == 409


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short-1", "too short"),
        ("Password1234!", "common"),
        ("qwertyuiop123", "common"),
        ("bob-has-a-long-password", "name"),
        ("aaaaaaaaaaaaabbbb", "repeats"),
    ],
)
def test_weak_passwords_are_refused_with_a_reason(password: str, why: str) -> None:
    with pytest.raises(VaultError) as caught:
        ops.check_password(password, "bob")
    assert why in caught.value.message


async def test_tokens_carry_at_most_their_operators_authority(
    vault: Vault, clock: FakeClock
) -> None:
    app, _ = await make_app(vault)
    other, _ = await make_app(vault)
    await ops.create_operator(vault, "root", "owner", actor=OPERATOR, password=PASSWORD)
    await ops.create_operator(
        vault, "ann", "admin", actor=OPERATOR, password=PASSWORD, apps=[app.name]
    )
    info, token = await ops.create_token(vault, "ann", "ci", actor=OPERATOR, role="owner")
    assert token.startswith("gvat_") and info.prefix == token[:11]
    assert info.role == "admin" and info.apps == frozenset({app.id})  # never more than ann
    principal = await ops.authenticate_token(vault, token)
    assert principal.actor["type"] == "operator_account" and principal.actor["name"] == "ann"
    ops.authorize(principal, "write", app.id)
    for permission, app_id in (("write", other.id), ("owner", None), ("write", None)):
        with pytest.raises(VaultError) as refused:
            ops.authorize(principal, permission, app_id)  # type: ignore[arg-type]
        assert refused.value.code == "forbidden" and refused.value.status == 403
    # Demoting the operator shrinks the token at once.
    await ops.update_operator(vault, "ann", actor=OPERATOR, role="auditor")
    demoted = await ops.authenticate_token(vault, token)
    assert demoted.role == "auditor"
    with pytest.raises(VaultError):
        ops.authorize(demoted, "write", app.id)
    ops.authorize(demoted, "read", app.id)


async def test_expired_revoked_and_disabled_tokens_fail(vault: Vault, clock: FakeClock) -> None:
    await ops.create_operator(vault, "root", "owner", actor=OPERATOR, password=PASSWORD)
    await ops.create_operator(vault, "bea", "admin", actor=OPERATOR, password=PASSWORD)
    short, short_token = await ops.create_token(
        vault, "bea", "short", actor=OPERATOR, expires_in=timedelta(hours=1)
    )
    _, kept = await ops.create_token(vault, "bea", "kept", actor=OPERATOR)
    revoked, revoked_token = await ops.create_token(vault, "bea", "gone", actor=OPERATOR)
    await ops.revoke_token(vault, revoked.id, actor=OPERATOR)
    for token, reason in ((revoked_token, "revoked"), ("gvat_nope", "not valid")):
        with pytest.raises(VaultError) as caught:
            await ops.authenticate_token(vault, token)
        assert caught.value.code == "invalid_token" and reason in caught.value.message
    clock.advance(hours=1)
    with pytest.raises(VaultError, match="expired"):
        await ops.authenticate_token(vault, short_token)
    assert (await ops.authenticate_token(vault, kept)).operator.name == "bea"
    await ops.update_operator(vault, "bea", actor=OPERATOR, disabled=True)
    with pytest.raises(VaultError, match="disabled"):
        await ops.authenticate_token(vault, kept)
    await ops.update_operator(vault, "bea", actor=OPERATOR, disabled=False)
    # Disabling signed the operator out everywhere: old tokens stay dead.
    with pytest.raises(VaultError, match="signed out everywhere"):
        await ops.authenticate_token(vault, kept)
    del short


async def test_the_last_owner_cannot_be_removed(vault: Vault) -> None:
    await ops.create_operator(vault, "solo", "owner", actor=OPERATOR, password=PASSWORD)
    for change in (
        ops.update_operator(vault, "solo", actor=OPERATOR, role="admin"),
        ops.update_operator(vault, "solo", actor=OPERATOR, disabled=True),
        ops.delete_operator(vault, "solo", actor=OPERATOR),
    ):
        with pytest.raises(VaultError, match="without an enabled owner"):
            await change
    assert (await ops.get_operator(vault, "solo")).role == "owner"


async def test_sign_in_failures_lock_the_account_until_the_wait_or_an_unlock(
    vault: Vault, clock: FakeClock
) -> None:
    await ops.create_operator(vault, "carl", "admin", actor=OPERATOR, password=PASSWORD)
    for _ in range(ops.LOCK_AFTER):
        with pytest.raises(VaultError) as failed:
            await ops.sign_in_password(vault, "carl", "wrong-password-xyz", address="192.0.2.1")
        assert failed.value.code == "login_failed"
    with pytest.raises(VaultError) as locked:
        await ops.sign_in_password(vault, "carl", PASSWORD)
    assert locked.value.code == "account_locked" and locked.value.headers == {"Retry-After": "60"}
    clock.advance(60)
    assert (await ops.sign_in_password(vault, "carl", PASSWORD)).operator.name == "carl"
    # Unknown names fail the same way, and an owner's unlock lifts a lock at once.
    with pytest.raises(VaultError) as unknown:
        await ops.sign_in_password(vault, "nobody", PASSWORD)
    assert unknown.value.message == failed.value.message
    for _ in range(ops.LOCK_AFTER):
        with pytest.raises(VaultError):
            await ops.sign_in_password(vault, "carl", "wrong-password-xyz")
    await ops.unlock_operator(vault, "carl", actor=OPERATOR)
    assert (await ops.sign_in_password(vault, "carl", PASSWORD)).needs_second_factor is False
    async with vault.db.read() as conn:
        events = [
            r.event
            for r in await conn.execute(
                sa.select(audit_events.c.event)
                .where(audit_events.c.event.like("operator.%"))
                .order_by(audit_events.c.seq)
            )
        ]
    assert events.count("operator.locked_out") == 2 and "operator.unlocked" in events
    assert PASSWORD not in str(events)


async def test_totp_enrolment_and_recovery_codes(vault: Vault, clock: FakeClock) -> None:
    dana = await ops.create_operator(vault, "dana", "owner", actor=OPERATOR, password=PASSWORD)
    uri = await ops.begin_totp(vault, dana.id)
    seed = pyotp.parse_uri(uri).secret
    with pytest.raises(VaultError, match="does not match"):
        await ops.confirm_totp(vault, dana.id, "000000")
    codes = await ops.confirm_totp(vault, dana.id, pyotp.TOTP(seed).at(clock.now()))
    assert len(codes) == ops.RECOVERY_CODES and len(set(codes)) == ops.RECOVERY_CODES
    async with vault.db.read() as conn:
        row = (await conn.execute(sa.select(operators).where(operators.c.id == dana.id))).one()
    assert seed.encode() not in row.totp_secret_ct and codes[0] not in str(row.recovery_codes)
    step = await ops.sign_in_password(vault, "dana", PASSWORD)
    assert step.needs_second_factor
    clock.advance(90)
    assert (
        await ops.verify_second_factor(vault, dana.id, pyotp.TOTP(seed).at(clock.now()))
    ).name == "dana"
    assert (await ops.verify_second_factor(vault, dana.id, codes[0])).name == "dana"
    with pytest.raises(VaultError) as reused:
        await ops.verify_second_factor(vault, dana.id, codes[0])  # spent
    assert reused.value.code == "login_failed"

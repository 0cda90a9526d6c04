"""Inbound deprovisioning webhooks from the app's IdP, signed the Standard Webhooks way.

``POST /webhooks/idp/{app_id}`` with the headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (Svix's ``svix-*`` names work too, so a Clerk endpoint can point
here), signed with the app's secret (``grantvault idp webhook-secret``) as
:mod:`grantvault_server.identity.webhook_signature` describes.

Refused: a missing or wrong signature (401 ``invalid_signature``), a timestamp more than
five minutes off (401 ``stale_request``), a delivery id seen before (401
``replayed_request``; ids are kept in the database, so every replica refuses it). The
delivery id is claimed in the same transaction as the change it causes: a failed change
can be retried by the sender.

Events (JSON ``{"type": ..., "data": {...}}``):

* ``user.disabled`` / ``user.deleted`` with ``data.subject`` (or ``data.id``, Clerk's shape):
  the user is cut off and their grants revoked, as by ``grantvault users disable``;
* ``group.member_removed`` with ``data.subject`` and ``data.group``: tokens issued before
  now lose that group.

Other event types are acknowledged and ignored (IdPs send many).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.crypto.barrier import BarrierError
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity.state import IdpConfig
from grantvault_server.identity.webhook_signature import header, signature_ok, webhook_key
from grantvault_server.services.identity import users
from grantvault_server.services.identity.idp import read_config, secret_aad
from grantvault_server.services.identity.service import run_disable_hooks
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.sql import insert_ignore
from grantvault_server.storage.tables import identity_providers, idp_webhook_deliveries

TOLERANCE_S = 300
MAX_BODY_BYTES = 64 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DELIVERY_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
DISABLING = {"user.disabled": "disabled", "user.deleted": "deleted"}


@dataclass(frozen=True)
class _Delivery:
    """The webhook headers of one delivery, well-formed (not yet verified)."""

    id: str
    timestamp: str
    signature: str


def _no_endpoint() -> VaultError:
    # Unknown app, no IdP, no secret: one answer, so the route reveals nothing.
    return VaultError(ErrorCode.NOT_FOUND, "No IdP webhook endpoint is configured here.")


def _delivery(app_id: str, headers: Mapping[str, str], body: bytes) -> _Delivery:
    """Refuse a malformed request before anything is read."""
    if not _UUID.fullmatch(app_id):
        raise _no_endpoint()
    delivery_id = header(headers, "id")
    timestamp = header(headers, "timestamp")
    signature = header(headers, "signature")
    if not delivery_id or not timestamp or not signature:
        raise VaultError(
            ErrorCode.INVALID_SIGNATURE,
            "The webhook-id, webhook-timestamp and webhook-signature headers are required.",
        )
    if not _DELIVERY_ID.fullmatch(delivery_id) or not timestamp.isdigit() or len(timestamp) > 12:
        raise VaultError(ErrorCode.INVALID_SIGNATURE, "The webhook headers are malformed.")
    if len(body) > MAX_BODY_BYTES:
        raise VaultError(ErrorCode.PAYLOAD_TOO_LARGE, "A webhook body is at most 64 KiB.")
    return _Delivery(delivery_id, timestamp, signature)


async def _endpoint(vault: Vault, app_id: str) -> tuple[IdpConfig, str]:
    """The app's active IdP and its webhook secret (one refusal for every missing piece)."""
    async with vault.db.read() as conn:
        config = await read_config(conn, app_id)
        if config is None:
            raise _no_endpoint()
        blob = (
            await conn.execute(
                sa.select(identity_providers.c.webhook_secret_ct).where(
                    identity_providers.c.id == config.id
                )
            )
        ).scalar_one_or_none()
        if blob is None:
            raise _no_endpoint()
        try:
            secret = await vault.barrier.decrypt_fresh(
                conn, blob, secret_aad(app_id, config.id, "webhook_secret_ct")
            )
        except BarrierError:
            raise VaultError(
                ErrorCode.CREDENTIAL_CORRUPT,
                "The stored webhook secret could not be read; set a new one with "
                "`grantvault idp webhook-secret`.",
            ) from None
    return config, secret.decode()


def _verify(secret: str, delivery: _Delivery, body: bytes) -> None:
    if not signature_ok(
        webhook_key(secret), delivery.id, delivery.timestamp, body, delivery.signature
    ):
        raise VaultError(
            ErrorCode.INVALID_SIGNATURE,
            "The webhook signature does not match; check the signing secret at the IdP.",
        )
    if abs(time.time() - int(delivery.timestamp)) > TOLERANCE_S:
        raise VaultError(
            ErrorCode.STALE_REQUEST,
            "The webhook timestamp is more than 5 minutes off; check the sender's clock.",
        )


def _event(body: bytes) -> tuple[str, dict[str, Any]]:
    """The event's type and data."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("The webhook body is not JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise InvalidInput('The webhook body must be {"type": ..., "data": {...}}.')
    data = event.get("data")
    return event["type"], data if isinstance(data, dict) else {}


def _subject(data: dict[str, Any]) -> str:
    for field in ("subject", "user_id", "id"):
        value = data.get(field)
        if isinstance(value, str) and 1 <= len(value) <= 255:
            return value
    raise InvalidInput("The event's data carries no user id (data.subject).")


async def _claim(conn: Conn, app_id: str, delivery_id: str, now: datetime) -> None:
    """Record the delivery id (forgetting expired ones); a seen id is a replay."""
    await conn.execute(
        sa.delete(idp_webhook_deliveries).where(
            idp_webhook_deliveries.c.app_id == app_id,
            idp_webhook_deliveries.c.expires_at < now,
        )
    )
    fresh = await insert_ignore(
        conn,
        idp_webhook_deliveries,
        {
            "app_id": app_id,
            "delivery_id": delivery_id,
            "received_at": now,
            "expires_at": now + timedelta(seconds=2 * TOLERANCE_S),
        },
    )
    if not fresh:
        raise VaultError(ErrorCode.REPLAYED_REQUEST, "This webhook delivery was already received.")


async def _apply(
    conn: Conn,
    vault: Vault,
    config: IdpConfig,
    kind: str,
    data: dict[str, Any],
    sent_at: datetime,
    actor: dict[str, Any],
) -> list[str]:
    """Apply a known event inside the claiming transaction; returns the revoked grant ids."""
    subject = _subject(data)
    if kind in DISABLING:
        reason = f"idp webhook {kind}"
        return await users.change_status(
            conn, vault, config, subject, DISABLING[kind], actor, reason=reason
        )
    group = data.get("group") or data.get("group_id")
    if not isinstance(group, str):
        raise InvalidInput("group.member_removed needs data.group (the group id).")
    await users.remove_group_member(conn, vault, config, subject, group, sent_at, actor)
    return []


async def receive(
    vault: Vault, app_id: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """Verify and apply one delivery; answers the route's JSON body.

    The delivery id is claimed in the transaction that applies the event (an ignored event
    type claims it too); the disable hooks run after the commit.
    """
    delivery = _delivery(app_id, headers, body)
    config, secret = await _endpoint(vault, app_id)
    _verify(secret, delivery, body)
    kind, data = _event(body)
    actor = {"type": "idp_webhook", "idp_id": config.id, "delivery_id": delivery.id}
    now = vault.clock.now()
    known = kind in DISABLING or kind == "group.member_removed"
    async with vault.db.write() as conn:
        await _claim(conn, app_id, delivery.id, now)
        if not known:
            return {"status": "ignored", "type": kind[:64]}
        sent_at = max(now, datetime.fromtimestamp(int(delivery.timestamp), UTC))
        revoked = await _apply(conn, vault, config, kind, data, sent_at, actor)
    if kind in DISABLING:
        await run_disable_hooks(vault, app_id, _subject(data))
    return {"status": "processed", "type": kind, "revoked_grants": len(revoked)}

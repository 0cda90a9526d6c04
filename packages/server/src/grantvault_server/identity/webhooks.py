"""Inbound deprovisioning webhooks from the app's IdP, signed the Standard Webhooks way.

``POST /webhooks/idp/{app_id}`` with the headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (Svix's ``svix-*`` names work too, so a Clerk endpoint can point
here). The signature is ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` with the
app's secret (``grantvault idp webhook-secret``); several space-separated signatures are
allowed during a secret rotation at the sender.

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

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from grantvault.types.errors import ErrorCode
from grantvault_server.crypto.barrier import BarrierError
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity import users
from grantvault_server.identity.idp import read_config, secret_aad, webhook_key
from grantvault_server.identity.service import run_disable_hooks
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import utcnow
from grantvault_server.storage.sql import insert_ignore
from grantvault_server.storage.tables import identity_providers, idp_webhook_deliveries

TOLERANCE_S = 300
MAX_BODY_BYTES = 64 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DELIVERY_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
DISABLING = {"user.disabled": "disabled", "user.deleted": "deleted"}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(f"webhook-{name}") or headers.get(f"svix-{name}")


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for a delivery (what the IdP computes)."""
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _no_endpoint() -> VaultError:
    # Unknown app, no IdP, no secret: one answer, so the route reveals nothing.
    return VaultError(ErrorCode.NOT_FOUND, "No IdP webhook endpoint is configured here.")


def _signature_ok(key: bytes, delivery_id: str, timestamp: str, body: bytes, given: str) -> bool:
    expected = hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in given.split()[:10]:
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(raw, expected):
            return True
    return False


def _subject(data: dict[str, Any]) -> str:
    for field in ("subject", "user_id", "id"):
        value = data.get(field)
        if isinstance(value, str) and 1 <= len(value) <= 255:
            return value
    raise InvalidInput("The event's data carries no user id (data.subject).")


async def receive(
    vault: Vault, app_id: str, headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """Verify and apply one delivery; answers the route's JSON body."""
    if not _UUID.fullmatch(app_id):
        raise _no_endpoint()
    delivery_id = _header(headers, "id")
    timestamp = _header(headers, "timestamp")
    signature = _header(headers, "signature")
    if not delivery_id or not timestamp or not signature:
        raise VaultError(
            ErrorCode.INVALID_SIGNATURE,
            "The webhook-id, webhook-timestamp and webhook-signature headers are required.",
        )
    if not _DELIVERY_ID.fullmatch(delivery_id) or not timestamp.isdigit() or len(timestamp) > 12:
        raise VaultError(ErrorCode.INVALID_SIGNATURE, "The webhook headers are malformed.")
    if len(body) > MAX_BODY_BYTES:
        raise VaultError(ErrorCode.PAYLOAD_TOO_LARGE, "A webhook body is at most 64 KiB.")
    async with vault.db.read() as conn:
        config = await read_config(conn, app_id)
        blob = (
            (
                await conn.execute(
                    sa.select(identity_providers.c.webhook_secret_ct).where(
                        identity_providers.c.id == config.id
                    )
                )
            ).scalar_one_or_none()
            if config is not None
            else None
        )
        if config is None or blob is None:
            raise _no_endpoint()
        try:
            secret = (
                await vault.barrier.decrypt_fresh(
                    conn, blob, secret_aad(app_id, config.id, "webhook_secret_ct")
                )
            ).decode()
        except BarrierError:
            raise VaultError(
                ErrorCode.CREDENTIAL_CORRUPT,
                "The stored webhook secret could not be read; set a new one with "
                "`grantvault idp webhook-secret`.",
            ) from None
    if not _signature_ok(webhook_key(secret), delivery_id, timestamp, body, signature):
        raise VaultError(
            ErrorCode.INVALID_SIGNATURE,
            "The webhook signature does not match; check the signing secret at the IdP.",
        )
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        raise VaultError(
            ErrorCode.STALE_REQUEST,
            "The webhook timestamp is more than 5 minutes off; check the sender's clock.",
        )
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("The webhook body is not JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise InvalidInput('The webhook body must be {"type": ..., "data": {...}}.')
    kind: str = event["type"]
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    actor = {"type": "idp_webhook", "idp_id": config.id, "delivery_id": delivery_id}
    now = utcnow()
    revoked: list[str] = []
    subject: str | None = None
    async with vault.db.write() as conn:
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
            raise VaultError(
                ErrorCode.REPLAYED_REQUEST, "This webhook delivery was already received."
            )
        if kind in DISABLING:
            subject = _subject(data)
            revoked = await users.change_status(
                conn, vault, config, subject, DISABLING[kind], actor, reason=f"idp webhook {kind}"
            )
        elif kind == "group.member_removed":
            subject = _subject(data)
            group = data.get("group") or data.get("group_id")
            if not isinstance(group, str):
                raise InvalidInput("group.member_removed needs data.group (the group id).")
            sent_at = datetime.fromtimestamp(int(timestamp), UTC)
            await users.remove_group_member(
                conn, vault, config, subject, group, max(now, sent_at), actor
            )
        else:
            return {"status": "ignored", "type": kind[:64]}
    if kind in DISABLING and subject is not None:
        await run_disable_hooks(vault, app_id, subject)
    return {"status": "processed", "type": kind, "revoked_grants": len(revoked)}

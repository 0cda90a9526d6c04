"""The closed vocabulary of audit events (``resource.action``) and their outcomes."""

from __future__ import annotations

from enum import StrEnum


class AuditEvent(StrEnum):
    APP_CREATED = "app.created"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    KEY_ROTATED = "key.rotated"
    KEY_EXPIRY_SET = "key.expiry_set"
    SECRET_CREATED = "secret.created"
    SECRET_DELETED = "secret.deleted"
    SECRET_CREDENTIAL_SET = "secret.credential_set"
    GRANT_CREATED = "grant.created"
    GRANT_REVOKED = "grant.revoked"
    CREDENTIAL_RETRIEVED = "credential.retrieved"
    PROVIDER_API_CALL = "provider.api_call"
    MASTER_KEY_ROTATION_STARTED = "master_key.rotation_started"
    MASTER_KEY_ROTATED = "master_key.rotated"


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


#: The chain for events that belong to no app (master-key rotation).
SYSTEM_CHAIN = "system"

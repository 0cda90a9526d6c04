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
    GRANT_REAUTHORIZED = "grant.reauthorized"
    GRANT_NEEDS_RECONNECT = "grant.needs_reconnect"
    GRANT_PROVIDER_REVOKED = "grant.provider_revoked"
    GRANT_SCOPE_MISMATCH_REPORTED = "grant.scope_mismatch_reported"
    OAUTH_PROVIDER_CONFIGURED = "oauth_provider.configured"
    OAUTH_PROVIDER_REMOVED = "oauth_provider.removed"
    CONNECT_SESSION_CREATED = "connect.session_created"
    CONNECT_COMPLETED = "connect.completed"
    CONNECT_FAILED = "connect.failed"
    TOKEN_REFRESHED = "token.refreshed"
    TOKEN_REFRESH_FAILED = "token.refresh_failed"
    IDP_CONFIGURED = "idp.configured"
    IDP_WEBHOOK_SECRET_CREATED = "idp.webhook_secret_created"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_SIGNED_IN = "user.signed_in"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    USER_DELETED = "user.deleted"
    GROUP_CREATED = "group.created"
    GROUP_MEMBER_ADDED = "group.member_added"
    GROUP_MEMBER_REMOVED = "group.member_removed"
    POLICY_CREATED = "policy.created"
    POLICY_UPDATED = "policy.updated"
    POLICY_DELETED = "policy.deleted"
    OPERATOR_CREATED = "operator.created"
    OPERATOR_UPDATED = "operator.updated"
    OPERATOR_DELETED = "operator.deleted"
    OPERATOR_UNLOCKED = "operator.unlocked"
    OPERATOR_SIGNED_IN = "operator.signed_in"
    OPERATOR_SIGN_IN_FAILED = "operator.sign_in_failed"
    OPERATOR_LOCKED_OUT = "operator.locked_out"
    OPERATOR_SIGNED_OUT = "operator.signed_out"
    OPERATOR_MFA_ENROLLED = "operator.mfa_enrolled"
    OPERATOR_TOKEN_CREATED = "operator_token.created"
    OPERATOR_TOKEN_REVOKED = "operator_token.revoked"
    #: An operator asked for something their role or app scope does not allow.
    ADMIN_REFUSED = "admin.refused"
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

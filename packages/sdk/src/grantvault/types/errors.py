"""Stable error codes of the ``/sdk/*`` protocol, shared by the vault and the SDK.

An error response is a JSON object ``{"error": <code>, "message": <text>, ...}`` with
code-specific fields beside them. The HTTP status paired with each code is part of the
contract: the public ``alter-sdk`` client picks its exception class from the pair, so the
vault must send exactly these.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every error code the vault emits. Values never change once released."""

    # Authentication of the calling app (401 unless noted).
    INVALID_KEY = "invalid_key"
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"
    KEY_ROTATED_GRACE_EXPIRED = "key_rotated_grace_expired"
    INVALID_SIGNATURE = "invalid_signature"
    STALE_REQUEST = "stale_request"
    REPLAYED_REQUEST = "replayed_request"
    # Grants and credentials.
    GRANT_NOT_FOUND = "grant_not_found"
    GRANT_REVOKED = "grant_revoked"
    GRANT_EXPIRED = "grant_expired"
    AMBIGUOUS_GRANT = "ambiguous_grant"
    CREDENTIAL_NOT_SET = "credential_not_set"
    CREDENTIAL_ID_REQUIRED = "credential_id_required"
    CREDENTIAL_CORRUPT = "credential_corrupt"
    SECRET_NOT_FOUND = "secret_not_found"
    BLOCKED_DESTINATION = "blocked_destination"
    #: A policy rule denies this call (403; the body names the policy, version and rule).
    POLICY_VIOLATION = "policy_violation"
    #: A policy could not be evaluated (missing fact, unreadable policy): fail closed (403).
    POLICY_EVALUATION_FAILED = "policy_evaluation_failed"
    #: A policy quota is used up for its window (429 with Retry-After).
    QUOTA_EXCEEDED = "quota_exceeded"
    POLICY_NOT_FOUND = "policy_not_found"
    JWT_VALIDATION_ERROR = "jwt_validation_error"
    IDP_NOT_CONFIGURED = "idp_not_configured"
    UNSUPPORTED_PRINCIPAL = "unsupported_principal"
    # OAuth grants and the Connect flow.
    CREDENTIAL_REVOKED = "credential_revoked"
    SYSTEM_GRANT_USER_TOKEN_MISMATCH = "system_grant_user_token_mismatch"
    TOKEN_REFRESH_IN_PROGRESS = "token_refresh_in_progress"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    PROVIDER_NOT_CONFIGURED = "provider_not_configured"
    SCOPE_NOT_ALLOWED = "scope_not_allowed"
    CONNECT_DENIED = "connect_denied"
    CONNECT_CONFIG_ERROR = "connect_config_error"
    INVALID_REDIRECT_URI = "invalid_redirect_uri"
    INVALID_CLIENT = "invalid_client"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    SESSION_NOT_FOUND = "session_not_found"
    # End-user identity: the app's identity provider and its users.
    USER_DISABLED = "user_disabled"
    IDP_SIGNIN_NOT_CONFIGURED = "idp_signin_not_configured"
    IDP_DISCOVERY_FAILED = "idp_discovery_failed"
    IDP_MAPPINGS_LOCKED = "idp_mappings_locked"
    IDP_UNAVAILABLE = "idp_unavailable"
    # Operators and the admin API (/admin/v1, the portal).
    #: No valid operator session or token (missing, unknown, expired, revoked).
    INVALID_TOKEN = "invalid_token"
    #: The operator's role (or app scope) does not allow this action.
    FORBIDDEN = "forbidden"
    #: Wrong name, password or second factor (never says which).
    LOGIN_FAILED = "login_failed"
    #: Too many failed sign-ins: the account or address waits (Retry-After) or an owner unlocks.
    ACCOUNT_LOCKED = "account_locked"
    #: Something with that name already exists.
    ALREADY_EXISTS = "already_exists"
    # Generic request problems.
    INVALID_REQUEST = "invalid_request"
    CONSTRAINTS_UNSUPPORTED = "constraints_unsupported"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    #: A route of the public client's protocol that this vault does not serve yet.
    NOT_IMPLEMENTED = "not_implemented"
    # The vault itself.
    AUDIT_UNAVAILABLE = "audit_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    SEALED = "sealed"
    SERVER_BUSY = "server_busy"
    INTERNAL_ERROR = "internal_error"


#: The HTTP status each code is sent with.
STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.INVALID_KEY: 401,
    ErrorCode.KEY_REVOKED: 401,
    ErrorCode.KEY_EXPIRED: 401,
    ErrorCode.KEY_ROTATED_GRACE_EXPIRED: 401,
    ErrorCode.INVALID_SIGNATURE: 401,
    ErrorCode.STALE_REQUEST: 401,
    ErrorCode.REPLAYED_REQUEST: 401,
    ErrorCode.GRANT_NOT_FOUND: 404,
    ErrorCode.GRANT_REVOKED: 403,
    ErrorCode.GRANT_EXPIRED: 403,
    ErrorCode.AMBIGUOUS_GRANT: 409,
    ErrorCode.CREDENTIAL_NOT_SET: 409,
    ErrorCode.CREDENTIAL_ID_REQUIRED: 409,
    ErrorCode.CREDENTIAL_CORRUPT: 500,
    ErrorCode.SECRET_NOT_FOUND: 404,
    # 422, not 403: the public client maps every 403 to PolicyViolationError and only
    # recognises blocked_destination on statuses it has no other branch for.
    ErrorCode.BLOCKED_DESTINATION: 422,
    ErrorCode.POLICY_VIOLATION: 403,
    ErrorCode.POLICY_EVALUATION_FAILED: 403,
    # 429 with Retry-After (the end of the quota window): alter-sdk's QuotaExceededError.
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.POLICY_NOT_FOUND: 404,
    ErrorCode.JWT_VALIDATION_ERROR: 401,
    ErrorCode.IDP_NOT_CONFIGURED: 400,
    ErrorCode.UNSUPPORTED_PRINCIPAL: 422,
    ErrorCode.CREDENTIAL_REVOKED: 403,
    ErrorCode.SYSTEM_GRANT_USER_TOKEN_MISMATCH: 403,
    ErrorCode.TOKEN_REFRESH_IN_PROGRESS: 409,
    ErrorCode.PROVIDER_UNAVAILABLE: 503,
    ErrorCode.PROVIDER_NOT_CONFIGURED: 400,
    ErrorCode.SCOPE_NOT_ALLOWED: 400,
    ErrorCode.CONNECT_DENIED: 400,
    ErrorCode.CONNECT_CONFIG_ERROR: 400,
    ErrorCode.INVALID_REDIRECT_URI: 400,
    ErrorCode.INVALID_CLIENT: 400,
    ErrorCode.UNAUTHORIZED_CLIENT: 400,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.USER_DISABLED: 403,
    ErrorCode.IDP_SIGNIN_NOT_CONFIGURED: 409,
    ErrorCode.IDP_DISCOVERY_FAILED: 400,
    ErrorCode.IDP_MAPPINGS_LOCKED: 409,
    # 503: the SDK retries; an unreachable IdP is not the user's bad token.
    ErrorCode.IDP_UNAVAILABLE: 503,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.LOGIN_FAILED: 401,
    ErrorCode.ACCOUNT_LOCKED: 429,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.CONSTRAINTS_UNSUPPORTED: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    # 429 with `scope`, `limit`, `window_seconds`, `retry_after`: alter-sdk's RateLimitError.
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    # 501, not 404: the public client turns every 404 into GrantNotFoundError, and code that
    # reacts to that by starting a Connect flow would do the wrong thing.
    ErrorCode.NOT_IMPLEMENTED: 501,
    ErrorCode.AUDIT_UNAVAILABLE: 503,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.SEALED: 503,
    # More requests in flight than this server admits; sent with Retry-After.
    ErrorCode.SERVER_BUSY: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}

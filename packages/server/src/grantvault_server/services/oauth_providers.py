"""OAuth provider registrations: an app's client id and secret at a provider, and its scopes.

A registration points at a catalog entry (``google``) plus per-deployment overrides and
parameters (a GitHub Enterprise host, a Microsoft tenant), or carries a whole custom spec
(any OAuth 2.0 server, or an OIDC issuer found by discovery). Either way the rest of the
vault sees one validated :class:`OAuthProviderSpec` and never branches on a provider name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import ValidationError

from grantvault.types.errors import ErrorCode
from grantvault_server.audit.chain import AuditRecord
from grantvault_server.audit.events import AuditEvent, Outcome
from grantvault_server.crypto.barrier import aad_for
from grantvault_server.errors import InvalidInput, NotFound, VaultError
from grantvault_server.oauth.client import ClientCredentials, check_endpoint
from grantvault_server.outbound.urls import ANY_HOST, HttpAllowance
from grantvault_server.providers.oauth_catalog import get_oauth_provider
from grantvault_server.providers.oauth_schema import (
    AccountLookup,
    EndpointOverrides,
    OAuthProviderSpec,
)
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import grants, oauth_providers

_PROVIDER_ID = r"^[a-z0-9][a-z0-9-]{0,49}$"


def secret_aad(app_id: str, row_id: str) -> bytes:
    return aad_for("oauth_providers", app_id, row_id, "client_secret_ct")


@dataclass(frozen=True)
class ProviderConfig:
    """One registration with its effective spec (overrides applied, parameters bound)."""

    id: str
    app_id: str
    provider_id: str
    spec: OAuthProviderSpec
    params: dict[str, str]
    client_id: str
    client_secret_ct: bytes | None
    default_scopes: tuple[str, ...]
    allowed_scopes: tuple[str, ...] | None
    custom: bool

    def url(self, template: str | None, **extra: str) -> str | None:
        """A spec URL with this deployment's parameters filled in."""
        if template is None:
            return None
        values = {**self.params, **extra}
        return self.spec.render(template, values)

    @property
    def authorize_url(self) -> str:
        url = self.url(self.spec.authorize_url)
        assert url is not None
        return url

    def check_schemes(self, allow_http_hosts: HttpAllowance | Sequence[str]) -> None:
        """Refuse plain-http browser and API endpoints this server does not allow.

        Stored custom specs and overrides are parsed with any http host allowed (they were
        checked against the allowance of whoever stored them, which may be another process
        or an older setting); the OAuth client re-checks every endpoint it calls itself, and
        this re-checks the two it does not call: where the browser is sent to authorize and
        the API origin tokens are meant for. Raises :class:`OAuthError`
        (``endpoint_not_allowed``)."""
        check_endpoint(self.authorize_url, allow_http_hosts)
        try:
            api_base = self.url(self.spec.api_base_url)
        except ValueError:  # named per connection (a Salesforce instance): checked then
            api_base = None
        if api_base:
            check_endpoint(api_base, allow_http_hosts)

    @property
    def token_url(self) -> str:
        url = self.url(self.spec.token_url)
        assert url is not None
        return url

    @property
    def revocation_url(self) -> str | None:
        if self.spec.revocation_method != "rfc7009":
            return None
        return self.url(self.spec.revocation_url)

    def scope_allowed(self, scope: str) -> bool:
        if self.allowed_scopes is not None:
            return scope in self.allowed_scopes or scope in self.default_scopes
        return True

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider_id": self.provider_id,
            "display_name": self.spec.display_name,
            "client_id": self.client_id,
            "client_secret_set": self.client_secret_ct is not None,
            "default_scopes": list(self.default_scopes),
            "allowed_scopes": list(self.allowed_scopes)
            if self.allowed_scopes is not None
            else None,
            "custom": self.custom,
            "params": self.params,
            "authorize_url": self.authorize_url,
            "token_url": self.token_url,
            "api_hosts": list(self.spec.api_hosts),
        }


_CACHE: dict[tuple[str, str], ProviderConfig] = {}


def _config_from_row(row: Any) -> ProviderConfig:
    """Build (once per row version) the effective config: validation is not free."""
    key = (row.id, row.updated_at.isoformat())
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if len(_CACHE) > 2048:
        _CACHE.clear()
    cfg = _CACHE[key] = _build_config(row)
    return cfg


def api_hosts(cfg: ProviderConfig, api_base_url: str | None) -> list[str]:
    """Where a grant's token may be sent: the spec's API hosts, or the per-connection API
    origin the provider named at connect time (a Salesforce instance), and nothing else."""
    hosts = [cfg.spec.render(h, cfg.params) if "{" in h else h for h in cfg.spec.api_hosts]
    if api_base_url:
        parts = urlsplit(api_base_url)
        if parts.hostname:
            hosts.append(parts.hostname + (f":{parts.port}" if parts.port else ""))
    return hosts


def _build_config(row: Any) -> ProviderConfig:
    if row.custom_spec is not None:
        # Checked with the operator's http allowance when stored; the OAuth client checks
        # every endpoint's scheme again before each call.
        spec = OAuthProviderSpec.model_validate(
            row.custom_spec, context={"allow_http_hosts": ANY_HOST}
        )
    else:
        base = get_oauth_provider(row.provider_id)
        if base is None:
            raise VaultError(
                ErrorCode.CONNECT_CONFIG_ERROR,
                f"Provider {row.provider_id!r} is no longer in the catalog; re-add it as a "
                "custom provider.",
            )
        spec = base
        if row.overrides:
            # Like custom specs: checked with the operator's http allowance when stored.
            spec = base.with_overrides(
                EndpointOverrides.model_validate(row.overrides),
                context={"allow_http_hosts": ANY_HOST},
            )
    return ProviderConfig(
        id=row.id,
        app_id=row.app_id,
        provider_id=row.provider_id,
        spec=spec,
        params=dict(row.params or {}),
        client_id=row.client_id,
        client_secret_ct=row.client_secret_ct,
        default_scopes=tuple(row.default_scopes or ()),
        allowed_scopes=tuple(row.allowed_scopes) if row.allowed_scopes is not None else None,
        custom=row.custom_spec is not None,
    )


async def get_config(conn: Conn, app_id: str, provider_id: str) -> ProviderConfig | None:
    row = (
        await conn.execute(
            sa.select(oauth_providers).where(
                oauth_providers.c.app_id == app_id,
                oauth_providers.c.provider_id == provider_id.lower(),
            )
        )
    ).first()
    return _config_from_row(row) if row is not None else None


async def get_config_by_id(conn: Conn, app_id: str, config_id: str) -> ProviderConfig:
    row = (
        await conn.execute(
            sa.select(oauth_providers).where(
                oauth_providers.c.app_id == app_id, oauth_providers.c.id == config_id
            )
        )
    ).first()
    if row is None:
        raise VaultError(
            ErrorCode.CONNECT_CONFIG_ERROR, "The provider registration behind this grant is gone."
        )
    return _config_from_row(row)


async def list_configs(conn: Conn, app_id: str) -> list[ProviderConfig]:
    rows = (
        await conn.execute(
            sa.select(oauth_providers)
            .where(oauth_providers.c.app_id == app_id)
            .order_by(oauth_providers.c.provider_id)
        )
    ).all()
    return [_config_from_row(r) for r in rows]


async def client_credentials(vault: Vault, conn: Conn, cfg: ProviderConfig) -> ClientCredentials:
    secret: str | None = None
    if cfg.client_secret_ct is not None:
        secret = (
            await vault.barrier.decrypt_fresh(
                conn, cfg.client_secret_ct, secret_aad(cfg.app_id, cfg.id)
            )
        ).decode("utf-8")
    return ClientCredentials(cfg.client_id, secret)


def custom_spec(
    provider_id: str,
    *,
    display_name: str | None,
    authorize_url: str,
    token_url: str,
    revocation_url: str | None,
    userinfo_url: str | None,
    issuer: str | None,
    iss_parameter: bool,
    api_hosts: Sequence[str],
    api_base_url: str | None,
    scopes: Sequence[str],
    scope_separator: str = " ",
    token_auth_method: str = "client_secret_basic",  # noqa: S107 (a method name)
    pkce: str = "supported",
    account_field: str | None = None,
    allow_http_hosts: Sequence[str] = (),
) -> OAuthProviderSpec:
    """A spec for a provider the catalog does not know, from the operator's URLs."""
    if userinfo_url:
        account = AccountLookup(source="userinfo", url=userinfo_url, field=account_field or "sub")
    elif issuer:
        account = AccountLookup(source="id_token", field=account_field or "sub")
    else:
        raise InvalidInput(
            "A custom provider needs a userinfo URL or an OIDC issuer, to tell which account "
            "was connected."
        )
    try:
        return OAuthProviderSpec.model_validate(
            {
                "id": provider_id,
                "display_name": display_name or provider_id,
                "category": "custom",
                "description": "Custom OAuth 2.0 / OpenID Connect provider.",
                "docs_url": authorize_url,
                "authorize_url": authorize_url,
                "token_url": token_url,
                "revocation_url": revocation_url,
                "revocation_method": "rfc7009" if revocation_url else "none",
                "userinfo_url": userinfo_url,
                "issuer": issuer,
                "iss_parameter": iss_parameter,
                "scope_separator": scope_separator,
                "default_scopes": list(scopes),
                "pkce": pkce,
                "token_auth_method": token_auth_method,
                "api_hosts": list(api_hosts),
                "api_base_url": api_base_url,
                "account": account,
            },
            context={"allow_http_hosts": list(allow_http_hosts)},
        )
    except ValidationError as exc:
        # The spec's docs_url is the authorize URL here: name the field the operator gave.
        message = _first_error(exc).replace(" docs_url: ", " authorize_url: ", 1)
        raise InvalidInput(f"Custom provider: {message}") from None


def spec_from_discovery(
    provider_id: str,
    doc: dict[str, Any],
    *,
    display_name: str | None,
    api_hosts: Sequence[str],
    api_base_url: str | None,
    scopes: Sequence[str],
    account_field: str | None,
    allow_http_hosts: Sequence[str] = (),
) -> OAuthProviderSpec:
    """A custom spec from an OIDC discovery document (already checked for its issuer)."""
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    challenge = doc.get("code_challenge_methods_supported") or []
    try:
        return custom_spec(
            provider_id,
            display_name=display_name,
            authorize_url=str(doc["authorization_endpoint"]),
            token_url=str(doc["token_endpoint"]),
            revocation_url=doc.get("revocation_endpoint"),
            userinfo_url=None,
            issuer=str(doc["issuer"]),
            iss_parameter=bool(doc.get("authorization_response_iss_parameter_supported")),
            api_hosts=api_hosts,
            api_base_url=api_base_url,
            scopes=scopes,
            token_auth_method="client_secret_basic"
            if "client_secret_basic" in methods
            else "client_secret_post",
            pkce="supported" if "S256" in challenge else "unsupported",
            account_field=account_field,
            allow_http_hosts=allow_http_hosts,
        )
    except KeyError as exc:
        raise InvalidInput(f"The discovery document has no {exc.args[0]}.") from None


async def add_provider(
    vault: Vault,
    app: App,
    provider_id: str,
    actor: dict[str, Any],
    *,
    client_id: str,
    client_secret: str | None,
    scopes: Sequence[str] | None = None,
    allowed_scopes: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    spec: OAuthProviderSpec | None = None,
    replace: bool = False,
) -> ProviderConfig:
    """Register (or, with ``replace``, re-register) a provider for an app.

    Everything the operator gave is checked before the write transaction opens (ids, then
    the spec and its overrides, then scopes, then parameters: the first problem is the one
    reported); inside it, the row is written and audited together."""
    provider_id = provider_id.lower()
    _check_registration(provider_id, client_id, client_secret)
    effective = _effective_spec(provider_id, spec, overrides, vault.settings.allow_http_hosts)
    chosen = _default_scopes(effective, scopes, allowed_scopes)
    bound = _bind_params(effective, params)
    now = vault.clock.now()
    async with vault.db.write() as conn:
        existing_id = await _registration_id(conn, app.id, provider_id)
        if existing_id is not None and not replace:
            raise VaultError(
                ErrorCode.ALREADY_EXISTS,
                f"{provider_id!r} is already configured for this app; run "
                "`grantvault providers add` again with --replace (or remove it first).",
            )
        row_id = existing_id if existing_id is not None else str(uuid.uuid4())
        values: dict[str, Any] = {
            "custom_spec": spec.model_dump(mode="json") if spec is not None else None,
            "overrides": overrides or None,
            "params": bound or None,
            "client_id": client_id,
            "client_secret_ct": vault.barrier.encrypt(
                client_secret.encode("utf-8"), secret_aad(app.id, row_id)
            )
            if client_secret is not None
            else None,
            "default_scopes": chosen,
            "allowed_scopes": list(allowed_scopes) if allowed_scopes is not None else None,
            "updated_at": now,
        }
        await _write_registration(
            conn,
            app.id,
            provider_id,
            row_id,
            values,
            created_at=now if existing_id is None else None,
        )
        await _audit_configured(
            vault,
            conn,
            app,
            actor,
            provider_id,
            {
                "client_id": client_id,
                "custom": spec is not None,
                "default_scopes": chosen,
                "replaced": existing_id is not None,
            },
        )
        cfg = await get_config(conn, app.id, provider_id)
    assert cfg is not None
    return cfg


def _check_registration(provider_id: str, client_id: str, client_secret: str | None) -> None:
    """Refuse malformed identifiers before anything is looked up or stored: the provider id
    names the registration in URLs and audit records, and the client credentials are sent
    to the provider as they are stored."""
    if not re.fullmatch(_PROVIDER_ID, provider_id):
        raise InvalidInput("Provider ids are 1-50 characters of a-z, 0-9 and '-'.")
    if not client_id or len(client_id) > 512:
        raise InvalidInput("client_id is required (at most 512 characters).")
    if client_secret is not None and not (1 <= len(client_secret) <= 4096):
        raise InvalidInput("client_secret must be 1-4096 characters.")


def _effective_spec(
    provider_id: str,
    spec: OAuthProviderSpec | None,
    overrides: dict[str, Any] | None,
    allow_http_hosts: Sequence[str],
) -> OAuthProviderSpec:
    """The spec the registration will act on, decided now so that scopes and parameters
    are checked against it: a custom spec as given, else the catalog entry with the
    operator's endpoint overrides applied (a custom spec already names every endpoint, so
    overrides do not apply to it)."""
    base = spec or get_oauth_provider(provider_id)
    if base is None:
        raise InvalidInput(
            f"{provider_id!r} is not in the provider catalog; list it with "
            "`grantvault providers catalog`, or add a custom provider with its URLs or issuer."
        )
    if not overrides or spec is not None:
        return base
    try:
        # Overrides follow the plain-http rule of custom providers (a GHES test server).
        return base.with_overrides(
            EndpointOverrides.model_validate(overrides),
            context={"allow_http_hosts": list(allow_http_hosts)},
        )
    except (ValidationError, ValueError) as exc:
        raise InvalidInput(f"Endpoint overrides are not valid: {_first_error(exc)}") from None


def _default_scopes(
    spec: OAuthProviderSpec, scopes: Sequence[str] | None, allowed_scopes: Sequence[str] | None
) -> list[str]:
    """The scopes a session gets when it names none: the operator's, else the spec's. They
    must lie inside the allowed scopes, or every session using the defaults would be refused."""
    chosen = list(scopes) if scopes is not None else list(spec.default_scopes)
    if allowed_scopes is not None:
        missing = [s for s in chosen if s not in allowed_scopes]
        if missing:
            raise InvalidInput(f"Default scopes not in the allowed scopes: {', '.join(missing)}")
    return chosen


def _bind_params(spec: OAuthProviderSpec, params: dict[str, str] | None) -> dict[str, str]:
    """The deployment parameters, each rendered once now so that a missing or unsafe value
    (a tenant with a '/') is refused at registration rather than in someone's consent flow."""
    bound = dict(params or {})
    for name in spec.params:
        try:
            spec.render("{" + name + "}", bound)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return bound


async def _registration_id(conn: Conn, app_id: str, provider_id: str) -> str | None:
    """The id of the app's registration for ``provider_id``, if there is one."""
    row = (
        await conn.execute(
            sa.select(oauth_providers.c.id).where(
                oauth_providers.c.app_id == app_id,
                oauth_providers.c.provider_id == provider_id,
            )
        )
    ).first()
    return None if row is None else str(row.id)


async def _write_registration(
    conn: Conn,
    app_id: str,
    provider_id: str,
    row_id: str,
    values: dict[str, Any],
    *,
    created_at: datetime | None,
) -> None:
    """Insert a new registration (``created_at`` given) or update the replaced one in place:
    its id stays, so the grants made through it keep pointing at it."""
    if created_at is not None:
        await conn.execute(
            sa.insert(oauth_providers).values(
                id=row_id, app_id=app_id, provider_id=provider_id, created_at=created_at, **values
            )
        )
    else:
        await conn.execute(
            sa.update(oauth_providers).where(oauth_providers.c.id == row_id).values(**values)
        )


async def _audit_configured(
    vault: Vault,
    conn: Conn,
    app: App,
    actor: dict[str, Any],
    provider_id: str,
    details: dict[str, Any],
) -> None:
    """Record the registration in the app's chain, in the transaction that wrote it."""
    await vault.audit.append(
        conn,
        [
            AuditRecord(
                chain=app.id,
                event=AuditEvent.OAUTH_PROVIDER_CONFIGURED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                provider_id=provider_id,
                details=details,
            )
        ],
    )


async def remove_provider(vault: Vault, app: App, provider_id: str, actor: dict[str, Any]) -> None:
    """Remove a registration. Refused while it has grants: revoke them first, so that their
    tokens are revoked at the provider too instead of vanishing with the row."""
    async with vault.db.write() as conn:
        live = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(grants)
                .join(oauth_providers, oauth_providers.c.id == grants.c.oauth_provider_id)
                .where(
                    oauth_providers.c.app_id == app.id,
                    oauth_providers.c.provider_id == provider_id.lower(),
                    grants.c.status != "revoked",
                )
            )
        ).scalar_one()
        if live:
            raise VaultError(
                ErrorCode.INVALID_REQUEST,
                f"{provider_id!r} still has {live} grant(s); revoke them first "
                "(`grantvault grants revoke`).",
                status=409,
            )
        result = await conn.execute(
            sa.delete(oauth_providers).where(
                oauth_providers.c.app_id == app.id,
                oauth_providers.c.provider_id == provider_id.lower(),
            )
        )
        if result.rowcount == 0:
            raise NotFound("provider", provider_id)
        await vault.audit.append(
            conn,
            [
                AuditRecord(
                    chain=app.id,
                    event=AuditEvent.OAUTH_PROVIDER_REMOVED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    provider_id=provider_id.lower(),
                )
            ],
        )


def _first_error(exc: Exception) -> str:
    """The first problem, as an operator reads it (no empty location, no pydantic prefix)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return str(exc)

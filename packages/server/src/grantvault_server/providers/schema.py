"""The schema of a managed secret: which credential fields it holds and how they are injected.

Everything here is data validated with ``extra="forbid"``: a template file with a typo or an
unknown key fails at start-up (and in the test that loads every template), never at the
moment a request needs it. Where a credential may be injected (header and parameter names,
the format) is the wire protocol's rule, ``grantvault.protocol.injection``: the client refuses
a token answer that breaks it, so a secret that breaks it is never stored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grantvault.protocol.injection import (
    MAX_EXTRA_INJECTIONS,
    check_format,
    check_header_name,
    check_param_name,
)

AuthType = Literal["bearer", "header", "query", "basic", "sigv4"]

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")
HOST_RULE = re.compile(
    r"^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?::[0-9]{1,5})?$"
)
SIGV4_FIELDS = ("access_key_id", "secret_access_key", "session_token", "region", "service")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialField(_Strict):
    """One secret field the operator supplies (``token``, ``username``, ``application_key``)."""

    name: str
    description: str = ""
    required: bool = True
    default: str | None = Field(
        default=None, description="Value used when none is supplied (never a secret)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FIELD_NAME.fullmatch(value):
            raise ValueError("field names are lowercase letters, digits and '_' (max 32)")
        return value


class ExtraInjection(_Strict):
    """A further header or query parameter filled from the token or another field."""

    target: Literal["header", "query_param"]
    key: str
    source: str = Field(description='"token" or the name of another credential field')

    @model_validator(mode="after")
    def _key(self) -> ExtraInjection:
        if self.target == "header":
            check_header_name(self.key)
        else:
            check_param_name(self.key)
        return self


class InjectionSpec(_Strict):
    """How a managed secret's credential reaches the provider.

    * ``bearer``: ``Authorization: Bearer <token>``.
    * ``header``: ``<header>: <format with {token}>``.
    * ``query``: the token in query parameter ``query_param``. The wire protocol always
      injects one header too, so ``header``/``format`` name it (many APIs accept both).
    * ``basic``: ``Authorization: Basic base64(username:password)``.
    * ``sigv4``: AWS Signature Version 4, computed by the SDK from the access key pair.
    """

    auth: AuthType
    header: str = "Authorization"
    format: str = "Bearer {token}"
    query_param: str | None = None
    fields: tuple[CredentialField, ...] = ()
    extra: tuple[ExtraInjection, ...] = ()
    aws_region: str | None = None
    aws_service: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_fields(cls, data: Any) -> Any:
        """Supply the standard credential fields of the auth type when none are listed."""
        if isinstance(data, dict) and not data.get("fields"):
            auth = data.get("auth")
            defaults: dict[str, list[dict[str, Any]]] = {
                "basic": [{"name": "username"}, {"name": "password"}],
                "sigv4": [
                    {"name": "access_key_id"},
                    {"name": "secret_access_key"},
                    {"name": "session_token", "required": False},
                ],
            }
            data = {**data, "fields": defaults.get(str(auth), [{"name": "token"}])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> InjectionSpec:
        """Cross-field rules, in a fixed order so the first problem reported is always the
        same one: where the credential goes, then which fields carry it, then the extras."""
        self._check_placement()
        self._check_fields()
        names = [f.name for f in self.fields]
        for inj in self.extra:
            if inj.source != "token" and inj.source not in names:
                raise ValueError(f"extra injection source {inj.source!r} is not a credential field")
        return self

    def _check_placement(self) -> None:
        """The header, format and query parameter must follow the wire protocol's injection
        rule and fit the auth type (a client would refuse a token answer that breaks it)."""
        check_header_name(self.header)
        if self.auth == "sigv4":
            if self.extra:
                raise ValueError("sigv4 signs the whole request; extra injections would break it")
        else:
            check_format(self.format, allow_sigv4=False)
        if self.auth == "bearer" and (self.header, self.format) != (
            "Authorization",
            "Bearer {token}",
        ):
            raise ValueError("bearer uses 'Authorization: Bearer {token}'; use auth 'header'")
        if self.auth == "query":
            if not self.query_param:
                raise ValueError("query auth needs a valid query_param name")
            try:
                check_param_name(self.query_param)
            except ValueError:
                raise ValueError("query auth needs a valid query_param name") from None
        elif self.query_param is not None:
            raise ValueError("query_param is only used with auth 'query'")

    def _check_fields(self) -> None:
        """The credential fields: unique names, the ones the auth type cannot work without
        present and never optional without a default, and no more than the protocol carries."""
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("credential field names must be unique")
        required = {
            "basic": ("username", "password"),
            "sigv4": ("access_key_id", "secret_access_key"),
        }
        by_name = {f.name: f for f in self.fields}
        for name in required.get(self.auth, ("token",)):
            if name not in by_name:
                raise ValueError(f"auth {self.auth!r} needs a credential field named {name!r}")
            if not by_name[name].required and by_name[name].default is None:
                raise ValueError(
                    f"the field {name!r} is essential to auth {self.auth!r}; it cannot be optional"
                )
        if self.auth == "sigv4" and not set(names) <= set(SIGV4_FIELDS):
            raise ValueError(f"sigv4 fields are {', '.join(SIGV4_FIELDS)}")
        if len(self.fields) > MAX_EXTRA_INJECTIONS or len(self.extra) > MAX_EXTRA_INJECTIONS:
            raise ValueError(
                f"at most {MAX_EXTRA_INJECTIONS} credential fields and "
                f"{MAX_EXTRA_INJECTIONS} extra injections"
            )


class SecretTemplate(_Strict):
    """A ready-made managed secret for a popular service."""

    slug: str
    name: str
    description: str
    docs_url: str | None = None
    injection: InjectionSpec
    allowed_hosts: tuple[str, ...] = Field(min_length=1)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.fullmatch(value):
            raise ValueError("slugs are 1-50 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            check_host_rule(host)
        return value


def check_host_rule(rule: str) -> str:
    """Validate one allowed-host rule: ``api.example.com``, ``*.example.com`` or ``host:port``."""
    if rule != rule.lower() or not HOST_RULE.fullmatch(rule):
        raise ValueError(
            f"{rule!r} is not a host rule; use a lowercase host name, '*.domain' or 'host:port'"
        )
    if rule.startswith("*.") and rule.count(".") < 2:
        raise ValueError(f"{rule!r} is too broad; a wildcard needs at least two labels after it")
    return rule

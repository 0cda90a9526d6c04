"""The schema of an OAuth provider: endpoints, scopes and quirks, as validated data.

Every provider difference the OAuth client has to know about (GitHub answering form-encoded
unless asked for JSON, Slack nesting user tokens under ``authed_user``, Microsoft's tenant in
the URL, Salesforce's per-org ``instance_url``) is a field here, so the client has one code
path and the catalog is where a provider is described. All models use ``extra="forbid"``:
a misspelt key in the catalog fails at start-up and in the test that loads every entry,
never in the middle of someone's consent flow.

URLs may carry ``{name}`` placeholders filled per deployment (a Microsoft tenant, a Shopify
shop, a Zendesk subdomain). Every placeholder must be declared as a :class:`Param`, and a
value is checked against the param's pattern *and* a fixed deny-list before it is put into a
URL, because these values end up in the host part: ``evil.test/`` or ``x@evil.test`` would
otherwise send an authorization code, a client secret or a token somewhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from grantvault_server.outbound.urls import HTTP_HINT, HttpAllowance, plain_http_allowed

ScopeSeparator = Literal[" ", ",", "+"]

PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
DOTTED_PATH = re.compile(r"^[A-Za-z0-9_$-]+(?:\.[A-Za-z0-9_$-]+)*$")
HEADER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
API_HOST = re.compile(rf"^(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}(?::[0-9]{{1,5}})?$")
DEFAULT_PARAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$"

#: The placeholder the account lookup may use for the provider's API base URL (the catalog
#: value, or the per-connection one read from the token response via ``api_base_url_from``).
API_BASE_URL = "api_base_url"

# Characters that can move a substituted value out of the host or path segment it was meant
# for. Refused whatever a param's pattern says, so a loose pattern cannot open a hole.
_PARAM_VALUE_DENY = re.compile(r"[/\\@?#%:;\s{}\[\]<>\"'`|^]|\.\.|[\x00-\x1f\x7f]")

# Parameters the OAuth client owns; a catalog entry may not set or override them.
_RESERVED_AUTHORIZE = frozenset(
    {
        "client_id", "client_secret", "redirect_uri", "state", "nonce", "code_challenge",
        "code_challenge_method", "response_type", "scope", "user_scope",
    }
)  # fmt: skip
_RESERVED_REFRESH = frozenset(
    {"client_id", "client_secret", "grant_type", "refresh_token", "redirect_uri", "code"}
)


_URL_FIELDS = (
    "authorize_url", "token_url", "revocation_url", "userinfo_url", "issuer", "jwks_uri",
    "api_base_url",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_dotted(value: str, what: str) -> str:
    if not DOTTED_PATH.fullmatch(value) or len(value) > 200:
        raise ValueError(
            f"{what} {value!r} is not a dotted path such as 'authed_user.access_token'"
        )
    return value


def _check_headers(headers: dict[str, str], what: str) -> dict[str, str]:
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{what}: {name!r} is not a valid header name")
        if any(c in value for c in "\r\n\x00") or len(value) > 500:
            raise ValueError(
                f"{what}: the value of {name!r} has a control character or is too long"
            )
    return headers


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders of a URL template, in order of appearance."""
    return PLACEHOLDER.findall(template)


def check_url(
    value: str,
    what: str,
    *,
    allowed: Iterable[str] = (),
    allow_api_base_url: bool = False,
    http_hosts: HttpAllowance | Iterable[str] = (),
    allow_fragment: bool = False,
) -> str:
    """Refuse anything but an absolute https URL without user information or fragment.

    Placeholders are replaced by a dummy label before parsing, so
    ``https://{shop}.myshopify.com/...`` is checked as the URL it will become. A URL that
    *starts* with ``{api_base_url}`` (account lookups only) is checked with an https stand-in.
    """
    names = placeholders(value)
    allowed_names = set(allowed) | ({API_BASE_URL} if allow_api_base_url else set())
    for name in names:
        if name not in allowed_names:
            if name == API_BASE_URL:
                raise ValueError(f"{what}: {{api_base_url}} is only allowed in account lookups")
            raise ValueError(f"{what}: the placeholder {{{name}}} is not declared under 'params'")
    if API_BASE_URL in names and not value.startswith("{api_base_url}"):
        raise ValueError(f"{what}: {{api_base_url}} may only start the URL")
    probe = value.replace("{api_base_url}", "https://api-base.invalid", 1)
    probe = PLACEHOLDER.sub("x", probe)
    if any(c in probe for c in " \\\t\r\n\x00") or not probe.isascii():
        raise ValueError(f"{what}: {value!r} contains characters that are not allowed in a URL")
    try:
        parts = urlsplit(probe)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a valid URL") from None
    # The outbound rule's plain-http decision (one host normalisation everywhere).
    if parts.scheme != "https" and not (
        parts.scheme == "http" and plain_http_allowed(parts.hostname, parts.port, http_hosts)
    ):
        raise ValueError(f"{what}: {value!r} must be an https URL ({HTTP_HINT})")
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError(f"{what}: {value!r} must name a host and carry no user information")
    if parts.fragment and not allow_fragment:
        raise ValueError(f"{what}: {value!r} must not have a fragment")
    return value


def check_api_host(rule: str) -> str:
    """Validate one destination rule: a lowercase host name or ``*.`` plus a host name.

    An explicit ``:port`` is accepted for non-default ports (local test servers).
    """
    if not API_HOST.fullmatch(rule) or len(rule) > 253:
        raise ValueError(
            f"api host {rule!r} must be a lowercase host name or '*.domain', "
            "optionally with ':port' (no scheme or path)"
        )
    if rule.startswith("*.") and rule.count(".") < 2:
        raise ValueError(f"api host {rule!r} is too broad; a wildcard needs two labels after it")
    return rule


def host_allowed(host: str, rules: Iterable[str], port: int | None = None) -> bool:
    """Whether ``host`` (lower-case) on ``port`` is admitted by one of the ``api_hosts`` rules.

    ``port`` is the URL's explicit port, ``None`` for the scheme's default; a rule without a
    port admits only the default (or 443), a ``host:port`` rule only that port.
    """
    for rule in rules:
        rule_host, _, rule_port = rule.partition(":")
        if rule_port:
            if port != int(rule_port):
                continue
        elif port not in (None, 443):
            continue
        if rule_host.startswith("*."):
            if host.endswith(rule_host[1:]) and len(host) > len(rule_host) - 1:
                return True
        elif host == rule_host:
            return True
    return False


def _not_on_api_hosts(host: str, port: int | None) -> str:
    """Why a host is refused; when the port is what is missing, say so (a rule without a
    port admits only 443, so `ghe.corp` does not cover `https://ghe.corp:8443`)."""
    if port not in (None, 443):
        return (
            f"host {host}:{port} is not in api_hosts (a rule without a port admits only 443; "
            f"add {host}:{port})"
        )
    return f"host {host!r} is not in api_hosts"


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return (parts.hostname or "", parts.port)


class TokenFields(_Strict):
    """Where each value sits in the token endpoint's JSON, as dotted paths.

    Most providers use the RFC 6749 names at the top level. Slack's v2 user tokens are the
    exception that makes this necessary: they arrive under ``authed_user``.
    """

    access_token: str = "access_token"
    refresh_token: str = "refresh_token"
    expires_in: str = "expires_in"
    scope: str = "scope"
    token_type: str = "token_type"
    id_token: str = "id_token"

    @model_validator(mode="after")
    def _paths(self) -> TokenFields:
        for name, value in self.model_dump().items():
            _check_dotted(value, f"token_fields.{name}")
        return self


class AccountLookup(_Strict):
    """How to learn which account was connected, after the code exchange.

    ``id_token`` reads a claim of the (verified) ID token; ``token_response`` reads the token
    endpoint's JSON (Stripe's ``stripe_user_id``); ``userinfo`` and ``api`` call ``url`` with
    the new access token. ``field`` is a dotted path into the result (``data.0.id`` indexes
    lists); ``display_field`` names a human-readable label for the consent summary.
    """

    source: Literal["id_token", "userinfo", "api", "token_response"]
    url: str | None = None
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] | None = None
    field: str
    display_field: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AccountLookup:
        if self.source in ("userinfo", "api"):
            if self.url is None:
                raise ValueError(f"an account lookup from {self.source!r} needs a url")
        elif self.url is not None or self.body is not None or self.headers:
            raise ValueError(
                f"an account lookup from {self.source!r} reads data already received; "
                "url, headers and body do not apply"
            )
        if self.body is not None and self.method != "POST":
            raise ValueError("an account lookup body needs method POST")
        _check_headers(self.headers, "account.headers")
        _check_dotted(self.field, "account.field")
        if self.display_field is not None:
            _check_dotted(self.display_field, "account.display_field")
        return self


class Param(_Strict):
    """A per-deployment value used as ``{name}`` in URLs (tenant, shop, subdomain, domain).

    ``pattern`` is matched in full; whatever it allows, values with ``/``, ``@``, ``..``,
    ``:``, ``?``, ``#``, ``%``, whitespace or control characters are refused by ``render``.
    """

    description: str
    default: str | None = None
    pattern: str = DEFAULT_PARAM_PATTERN

    @model_validator(mode="after")
    def _pattern(self) -> Param:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(
                f"param pattern {self.pattern!r} is not a regular expression: {exc}"
            ) from None
        if self.default is not None and not compiled.fullmatch(self.default):
            raise ValueError(f"param default {self.default!r} does not match its own pattern")
        return self

    def check(self, name: str, value: str) -> str:
        """Return ``value`` if it may be put into a URL, else raise ``ValueError``."""
        if not value or len(value) > 253:
            raise ValueError(f"parameter {name!r} must be 1-253 characters")
        if _PARAM_VALUE_DENY.search(value) or not value.isascii():
            raise ValueError(
                f"parameter {name!r} has a character that could change the URL's host or path "
                "(such as '/', '@', '..' or ':')"
            )
        if not re.fullmatch(self.pattern, value):
            raise ValueError(f"parameter {name!r} does not match {self.pattern!r}")
        return value


class EndpointOverrides(_Strict):
    """Per-app replacements for a catalog entry's endpoints.

    For deployments the catalog cannot know: GitHub Enterprise Server, self-managed GitLab,
    a Salesforce My Domain. The result is re-validated as a whole (https, hosts, placeholders).
    """

    authorize_url: str | None = None
    token_url: str | None = None
    revocation_url: str | None = None
    userinfo_url: str | None = None
    api_base_url: str | None = None
    api_hosts: list[str] | None = None
    issuer: str | None = None


class OAuthProviderSpec(_Strict):
    """One OAuth provider: how to send a user to consent, redeem the code and use the token."""

    id: str
    display_name: str
    category: str
    description: str
    docs_url: str
    authorize_url: str
    token_url: str
    revocation_url: str | None = None
    revocation_method: Literal["rfc7009", "none"] = "rfc7009"
    userinfo_url: str | None = None
    issuer: str | None = None
    jwks_uri: str | None = None
    iss_parameter: bool = False
    scope_separator: ScopeSeparator = " "
    scope_param: str = "scope"
    available_scopes: dict[str, str] = Field(default_factory=dict)
    default_scopes: list[str] = Field(default_factory=list)
    required_scopes: list[str] = Field(default_factory=list)
    pkce: Literal["required", "supported", "unsupported"] = "supported"
    token_auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"
    token_request_format: Literal["form", "json"] = "form"
    token_request_headers: dict[str, str] = Field(default_factory=dict)
    token_response_format: Literal["json", "form", "auto"] = "json"
    token_fields: TokenFields = Field(default_factory=TokenFields)
    authorize_params: dict[str, str] = Field(default_factory=dict)
    refresh_params: dict[str, str] = Field(default_factory=dict)
    supports_refresh: bool = True
    expires_in_default: int | None = None
    refresh_token_rotates: bool = False
    api_base_url: str | None = None
    api_base_url_from: str | None = None
    api_hosts: list[str]
    params: dict[str, Param] = Field(default_factory=dict)
    account: AccountLookup
    status: Literal["stable", "beta"] = "stable"

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not PROVIDER_ID.fullmatch(value):
            raise ValueError("provider ids are 1-50 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("api_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for rule in value:
            check_api_host(rule)
        return value

    @field_validator("scope_param")
    @classmethod
    def _scope_param(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", value):
            raise ValueError(f"scope_param {value!r} is not a plain parameter name")
        return value

    @field_validator("expires_in_default")
    @classmethod
    def _expiry(cls, value: int | None) -> int | None:
        if value is not None and not 60 <= value <= 10 * 365 * 86400:
            raise ValueError("expires_in_default must be between 60 seconds and 10 years")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> OAuthProviderSpec:
        """Cross-field rules, checked in a fixed order so that the first problem reported
        is always the same one: URLs and their placeholders, what needs an issuer, scopes,
        the parameters the client owns, then where tokens may be sent."""
        where = f"provider {self.id!r}"
        # Plain http only for hosts the operator allows for tests (GRANTVAULT_ALLOW_HTTP_HOSTS),
        # passed as validation context; the OAuth client checks the scheme again at use.
        http_hosts = HttpAllowance.of((info.context or {}).get("allow_http_hosts"))
        self._check_param_names(where)
        self._check_urls(where, http_hosts)
        self._check_dependent_settings(where)
        self._check_scopes(where)
        self._check_client_owned_params(where)
        _check_headers(self.token_request_headers, f"{where} token_request_headers")
        self._check_api_destination(where)
        return self

    def _check_param_names(self, where: str) -> None:
        """``api_base_url`` is the placeholder of the account lookup, never a param."""
        for name in self.params:
            if not PARAM_NAME.fullmatch(name) or name == API_BASE_URL:
                raise ValueError(f"{where}: {name!r} cannot be a param name")

    def _check_urls(self, where: str, http_hosts: HttpAllowance) -> None:
        """Every URL is https (or an allowed plain-http host) and uses only declared
        placeholders, and every declared param is used: a param no URL uses would be asked
        of the operator for nothing."""
        declared = set(self.params)
        check_url(self.docs_url, f"{where} docs_url", http_hosts=http_hosts, allow_fragment=True)
        if placeholders(self.docs_url):
            raise ValueError(f"{where}: docs_url cannot have placeholders")
        used: set[str] = set()
        for attr in _URL_FIELDS:
            url = getattr(self, attr)
            if url is not None:
                check_url(url, f"{where} {attr}", allowed=declared, http_hosts=http_hosts)
                used.update(placeholders(url))
        used.update(self._check_account_url(where, declared, http_hosts))
        unused = declared - used
        if unused:
            raise ValueError(f"{where}: params {sorted(unused)} are declared but never used")

    def _check_account_url(
        self, where: str, declared: set[str], http_hosts: HttpAllowance
    ) -> list[str]:
        """Check the account lookup's URL, the one URL that may start with ``{api_base_url}``
        (which then needs a value to take); return the placeholders it uses."""
        if self.account.url is None:
            return []
        check_url(
            self.account.url,
            f"{where} account.url",
            allowed=declared,
            allow_api_base_url=True,
            http_hosts=http_hosts,
        )
        names = placeholders(self.account.url)
        if API_BASE_URL in names and not (self.api_base_url or self.api_base_url_from):
            raise ValueError(f"{where}: account.url uses {{api_base_url}} but none is set")
        return names

    def _check_dependent_settings(self, where: str) -> None:
        """Settings that mean nothing without the endpoint or issuer they depend on."""
        if self.revocation_method == "rfc7009" and self.revocation_url is None:
            raise ValueError(
                f"{where}: revocation_method 'rfc7009' needs a revocation_url "
                "(use revocation_method 'none' when the provider has no RFC 7009 endpoint)"
            )
        if self.jwks_uri is not None and self.issuer is None:
            raise ValueError(f"{where}: jwks_uri is only used to verify ID tokens; set issuer too")
        if self.iss_parameter and self.issuer is None:
            raise ValueError(f"{where}: iss_parameter needs the issuer to compare against")
        if self.account.source == "id_token" and self.issuer is None:
            raise ValueError(f"{where}: an account read from the ID token needs an issuer")

    def _check_client_owned_params(self, where: str) -> None:
        """Extra authorize and refresh parameters may not set what the OAuth client owns
        (state, PKCE, the redirect URI, credentials): a catalog entry could otherwise
        weaken the flow."""
        for params, reserved, what in (
            (self.authorize_params, _RESERVED_AUTHORIZE | {self.scope_param}, "authorize_params"),
            (self.refresh_params, _RESERVED_REFRESH, "refresh_params"),
        ):
            clash = reserved & set(params)
            if clash:
                raise ValueError(
                    f"{where}: {what} cannot set {sorted(clash)}; the client owns them"
                )

    def _check_api_destination(self, where: str) -> None:
        """Tokens need somewhere they may be sent: the ``api_hosts`` rules, or an API origin
        read from the token response; a catalog ``api_base_url`` must lie on those hosts."""
        if self.api_base_url_from is not None:
            _check_dotted(self.api_base_url_from, f"{where} api_base_url_from")
        elif not self.api_hosts:
            raise ValueError(f"{where}: api_hosts needs at least one host")
        if self.api_base_url is not None and self.api_hosts:
            probe = self._probe_host(self.api_base_url)
            if probe is not None and not host_allowed(probe[0], self.api_hosts, probe[1]):
                raise ValueError(f"{where}: api_base_url {_not_on_api_hosts(*probe)}")

    def _check_scopes(self, where: str) -> None:
        names = [*self.available_scopes, *self.default_scopes, *self.required_scopes]
        for scope in names:
            if not scope or any(c.isspace() or c in ",+" for c in scope) or len(scope) > 200:
                raise ValueError(f"{where}: scope {scope!r} is empty, too long or has a separator")
        if self.available_scopes:
            for what, scopes in (("default", self.default_scopes),
                                 ("required", self.required_scopes)):  # fmt: skip
                unknown = [s for s in scopes if s not in self.available_scopes]
                if unknown:
                    raise ValueError(
                        f"{where}: {what} scopes {unknown} are not in available_scopes"
                    )

    def _probe_host(self, url: str) -> tuple[str, int | None] | None:
        """The host of ``url`` with param defaults filled in; ``None`` when a param has none."""
        for name in placeholders(url):
            if self.params[name].default is None:
                return None
        return _host_port(self.render(url, {}))

    def scopes_string(self, scopes: list[str]) -> str:
        """The scope parameter's value: scopes in the given order, duplicates dropped."""
        for scope in scopes:
            if not scope or any(c.isspace() or c in ",+" for c in scope):
                raise ValueError(f"scope {scope!r} is empty or contains a separator")
        return self.scope_separator.join(dict.fromkeys(scopes))

    def render(self, template: str, values: dict[str, str]) -> str:
        """Fill the ``{param}`` placeholders of one of this provider's URL templates.

        ``values`` holds the per-app or per-connection values; a missing one falls back to
        the param's default. Each value is checked before it is substituted, and the error
        names the param, so an operator sees which setting to fix. ``{api_base_url}`` takes
        ``values["api_base_url"]`` (read from the token response for providers with
        ``api_base_url_from``) or else the rendered catalog ``api_base_url``; it must be an
        https URL on one of ``api_hosts``.
        """

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == API_BASE_URL:
                return self._base_url(values)
            param = self.params.get(name)
            if param is None:
                raise ValueError(f"provider {self.id!r} has no parameter {name!r}")
            value = values.get(name, param.default)
            if value is None:
                raise ValueError(
                    f"provider {self.id!r} needs a value for parameter {name!r} "
                    f"({param.description})"
                )
            return param.check(name, value)

        return PLACEHOLDER.sub(substitute, template)

    def _base_url(self, values: dict[str, str]) -> str:
        given = values.get(API_BASE_URL)
        if given is None:
            if self.api_base_url is None:
                raise ValueError(f"provider {self.id!r} has no api_base_url to substitute")
            return self.render(self.api_base_url, values).rstrip("/")
        check_url(given, f"provider {self.id!r} api_base_url value")
        host, port = _host_port(given)
        if placeholders(given) or (self.api_hosts and not host_allowed(host, self.api_hosts, port)):
            raise ValueError(
                f"provider {self.id!r}: api_base_url {given!r}: {_not_on_api_hosts(host, port)}"
            )
        return given.rstrip("/")

    def with_overrides(
        self, overrides: EndpointOverrides, *, context: dict[str, Any] | None = None
    ) -> OAuthProviderSpec:
        """A copy with the given endpoints replaced, validated again from scratch.

        Params that no URL uses any more (a fixed tenant URL replacing ``{tenant}``) are
        dropped rather than rejected as unused: the override made them meaningless.
        ``context`` is the validation context (``allow_http_hosts`` for test servers).
        """
        data = {**self.model_dump(), **overrides.model_dump(exclude_none=True)}
        urls = [data[k] for k in _URL_FIELDS if data.get(k)]
        if data["account"].get("url"):
            urls.append(data["account"]["url"])
        used = {name for url in urls for name in placeholders(url)}
        data["params"] = {k: v for k, v in data["params"].items() if k in used}
        return OAuthProviderSpec.model_validate(data, context=context)

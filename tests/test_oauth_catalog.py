"""The OAuth provider catalog: every entry validates, quirks live in data, bad data is refused."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from alter_sdk.models import OAuthProviderCatalogItem
from pydantic import ValidationError

from grantvault_server.providers.hosts import check_destination
from grantvault_server.providers.oauth_catalog import (
    catalog_item,
    get_oauth_provider,
    load_oauth_catalog,
    parse_oauth_catalog,
)
from grantvault_server.providers.oauth_schema import EndpointOverrides, OAuthProviderSpec

CATALOG = load_oauth_catalog()

REQUIRED = {
    "github", "gitlab", "slack", "google", "microsoft", "notion", "salesforce", "atlassian",
    "asana", "airtable", "bitbucket", "box", "dropbox", "hubspot", "linear", "linkedin",
    "shopify", "spotify", "stripe", "twitter", "xero", "zoom", "zendesk", "okta", "auth0",
}  # fmt: skip

# Values for params without a default, so every URL of every entry can be rendered.
SAMPLE_PARAMS = {
    ("okta", "domain"): "acme.okta.com",
    ("auth0", "domain"): "acme.us.auth0.com",
    ("shopify", "shop"): "acme",
    ("zendesk", "subdomain"): "acme",
}

HOSTILE_VALUES = ["evil.com/x", "a@b", "..", "a..b", "evil.com:443", "x%2fy", "a b", "x?y", "x#y"]


def _values(spec: OAuthProviderSpec) -> dict[str, str]:
    return {
        name: SAMPLE_PARAMS[(spec.id, name)]
        for name in spec.params
        if (spec.id, name) in SAMPLE_PARAMS
    }


def _minimal(**changes: Any) -> dict[str, Any]:
    """A valid provider entry, to be spoiled one field at a time."""
    entry: dict[str, Any] = {
        "id": "example",
        "display_name": "Example",
        "category": "developer",
        "description": "Example provider.",
        "docs_url": "https://example.com/docs",
        "authorize_url": "https://example.com/oauth/authorize",
        "token_url": "https://example.com/oauth/token",
        "revocation_url": "https://example.com/oauth/revoke",
        "api_base_url": "https://api.example.com",
        "api_hosts": ["api.example.com"],
        "account": {"source": "api", "url": "https://api.example.com/me", "field": "id"},
    }
    entry.update(changes)
    return entry


# -- the shipped catalog -------------------------------------------------------------------


def test_catalog_is_large_and_has_the_main_providers() -> None:
    assert len(CATALOG) >= 45
    assert set(CATALOG) >= REQUIRED
    assert "custom" not in CATALOG  # built from operator input by the OAuth client
    assert get_oauth_provider("github") is CATALOG["github"]
    assert get_oauth_provider("no-such-provider") is None


def test_catalog_is_read_only_and_cached() -> None:
    assert load_oauth_catalog() is CATALOG
    with pytest.raises(TypeError):
        CATALOG["evil"] = CATALOG["github"]  # type: ignore[index]


@pytest.mark.parametrize("provider_id", sorted(CATALOG))
def test_every_entry_renders_to_https_urls_on_its_own_hosts(provider_id: str) -> None:
    spec = CATALOG[provider_id]
    missing = [
        n
        for n, p in spec.params.items()
        if p.default is None and (provider_id, n) not in SAMPLE_PARAMS
    ]
    assert not missing, f"add sample values for {missing} to SAMPLE_PARAMS"
    values = _values(spec)
    for url in (spec.authorize_url, spec.token_url, spec.revocation_url, spec.userinfo_url,
                spec.jwks_uri, spec.api_base_url, spec.account.url):  # fmt: skip
        if url is None:
            continue
        rendered = spec.render(url, values)
        parts = urlsplit(rendered)
        assert parts.scheme == "https" and parts.hostname and "{" not in rendered, rendered
    if spec.api_base_url is not None:
        check_destination(spec.render(spec.api_base_url, values) + "/x", spec.api_hosts)
    for rule in spec.api_hosts:
        check_destination(f"https://{rule.replace('*.', 'sub.')}/x", spec.api_hosts)
    if spec.revocation_method == "rfc7009":
        assert spec.revocation_url is not None
    if spec.available_scopes:
        assert all(desc.strip() for desc in spec.available_scopes.values())


@pytest.mark.parametrize("provider_id", sorted(CATALOG))
def test_every_entry_matches_the_public_catalog_item_contract(provider_id: str) -> None:
    item = OAuthProviderCatalogItem.model_validate(catalog_item(CATALOG[provider_id]))
    assert item.id == provider_id
    assert set(item.default_scopes) <= set(item.available_scopes)
    assert set(item.required_scopes) <= set(item.available_scopes)


# -- provider quirks are data ---------------------------------------------------------------


def test_github_quirks() -> None:
    github = CATALOG["github"]
    assert github.token_response_format == "auto"
    assert github.token_request_headers == {"Accept": "application/json"}
    assert github.supports_refresh is False
    assert github.expires_in_default is None
    assert github.revocation_method == "none"
    assert github.account.source == "api" and github.account.field == "login"
    assert github.render(github.account.url or "", {}) == "https://api.github.com/user"


def test_slack_v2_user_token_quirks() -> None:
    slack = CATALOG["slack"]
    assert slack.authorize_url == "https://slack.com/oauth/v2/authorize"
    assert slack.token_url == "https://slack.com/api/oauth.v2.access"
    assert slack.scope_separator == ","
    assert slack.scope_param == "user_scope"
    assert slack.token_fields.access_token == "authed_user.access_token"
    assert slack.token_fields.refresh_token == "authed_user.refresh_token"
    assert slack.token_fields.expires_in == "authed_user.expires_in"
    assert slack.scopes_string(["channels:read", "chat:write", "channels:read"]) == (
        "channels:read,chat:write"
    )


def test_google_quirks() -> None:
    google = CATALOG["google"]
    assert google.authorize_params == {"access_type": "offline", "prompt": "consent"}
    assert google.issuer == "https://accounts.google.com"
    assert google.revocation_url == "https://oauth2.googleapis.com/revoke"
    assert google.api_hosts == ["*.googleapis.com"]
    check_destination("https://gmail.googleapis.com/gmail/v1/users/me/messages", google.api_hosts)
    assert google.scopes_string(["openid", "email"]) == "openid email"


def test_microsoft_tenant_is_a_param() -> None:
    microsoft = CATALOG["microsoft"]
    assert microsoft.render(microsoft.authorize_url, {}) == (
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    )
    tenant = "11111111-2222-3333-4444-555555555555"
    assert microsoft.render(microsoft.token_url, {"tenant": tenant}) == (
        f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
    )
    assert microsoft.render(microsoft.token_url, {"tenant": "contoso.onmicrosoft.com"}).startswith(
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/"
    )
    assert microsoft.api_hosts == ["graph.microsoft.com"]


def test_notion_quirks() -> None:
    notion = CATALOG["notion"]
    assert notion.token_auth_method == "client_secret_basic"
    assert notion.token_request_format == "json"
    assert notion.expires_in_default is None
    assert notion.account.headers == {"Notion-Version": "2022-06-28"}
    assert notion.authorize_params == {"owner": "user"}


def test_salesforce_quirks() -> None:
    salesforce = CATALOG["salesforce"]
    assert salesforce.api_base_url_from == "instance_url"
    assert salesforce.expires_in_default is None
    assert salesforce.render(salesforce.token_url, {}) == (
        "https://login.salesforce.com/services/oauth2/token"
    )
    for host in (
        "test.salesforce.com",
        "acme.my.salesforce.com",
        "acme--uat.sandbox.my.salesforce.com",
    ):
        assert salesforce.render(salesforce.authorize_url, {"login_host": host}).startswith(
            f"https://{host}/"
        )
    for host in (
        "evil.com",
        "salesforce.com.evil.com",
        "evil.com/.my.salesforce.com",
        "login.salesforce.co",
    ):
        with pytest.raises(ValueError, match="login_host"):
            salesforce.render(salesforce.authorize_url, {"login_host": host})
    # The per-org base URL from the token response is used only on Salesforce hosts.
    assert salesforce.render(
        "{api_base_url}/services/data", {"api_base_url": "https://na1.salesforce.com/"}
    ) == ("https://na1.salesforce.com/services/data")
    with pytest.raises(ValueError, match="api_hosts"):
        salesforce.render("{api_base_url}/x", {"api_base_url": "https://evil.example/"})
    with pytest.raises(ValueError):
        salesforce.render("{api_base_url}/x", {"api_base_url": "http://na1.salesforce.com"})


def test_other_quirks() -> None:
    assert CATALOG["gitlab"].refresh_token_rotates is True
    assert CATALOG["github"].refresh_token_rotates is False
    assert CATALOG["square"].expires_in_default == 30 * 86400  # expires_at, not expires_in
    assert CATALOG["dropbox"].authorize_params == {"token_access_type": "offline"}
    assert CATALOG["airtable"].pkce == "required"
    assert CATALOG["twitter"].pkce == "required"
    assert CATALOG["stripe"].account.source == "token_response"
    assert CATALOG["linear"].scope_separator == ","
    assert CATALOG["bitly"].token_response_format == "auto"
    shopify = CATALOG["shopify"]
    assert shopify.render(shopify.authorize_url, {"shop": "acme"}) == (
        "https://acme.myshopify.com/admin/oauth/authorize"
    )
    zendesk = CATALOG["zendesk"]
    assert zendesk.render(zendesk.account.url or "", {"subdomain": "acme"}) == (
        "https://acme.zendesk.com/api/v2/users/me.json"
    )


# -- render() ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_render_refuses_hostile_param_values(value: str) -> None:
    microsoft = CATALOG["microsoft"]
    with pytest.raises(ValueError, match="tenant"):
        microsoft.render(microsoft.authorize_url, {"tenant": value})


def test_render_names_a_missing_param() -> None:
    shopify = CATALOG["shopify"]
    with pytest.raises(ValueError, match="'shop'"):
        shopify.render(shopify.token_url, {})
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        shopify.render("https://{nope}.example.com", {"shop": "acme"})


def test_hostile_values_are_refused_even_by_a_loose_pattern() -> None:
    spec = OAuthProviderSpec.model_validate(
        _minimal(
            authorize_url="https://{host}/authorize",
            params={"host": {"description": "Any host", "pattern": "^.*$"}},
        )
    )
    assert (
        spec.render(spec.authorize_url, {"host": "ok.example.com"})
        == "https://ok.example.com/authorize"
    )
    for value in HOSTILE_VALUES:
        with pytest.raises(ValueError, match="'host'"):
            spec.render(spec.authorize_url, {"host": value})


# -- overrides -----------------------------------------------------------------------------


def test_github_enterprise_overrides() -> None:
    github = CATALOG["github"]
    ghe = github.with_overrides(
        EndpointOverrides(
            authorize_url="https://ghe.example.com/login/oauth/authorize",
            token_url="https://ghe.example.com/login/oauth/access_token",
            api_base_url="https://ghe.example.com/api/v3",
            api_hosts=["ghe.example.com"],
        )
    )
    assert ghe.authorize_url == "https://ghe.example.com/login/oauth/authorize"
    assert ghe.token_url == "https://ghe.example.com/login/oauth/access_token"
    assert ghe.api_hosts == ["ghe.example.com"]
    assert ghe.render(ghe.account.url or "", {}) == "https://ghe.example.com/api/v3/user"
    assert ghe.token_response_format == "auto"  # quirks survive the override
    assert github.authorize_url == "https://github.com/login/oauth/authorize"  # original intact
    with pytest.raises(ValidationError, match="https"):
        github.with_overrides(EndpointOverrides(token_url="http://ghe.example.com/token"))
    with pytest.raises(ValidationError, match="not in api_hosts"):
        github.with_overrides(EndpointOverrides(api_base_url="https://ghe.example.com/api/v3"))


def test_override_removing_a_placeholder_drops_its_param() -> None:
    microsoft = CATALOG["microsoft"]
    fixed = microsoft.with_overrides(
        EndpointOverrides(
            authorize_url="https://login.microsoftonline.com/contoso.com/oauth2/v2.0/authorize",
            token_url="https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
        )
    )
    assert fixed.params == {}
    with pytest.raises(ValidationError):
        EndpointOverrides.model_validate({"authorize_url": "https://x.example", "extra": "no"})


# -- refusals ------------------------------------------------------------------------------


def test_minimal_entry_is_valid() -> None:
    assert OAuthProviderSpec.model_validate(_minimal()).id == "example"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unknown_key": 1}, "Extra inputs"),
        (
            {
                "account": {
                    "source": "api",
                    "url": "https://api.example.com/me",
                    "field": "id",
                    "x": 1,
                }
            },
            "Extra inputs",
        ),
        ({"token_fields": {"acess_token": "x"}}, "Extra inputs"),
        ({"token_url": "http://example.com/oauth/token"}, "https"),
        ({"authorize_url": "https://user@example.com/authorize"}, "user information"),
        ({"authorize_url": "https://{tenant}.example.com/authorize"}, "not declared"),
        ({"params": {"unused": {"description": "Unused"}}}, "never used"),
        ({"revocation_url": None}, "rfc7009"),
        ({"id": "Bad_Id"}, "provider ids"),
        ({"api_hosts": ["https://api.example.com"]}, "api host"),
        ({"api_hosts": ["API.example.com"]}, "api host"),
        ({"api_hosts": ["api.example.com/path"]}, "api host"),
        ({"api_hosts": ["*.com"]}, "too broad"),
        ({"api_hosts": []}, "at least one"),
        ({"api_hosts": ["other.example.com"]}, "not in api_hosts"),
        (
            {"available_scopes": {"read": "Read"}, "default_scopes": ["write"]},
            "not in available_scopes",
        ),
        (
            {"available_scopes": {"read": "Read"}, "required_scopes": ["admin"]},
            "not in available_scopes",
        ),
        ({"available_scopes": {"read write": "Both"}}, "separator"),
        ({"authorize_params": {"redirect_uri": "https://evil.example/cb"}}, "client owns"),
        ({"refresh_params": {"grant_type": "password"}}, "client owns"),
        ({"account": {"source": "userinfo", "field": "email"}}, "needs a url"),
        ({"account": {"source": "id_token", "field": "email"}}, "issuer"),
        (
            {
                "account": {"source": "api", "url": "{api_base_url}/me", "field": "id"},
                "api_base_url": None,
            },
            "api_base_url",
        ),
        ({"token_request_headers": {"Bad Header": "x"}}, "header"),
        (
            {
                "params": {"host": {"description": "h", "default": "a/b"}},
                "authorize_url": "https://{host}/a",
            },
            "own pattern",
        ),
        ({"scope_separator": ";"}, "scope_separator"),
        ({"expires_in_default": 0}, "expires_in_default"),
    ],
)
def test_invalid_entries_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OAuthProviderSpec.model_validate(_minimal(**changes))


def test_catalog_errors_name_the_entry_and_field() -> None:
    good = "  - {id: one, display_name: One, category: developer, description: d, docs_url: 'https://e.com/d', authorize_url: 'https://e.com/a', token_url: 'https://e.com/t', revocation_method: none, api_hosts: [e.com], account: {source: token_response, field: user.id}}\n"
    assert set(parse_oauth_catalog("providers:\n" + good)) == {"one"}
    with pytest.raises(ValueError, match="duplicate provider id 'one'"):
        parse_oauth_catalog("providers:\n" + good + good)
    bad = good.replace("token_url: 'https://e.com/t'", "token_url: 'http://e.com/t'")
    with pytest.raises(ValueError, match=r"entry 0 \('one'\).*token_url"):
        parse_oauth_catalog("providers:\n" + bad)
    typo = good.replace("category:", "categroy:")
    with pytest.raises(ValueError, match=r"entry 0 \('one'\).*categroy"):
        parse_oauth_catalog("providers:\n" + typo)
    with pytest.raises(ValueError, match="single key 'providers'"):
        parse_oauth_catalog("- id: one\n")


# -- wire shape ----------------------------------------------------------------------------


def test_catalog_item_shape() -> None:
    item = catalog_item(CATALOG["google"])
    assert set(item) == {
        "id", "name", "display_name", "category", "description", "logo_url", "supports_refresh",
        "supports_pkce", "available_scopes", "default_scopes", "required_scopes", "status",
    }  # fmt: skip
    assert item["id"] == "google" and item["display_name"] == "Google"
    assert item["logo_url"] is None
    assert item["supports_refresh"] is True and item["supports_pkce"] is True
    assert item["status"] == "active"
    assert item["available_scopes"]["openid"] == {
        "description": "Confirm who you are with Google",
        "required": True,
        "is_default": True,
        "requires": [],
    }
    drive = item["available_scopes"]["https://www.googleapis.com/auth/drive"]
    assert drive["required"] is False and drive["is_default"] is False
    assert item["required_scopes"] == ["openid", "email"]

    github = catalog_item(CATALOG["github"])
    assert github["supports_refresh"] is False
    slack = catalog_item(CATALOG["slack"])
    assert slack["supports_pkce"] is False
    assert catalog_item(CATALOG["figma"])["status"] == "beta"

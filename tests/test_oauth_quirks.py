"""Provider quirks the OIDC peer cannot show, against small fake token endpoints.

Each quirk is data in the catalog (providers/oauth_providers.yaml); these tests prove the
one client honours that data: GitHub's form-encoded answers and errors sent with HTTP 200,
Slack's token nested under ``authed_user``, Notion's JSON request with Basic auth,
Salesforce's per-connection API host, tokens without ``expires_in``, and the limits every
provider call has (no redirects, bounded size, https only).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from grantvault_server.oauth.client import (
    ClientCredentials,
    OAuthClient,
    OAuthError,
    authorization_url,
)
from grantvault_server.providers.oauth_catalog import get_oauth_provider
from grantvault_server.providers.oauth_schema import OAuthProviderSpec

CREDS = ClientCredentials("client-1", "s3cret+/=&")
Handler = Callable[[httpx.Request], httpx.Response]


def spec(pid: str) -> OAuthProviderSpec:
    found = get_oauth_provider(pid)
    assert found is not None
    return found


class Fake:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self) -> OAuthClient:
        return OAuthClient(transport=httpx.MockTransport(self))


async def exchange(pid: str, fake: Fake) -> Any:
    s = spec(pid)
    client = fake.client()
    try:
        return await client.exchange_code(
            s,
            s.render(s.token_url, {}),
            CREDS,
            code="c0de",
            redirect_uri="https://v/cb",
            verifier="v" * 43,
        )
    finally:
        await client.aclose()


async def test_github_form_encoded_answer_without_expiry_or_refresh() -> None:
    fake = Fake(
        lambda _r: httpx.Response(
            200,
            content=b"access_token=gho_abc&scope=repo%2Cuser&token_type=bearer",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    )
    tokens = await exchange("github", fake)
    assert tokens.access_token == "gho_abc"
    assert tokens.refresh_token is None and tokens.expires_in is None
    assert tokens.scopes == ("repo", "user")
    sent = fake.requests[0]
    assert sent.headers["accept"] == "application/json"
    assert parse_qs(sent.content.decode())["client_secret"] == [CREDS.client_secret]
    assert spec("github").supports_refresh is False


async def test_github_json_answer_when_it_honours_accept() -> None:
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "gho_j", "scope": "repo"}))
    assert (await exchange("github", fake)).access_token == "gho_j"


async def test_github_error_sent_with_http_200_is_an_error() -> None:
    fake = Fake(
        lambda _r: httpx.Response(
            200,
            content=b"error=bad_verification_code&error_description=The+code+is+wrong",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    )
    with pytest.raises(OAuthError) as info:
        await exchange("github", fake)
    assert info.value.error == "bad_verification_code" and not info.value.transient


async def test_slack_v2_user_token_nested_under_authed_user() -> None:
    body = {
        "ok": True,
        "app_id": "A1",
        "authed_user": {
            "id": "U123",
            "scope": "chat:write,users:read",
            "access_token": "xoxp-1",
            "token_type": "user",
        },
        "team": {"id": "T1", "name": "Acme"},
    }
    fake = Fake(lambda _r: httpx.Response(200, json=body))
    tokens = await exchange("slack", fake)
    assert tokens.access_token == "xoxp-1"
    assert tokens.scopes == ("chat:write", "users:read")
    assert tokens.expires_in is None
    # The nested token is not kept in what the vault may store in clear.
    assert "xoxp-1" not in json.dumps(tokens.extra)
    assert tokens.extra["authed_user"]["id"] == "U123"
    s = spec("slack")
    url = authorization_url(
        s,
        s.authorize_url,
        client_id="c",
        redirect_uri="https://v/cb",
        scopes=["chat:write", "users:read"],
        state="st",
        code_challenge=None,
        nonce=None,
    )
    query = parse_qs(urlsplit(url).query)
    assert query["user_scope"] == ["chat:write,users:read"] and "scope" not in query


async def test_slack_error_with_ok_false() -> None:
    fake = Fake(lambda _r: httpx.Response(200, json={"ok": False, "error": "invalid_code"}))
    with pytest.raises(OAuthError) as info:
        await exchange("slack", fake)
    assert info.value.error == "invalid_code"


async def test_notion_json_body_and_basic_auth() -> None:
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "ntn_1", "bot_id": "b"}))
    tokens = await exchange("notion", fake)
    assert tokens.access_token == "ntn_1" and tokens.expires_in is None
    sent = fake.requests[0]
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content)["grant_type"] == "authorization_code"
    assert "client_secret" not in json.loads(sent.content)
    user, _, password = (
        base64.b64decode(sent.headers["authorization"].split()[1]).decode().partition(":")
    )
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    assert (user, password) == ("client-1", "s3cret%2B%2F%3D%26")


async def test_salesforce_instance_url_becomes_the_api_host() -> None:
    from grantvault_server.services.connect import api_base_url
    from grantvault_server.services.oauth_providers import ProviderConfig, api_hosts

    body = {"access_token": "00D!x", "instance_url": "https://acme.my.salesforce.com", "id": "x"}
    tokens = await exchange("salesforce", Fake(lambda _r: httpx.Response(200, json=body)))
    s = spec("salesforce")
    cfg = ProviderConfig(
        id="c",
        app_id="a",
        provider_id="salesforce",
        spec=s,
        params={"login_host": "test.salesforce.com"},
        client_id="x",
        client_secret_ct=None,
        default_scopes=(),
        allowed_scopes=None,
        custom=False,
    )
    assert cfg.token_url == "https://test.salesforce.com/services/oauth2/token"
    base = api_base_url(cfg, tokens)
    assert base == "https://acme.my.salesforce.com"
    assert "acme.my.salesforce.com" in api_hosts(cfg, base)


def test_microsoft_tenant_and_google_offline_access_are_data() -> None:
    ms = spec("microsoft")
    assert ms.render(ms.authorize_url, {"tenant": "contoso.onmicrosoft.com"}).startswith(
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/"
    )
    with pytest.raises(ValueError):
        ms.render(ms.authorize_url, {"tenant": "evil.com/x"})
    g = spec("google")
    url = authorization_url(
        g,
        g.authorize_url,
        client_id="c",
        redirect_uri="https://v/cb",
        scopes=["openid"],
        state="s",
        code_challenge="ch",
        nonce="n",
    )
    query = parse_qs(urlsplit(url).query)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] == ["n"]


async def test_token_endpoint_redirects_are_not_followed() -> None:
    fake = Fake(lambda _r: httpx.Response(302, headers={"location": "https://evil.example/token"}))
    with pytest.raises(OAuthError):
        await exchange("google", fake)
    assert len(fake.requests) == 1


async def test_oversized_answers_are_refused() -> None:
    fake = Fake(lambda _r: httpx.Response(200, content=b"{" + b" " * (2 << 20) + b"}"))
    with pytest.raises(OAuthError) as info:
        await exchange("google", fake)
    assert info.value.error == "malformed_response"


async def test_server_errors_are_transient_and_invalid_grant_is_not() -> None:
    fake = Fake(lambda _r: httpx.Response(503, text="down", headers={"retry-after": "7"}))
    with pytest.raises(OAuthError) as info:
        await exchange("google", fake)
    assert info.value.transient and info.value.retry_after == 7
    fake = Fake(lambda _r: httpx.Response(400, json={"error": "invalid_grant"}))
    with pytest.raises(OAuthError) as info:
        await exchange("google", fake)
    assert info.value.dead_credential and not info.value.transient


async def test_plain_http_endpoints_are_refused_unless_allowed() -> None:
    s = spec("google")
    client = OAuthClient(transport=httpx.MockTransport(lambda _r: httpx.Response(200, json={})))
    try:
        with pytest.raises(OAuthError) as info:
            await client.exchange_code(
                s,
                "http://oauth2.googleapis.com/token",
                CREDS,
                code="c",
                redirect_uri="https://v/cb",
                verifier=None,
            )
        assert info.value.error == "endpoint_not_allowed"
    finally:
        await client.aclose()


async def test_missing_expires_in_means_no_expiry_unless_the_catalog_says_otherwise() -> None:
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "t", "refresh_token": "r"}))
    tokens = await exchange("google", fake)
    assert tokens.expires_in is None
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "t", "expires_in": 0}))
    assert (await exchange("google", fake)).expires_in is None


async def test_token_type_and_expires_in_are_checked() -> None:
    for body, error in (
        ({"access_token": "t", "token_type": "DPoP"}, "unsupported_token_type"),
        ({"access_token": "t", "expires_in": -5}, "malformed_response"),
        ({"access_token": "t", "expires_in": "soon"}, "malformed_response"),
        ({"access_token": "t", "expires_in": True}, "malformed_response"),
        ({"token_type": "Bearer"}, "malformed_response"),
        ({"access_token": "a\r\nb"}, "malformed_response"),
    ):
        fake = Fake(lambda _r, body=body: httpx.Response(200, json=body))
        with pytest.raises(OAuthError) as info:
            await exchange("google", fake)
        assert info.value.error == error, body
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "t", "expires_in": "3600"}))
    assert (await exchange("google", fake)).expires_in == 3600
    fake = Fake(lambda _r: httpx.Response(200, json={"access_token": "t", "expires_in": 10**12}))
    assert (await exchange("google", fake)).expires_in == 315_360_000


async def test_html_answer_is_refused_without_echoing_it() -> None:
    fake = Fake(lambda _r: httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(OAuthError) as info:
        await exchange("google", fake)
    assert info.value.error == "malformed_response" and "maintenance" not in str(info.value)


async def test_a_provider_named_api_host_must_be_inside_the_allowed_hosts() -> None:
    from grantvault_server.services.connect import api_base_url
    from grantvault_server.services.oauth_providers import ProviderConfig

    s = spec("salesforce")
    cfg = ProviderConfig(
        id="c", app_id="a", provider_id="salesforce", spec=s, params={},
        client_id="x", client_secret_ct=None, default_scopes=(), allowed_scopes=None, custom=False,
    )  # fmt: skip
    for evil in (
        "https://evil.example",
        "https://acme.my.salesforce.com:8443",
        "http://acme.my.salesforce.com",
    ):
        body = {"access_token": "t", "instance_url": evil}
        tokens = await exchange(
            "salesforce", Fake(lambda _r, body=body: httpx.Response(200, json=body))
        )
        with pytest.raises(OAuthError):
            api_base_url(cfg, tokens)


async def test_long_or_binary_error_codes_are_cut_down() -> None:
    fake = Fake(lambda _r: httpx.Response(400, json={"error": "x" * 5000 + "\n<script>"}))
    with pytest.raises(OAuthError) as info:
        await exchange("google", fake)
    assert info.value.error == "x" * 64

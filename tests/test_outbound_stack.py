"""The one outbound HTTP stack (``grantvault_server.outbound``): every call the server makes to
a third party goes through one pooled client per vault, with one URL rule, no redirects
unless asked, and bounded time and size; Basic client credentials are form-encoded once.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from grantvault_server.config import Settings
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.identity import discovery as identity_discovery
from grantvault_server.oauth.client import (
    ClientCredentials,
    OAuthClient,
    OAuthError,
    check_endpoint as oauth_check_endpoint,
)
from grantvault_server.outbound import oauth2, oidc, urls
from grantvault_server.outbound.http import FetchError, OutboundClient, OutboundError, fetch_json
from grantvault_server.providers import hosts
from grantvault_server.providers.oauth_catalog import get_oauth_provider
from grantvault_server.providers.oauth_schema import check_url as schema_check_url
from grantvault_server.services.connect import check_origin, check_return_url
from grantvault_server.services.oauth_providers import custom_spec
from grantvault_server.services.vault import Vault

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder(httpx.AsyncBaseTransport):
    """A fake third party that records every request it receives."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return self.handler(request)


def client_for(handler: Handler, allow: list[str] | None = None) -> tuple[OutboundClient, Recorder]:
    transport = Recorder(handler)
    return OutboundClient(allow or [], transport=transport), transport


# -- one client per vault -----------------------------------------------------------------


async def test_one_pooled_client_per_vault_shared_by_oauth_and_identity(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(os.urandom(32)).decode(),
        allow_http_hosts=["127.0.0.1"],
    )
    vault = await Vault.start(settings, migrate_schema=True)
    try:
        http = vault.http
        assert vault.http is http  # reused, never one per call
        assert vault.oauth.http is http  # the provider client sends through it
        assert vault.identity.http() is http  # so do the identity key caches
        assert vault.identity.jwks_for("https://idp.example/jwks")._http() is http
        assert http.allowance.admits("127.0.0.1", 8080) and not http.allowance.admits("x", 80)
        assert http._http._trust_env is False
        assert http._http.follow_redirects is False
    finally:
        await vault.close()
    assert http.closed  # closed with the vault


# -- redirects ----------------------------------------------------------------------------


async def test_redirects_are_not_followed_unless_asked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "https://other.example/final"})
        return httpx.Response(200, json={"ok": True})

    client, seen = client_for(handler)
    try:
        answer = await client.send("GET", "https://idp.example/start")
        assert answer.status == 302 and len(seen.requests) == 1
        with pytest.raises(FetchError, match="redirect"):
            await fetch_json("https://idp.example/start", "JWKS endpoint", client=client)
        assert len(seen.requests) == 2
        # Asked for: followed, and the credential is not carried to the other origin.
        answer = await client.send(
            "GET",
            "https://idp.example/start",
            headers={"Authorization": "Bearer at"},
            max_redirects=1,
        )
        assert answer.status == 200 and answer.url == "https://other.example/final"
        assert "authorization" not in seen.requests[-1].headers
    finally:
        await client.aclose()


async def test_a_redirect_to_plain_http_is_refused_even_when_asked() -> None:
    client, seen = client_for(
        lambda _r: httpx.Response(302, headers={"location": "http://evil.example/"})
    )
    try:
        with pytest.raises(OutboundError) as caught:
            await client.send("GET", "https://idp.example/start", max_redirects=3)
        assert caught.value.kind == "redirect" and len(seen.requests) == 1
    finally:
        await client.aclose()


async def test_the_oauth_token_endpoint_redirect_is_not_followed() -> None:
    transport = Recorder(lambda _r: httpx.Response(307, headers={"location": "https://evil/"}))
    oauth = OAuthClient(transport=transport)
    spec = get_oauth_provider("google")
    assert spec is not None
    try:
        with pytest.raises(OAuthError):
            await oauth.refresh(spec, "https://oauth2.googleapis.com/token", CREDS, "rt")
        assert len(transport.requests) == 1
    finally:
        await oauth.aclose()


# -- byte and time limits -----------------------------------------------------------------


async def test_byte_cap_by_declared_length_and_by_bytes_read() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    cases: list[Handler] = [
        lambda _r: httpx.Response(200, headers={"content-length": "999999"}, content=b"{}"),
        lambda _r: httpx.Response(200, content=endless()),
    ]
    for handler in cases:
        client, _ = client_for(handler)
        try:
            with pytest.raises(OutboundError) as caught:
                await client.send("GET", "https://idp.example/", max_bytes=10_000)
            assert caught.value.kind == "too_large" and caught.value.status == 200
            assert caught.value.maybe_delivered
            with pytest.raises(FetchError, match="larger than 10000 bytes"):
                await fetch_json("https://idp.example/", "JWKS", client=client, max_bytes=10_000)
        finally:
            await client.aclose()


async def test_wall_clock_cap_on_an_answer_that_trickles_in() -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):
            await asyncio.sleep(0.05)  # each read is quick: only a whole-call limit stops it
            yield b" "

    client, _ = client_for(lambda _r: httpx.Response(200, content=trickle()))
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(OutboundError) as caught:
            await client.send("GET", "https://idp.example/", timeout_s=0.3)
        assert caught.value.kind == "timeout" and caught.value.maybe_delivered
        assert loop.time() - started < 2.0
    finally:
        await client.aclose()


# -- one URL rule, one host normalisation ---------------------------------------------------

RULE_CASES = [
    # (url, GRANTVAULT_ALLOW_HTTP_HOSTS, allowed)
    ("https://api.example.com/x", [], True),
    ("http://api.example.com/x", [], False),
    ("http://localhost/x", ["LOCALHOST"], True),
    ("http://LOCALHOST/x", ["localhost"], True),
    ("http://localhost./x", ["localhost"], True),
    ("http://localhost/x", ["localhost."], True),
    ("http://localhost.evil.test/x", ["localhost"], False),
    ("http://127.0.0.1:9000/x", ["127.0.0.1"], True),
    ("http://127.0.0.1:9000/x", ["127.0.0.1:9000"], True),
    ("http://127.0.0.1:9000/x", ["127.0.0.1:9001"], False),
    ("http://127.0.0.1/x", ["127.0.0.1:80"], True),
    ("http://[::1]:8080/x", ["::1"], True),
    ("http://[::1]:8080/x", ["[::1]"], True),
    ("http://[::1]:8080/x", ["[::1]:8080"], True),
    ("http://[::1]:8080/x", ["[::1]:9090"], False),
    ("http://[::1]/x", ["0:0:0:0:0:0:0:1"], True),
    ("http://xn--bcher-kva.test/x", ["bücher.test"], True),
    ("http://xn--bcher-kva.test/x", ["BÜCHER.test."], True),
    ("http://xn--bcher-kva.test/x", ["xn--bcher-kva.test"], True),
    ("http://bucher.test/x", ["bücher.test"], False),
    ("http://anything.test/x", ["*"], False),  # a literal star is not a wildcard
]


def _decisions(url: str, allow: list[str]) -> dict[str, bool]:
    """The plain-http decision of every check that makes one (outbound calls, stored provider
    URLs, credential destinations, Connect's browser destinations)."""
    decisions: dict[str, bool] = {}
    try:
        urls.check_url(url, allow, "endpoint")
        decisions["outbound.check_url"] = True
    except urls.UrlRefused:
        decisions["outbound.check_url"] = False
    try:
        oauth_check_endpoint(url, allow)
        decisions["oauth check_endpoint"] = True
    except OAuthError as exc:
        assert exc.error == "endpoint_not_allowed"
        decisions["oauth check_endpoint"] = False
    try:
        schema_check_url(url, "token_url", http_hosts=allow)
        decisions["provider schema"] = True
    except ValueError as exc:
        assert "GRANTVAULT_ALLOW_HTTP_HOSTS" in str(exc)
        decisions["provider schema"] = False
    for name, check, value in (
        ("connect return_url", check_return_url, url),
        ("connect allowed_origin", check_origin, "{0.scheme}://{0.netloc}".format(urlsplit(url))),
    ):
        try:
            check(value, allow)
            decisions[name] = True
        except InvalidInput as exc:
            assert "https" in exc.message
            decisions[name] = False
    parts = httpx.URL(url)
    host = urls.normalise_host(parts.host)
    if host and ":" not in host:  # credential destinations are host names (no IP literals)
        rule = f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        try:
            hosts.check_destination(url, [rule], allow_http_hosts=allow)
            decisions["credential destination"] = True
        except VaultError as exc:
            assert "Plain http" in exc.message, exc.message
            decisions["credential destination"] = False
    return decisions


@pytest.mark.parametrize(("url", "allow", "allowed"), RULE_CASES)
def test_the_http_rule_is_identical_everywhere(url: str, allow: list[str], allowed: bool) -> None:
    decisions = _decisions(url, allow)
    assert decisions == dict.fromkeys(decisions, allowed)


@pytest.mark.parametrize(("url", "allow", "allowed"), RULE_CASES)
async def test_the_client_and_discovery_apply_the_same_rule(
    url: str, allow: list[str], allowed: bool
) -> None:
    client, seen = client_for(lambda _r: httpx.Response(200, json={}), allow)
    try:
        if allowed:
            assert (await client.send("GET", url)).status == 200
        else:
            with pytest.raises(urls.UrlRefused, match="GRANTVAULT_ALLOW_HTTP_HOSTS"):
                await client.send("GET", url)
            assert not seen.requests  # refused before anything was sent
            with pytest.raises(oidc.DiscoveryError) as caught:
                await oidc.discover(client, url.rsplit("/", 1)[0])
            assert caught.value.code == "endpoint_not_allowed"
    finally:
        await client.aclose()


async def test_discovery_checks_every_endpoint_it_names() -> None:
    doc = {
        "issuer": "https://idp.example",
        "jwks_uri": "https://idp.example/jwks",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "http://idp.example/token",  # plain http, not allowed
    }
    client, _ = client_for(lambda _r: httpx.Response(200, json=doc))
    try:
        with pytest.raises(oidc.DiscoveryError, match="token_endpoint"):
            await oidc.discover(client, "https://idp.example")
        oauth = OAuthClient(http=client)
        with pytest.raises(OAuthError) as caught:  # the CLI's custom-OIDC path: the same
            await oauth.discover("https://idp.example")
        assert caught.value.error == "endpoint_not_allowed"
        with pytest.raises(identity_discovery.DiscoveryError, match="token_endpoint"):
            await identity_discovery.discover("https://idp.example", [], http=client)
    finally:
        await client.aclose()


# -- client authentication ----------------------------------------------------------------

CREDS = ClientCredentials("client 1", "s3cret+/=&: é")


def _basic(header: str) -> tuple[str, str]:
    user, _, password = base64.b64decode(header.split()[1]).decode().partition(":")
    return user, password


def test_basic_credentials_are_form_encoded_per_rfc_6749() -> None:
    header = oauth2.basic_credentials("client 1", "s3cret+/=&: é")
    # Appendix B: space as '+', every reserved character (':' included) escaped, UTF-8.
    assert _basic(header) == ("client+1", "s3cret%2B%2F%3D%26%3A+%C3%A9")


async def test_provider_and_sign_in_exchanges_authenticate_the_same_way() -> None:
    seen = Recorder(lambda _r: httpx.Response(200, json={"access_token": "at", "id_token": "x"}))
    client = OutboundClient([], transport=seen)
    spec = custom_spec(
        "corp",
        display_name=None,
        authorize_url="https://idp.example/authorize",
        token_url="https://idp.example/token",
        revocation_url=None,
        userinfo_url="https://idp.example/me",
        issuer=None,
        iss_parameter=False,
        api_hosts=["idp.example"],
        api_base_url=None,
        scopes=[],
        token_auth_method="client_secret_basic",
    )
    try:
        await OAuthClient(http=client).exchange_code(
            spec,
            "https://idp.example/token",
            CREDS,
            code="c",
            redirect_uri="https://v/cb",
            verifier="v" * 43,
        )
        # What the sign-in broker sends for an IdP advertising client_secret_basic.
        method = oauth2.auth_method_for(["client_secret_basic", "client_secret_post"])
        await oauth2.exchange_code(
            client,
            "https://idp.example/token",
            oauth2.ClientAuth("client 1", "s3cret+/=&: é", method),
            code="c",
            redirect_uri="https://v/cb",
            verifier="v" * 43,
        )
    finally:
        await client.aclose()
    provider, signin = seen.requests
    assert provider.headers["authorization"] == signin.headers["authorization"]
    assert _basic(provider.headers["authorization"]) == ("client+1", "s3cret%2B%2F%3D%26%3A+%C3%A9")
    for request in (provider, signin):
        form = httpx.QueryParams(request.content.decode())
        assert form["grant_type"] == "authorization_code" and form["code_verifier"] == "v" * 43
        assert "client_secret" not in form


def test_client_authentication_methods() -> None:
    assert oauth2.auth_method_for(None) == "client_secret_basic"
    assert oauth2.auth_method_for(["client_secret_post"]) == "client_secret_post"
    with pytest.raises(oauth2.UnsupportedAuthMethods):
        oauth2.auth_method_for(["private_key_jwt"])
    form: dict[str, str] = {}
    headers: dict[str, str] = {}
    oauth2.ClientAuth("id", "secret", "client_secret_post").apply(form, headers)
    assert form == {"client_id": "id", "client_secret": "secret"} and not headers
    form, headers = {}, {}
    oauth2.ClientAuth("id", None).apply(form, headers)  # a public client
    assert form == {"client_id": "id"} and not headers
    verifier, challenge = oauth2.pkce_pair()
    assert len(verifier) == 43 and oauth2.pkce_challenge(verifier) == challenge

"""Drive a Connect flow like a browser: the vault's pages in-process, the real peer over HTTP.

The browser is one ``httpx.AsyncClient`` with a cookie jar. Requests for the vault's public
URL go to the ASGI app; everything else (the peer) goes over the network. Redirects are
followed by hand so tests can stop, tamper or replay at any step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from grantvault_server.services import apps as app_service, oauth_providers
from grantvault_server.services.vault import Vault

from .peer import BASIC_CLIENT, VAULT_BASE_URL, Peer

OPERATOR = {"type": "operator", "via": "test", "user": "pytest"}
SCOPES = ["openid", "email", "profile", "offline_access"]


async def register_peer(
    vault: Vault,
    app: app_service.App,
    peer: Peer,
    provider_id: str = "peer",
    client: tuple[str, str] = BASIC_CLIENT,
) -> oauth_providers.ProviderConfig:
    """Register the peer as a custom OIDC provider of ``app`` (found by discovery)."""
    doc = await vault.oauth.discover(peer.issuer)
    spec = oauth_providers.spec_from_discovery(
        provider_id,
        doc,
        display_name=f"Peer {provider_id}",
        api_hosts=[f"127.0.0.1:{peer.port}"],
        api_base_url=None,
        scopes=SCOPES,
        account_field=None,
        allow_http_hosts=vault.settings.allow_http_hosts,
    )
    return await oauth_providers.add_provider(
        vault, app, provider_id, OPERATOR, client_id=client[0], client_secret=client[1], spec=spec
    )


def browser_for(asgi_app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        mounts={VAULT_BASE_URL: httpx.ASGITransport(app=asgi_app)},
        timeout=15,
        follow_redirects=False,
    )


def with_query(url: str, **extra: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(extra)
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Step:
    response: httpx.Response
    url: str


async def follow(
    browser: httpx.AsyncClient,
    url: str,
    *,
    user: str = "alice",
    decision: str | None = None,
    stop: str | None = None,
) -> Step:
    """GET ``url`` and follow redirects; at the peer's interaction pages log in as ``user``.

    Stops at a non-redirect answer, or before requesting a URL starting with ``stop``.
    """
    for _ in range(20):
        if stop is not None and url.startswith(stop):
            return Step(httpx.Response(0), url)
        if "/interaction/" in url:
            extra = {"user": user}
            if decision is not None:
                extra["decision"] = decision
            url = with_query(url, **extra)
        r = await browser.get(url)
        if r.status_code not in (302, 303):
            return Step(r, url)
        url = urljoin(url, r.headers["location"])
    raise AssertionError("too many redirects")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def session_id_of(url: str) -> str:
    match = re.search(r"/connect/s/([0-9a-f-]{36})", url)
    assert match, url
    return match.group(1)


async def consent_page(browser: httpx.AsyncClient, connect_url: str) -> Step:
    step = await follow(browser, connect_url)
    assert step.response.status_code == 200, step.response.text[:500]
    return step


async def approve(
    browser: httpx.AsyncClient,
    connect_url: str,
    *,
    provider: str = "peer",
    user: str = "alice",
    ttl: int | None = None,
    decision: str | None = None,
    stop_at_callback: bool = False,
) -> Step:
    """Open the session, agree on the consent page, sign in at the peer, come back."""
    step = await consent_page(browser, connect_url)
    sid = session_id_of(step.url)
    form = {"csrf": csrf_of(step.response.text), "provider": provider}
    if ttl is not None:
        form["ttl"] = str(ttl)
    r = await browser.post(f"{VAULT_BASE_URL}/connect/s/{sid}/authorize", data=form)
    assert r.status_code == 303, r.text[:500]
    stop = f"{VAULT_BASE_URL}/sdk/oauth/callback" if stop_at_callback else None
    return await follow(browser, r.headers["location"], user=user, decision=decision, stop=stop)

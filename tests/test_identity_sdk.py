"""The unmodified public ``alter-sdk`` client against a real ``grantvault serve``: brokered
sign-in (``create_auth_session`` / ``poll_auth_session``), ``verify_user_token`` and
deprovisioning, with the real OIDC peer as the app's IdP. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from alter_sdk import App

from .e2e.conftest import free_port, running_server, server_env
from .peer import BASIC_CLIENT
from .test_identity_support import start_idp_peer

pytestmark = pytest.mark.e2e


async def test_alter_sdk_signs_a_user_in_and_verifies_their_token(
    tmp_path: Path, database_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    peer = start_idp_peer(tmp_path, PEER_REDIRECT_URIS=f"{base}/sdk/auth/callback")
    env = server_env(tmp_path, database_url, backend, port, GRANTVAULT_PUBLIC_BASE_URL=base)
    try:
        with running_server(env, tmp_path / "server.log", migrate=backend == "postgresql") as srv:
            name = f"demo-{uuid.uuid4().hex[:6]}"
            srv.cli_json("apps", "create", name)
            key = srv.cli_json("keys", "create", "--app", name)["api_key"]
            srv.cli_json(
                "idp", "set", "--app", name, "--issuer", peer.issuer, "--audience", "vault-basic",
                "--client-id", BASIC_CLIENT[0], "--client-secret-stdin", stdin=BASIC_CLIENT[1],
            )  # fmt: skip
            monkeypatch.setenv("ALTER_BASE_URL", base)
            async with App(api_key=key) as sdk:
                session = await sdk.create_auth_session()
                assert session.auth_url.startswith(f"{base}/sdk/auth/start?")
                # The user's browser: vault -> peer (login) -> vault callback -> result page.
                with httpx.Client(timeout=10) as browser:
                    page = browser.get(f"{session.auth_url}&login_hint=nina", follow_redirects=True)
                assert page.status_code == 200 and "You are signed in" in page.text
                result = await sdk.poll_auth_session(session.session_token, timeout=20)
                assert result.user_info["sub"] == "nina"
                assert await sdk.verify_user_token(result.user_token) == "nina"
                assert await sdk.verify_user_token(result.user_token[:-6] + "AAAAAA") is None
                assert await sdk.verify_user_token(peer.forge(peer.claims(aud="other"))) is None
                srv.cli("users", "disable", "nina", "--app", name)
                assert await sdk.verify_user_token(result.user_token) is None
    finally:
        peer.stop()

"""Outbound TLS against a real HTTPS server whose certificate comes from a private CA.

The case this guards: a GitHub Enterprise Server or an IdP behind a company CA. Without
``GRANTVAULT_CA_BUNDLE`` every outbound call must fail (and say how to fix it); with it, the
provider client (discovery, token, revocation, account lookup) and the identity fetches
(discovery, JWKS) must all succeed, through one context built once.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grantvault_server import outbound
from grantvault_server.config import ConfigError, Settings, load_settings
from grantvault_server.identity import discovery
from grantvault_server.oauth.client import ClientCredentials, OAuthClient, OAuthError
from grantvault_server.outbound.http import fetch_json
from grantvault_server.services.oauth_providers import custom_spec
from grantvault_server.services.vault import Vault


@dataclass(frozen=True)
class Pki:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_pki(folder: Path) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Grantvault Test Internal CA"))
        .issuer_name(_name("Grantvault Test Internal CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


class _Handler(BaseHTTPRequestHandler):
    """A tiny OIDC provider: discovery, JWKS, token and revocation endpoints."""

    issuer = ""

    def _json(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/.well-known/openid-configuration":
            self._json(
                200,
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "revocation_endpoint": f"{self.issuer}/revoke",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "id_token_signing_alg_values_supported": ["ES256"],
                },
            )
        elif self.path == "/jwks":
            self._json(200, {"keys": []})
        elif self.path == "/userinfo":
            self._json(200, {"sub": "octocat"})
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/token":
            self._json(200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60})
        elif self.path == "/revoke":
            self._json(200, {})
        else:
            self._json(404, {"error": "not_found"})

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is not the place for access lines."""


@dataclass(frozen=True)
class Server:
    issuer: str
    pki: Pki


@pytest.fixture(scope="module")
def internal_ca_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pki = _make_pki(tmp_path_factory.mktemp("pki"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_pem, pki.key_pem)
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    handler.issuer = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(handler.issuer, pki)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _restore_outbound() -> Iterator[None]:
    """Each test sets the process's outbound trust; put back what was there."""
    saved = outbound._configured
    yield
    outbound._configured = saved


def _settings_with(tmp_path: Path, **kw: object) -> None:
    load_settings(data_dir=tmp_path / "data", **kw)


async def test_without_the_bundle_every_outbound_call_fails_and_says_what_to_set(
    internal_ca_server: Server, tmp_path: Path
) -> None:
    _settings_with(tmp_path)  # no GRANTVAULT_CA_BUNDLE: public roots only
    client = OAuthClient()
    try:
        with pytest.raises(OAuthError) as caught:
            await client.discover(internal_ca_server.issuer)
    finally:
        await client.aclose()
    assert caught.value.error == "network_error" and caught.value.transient
    assert "GRANTVAULT_CA_BUNDLE" in caught.value.description
    assert "Error" not in caught.value.description  # no exception class names
    with pytest.raises(discovery.DiscoveryError) as idp:
        await discovery.discover(internal_ca_server.issuer, [])
    assert "certificate is not trusted" in str(idp.value)
    assert "GRANTVAULT_CA_BUNDLE" in str(idp.value) and "ConnectError" not in str(idp.value)


async def test_with_the_bundle_providers_discovery_jwks_and_revocation_succeed(
    internal_ca_server: Server, tmp_path: Path
) -> None:
    issuer = internal_ca_server.issuer
    _settings_with(tmp_path, ca_bundle=internal_ca_server.pki.ca_pem)
    context = outbound.tls_context()
    assert outbound.tls_context() is context  # built once, shared by every client
    client = OAuthClient()
    try:
        doc = await client.discover(issuer)
        assert doc["token_endpoint"] == f"{issuer}/token"
        port = issuer.rsplit(":", 1)[1]
        spec = custom_spec(
            "corp",
            display_name="Corp GHES",
            authorize_url=f"{issuer}/authorize",
            token_url=f"{issuer}/token",
            revocation_url=f"{issuer}/revoke",
            userinfo_url=f"{issuer}/userinfo",
            issuer=None,
            iss_parameter=False,
            api_hosts=[f"127.0.0.1:{port}"],
            api_base_url=None,
            scopes=[],
        )
        creds = ClientCredentials("cid", "csecret")
        tokens = await client.exchange_code(
            spec, f"{issuer}/token", creds, code="c", redirect_uri="https://v/cb", verifier=None
        )
        assert tokens.access_token == "at-1"
        assert await client.fetch_json("GET", f"{issuer}/userinfo", "at-1") == {"sub": "octocat"}
        await client.revoke(spec, f"{issuer}/revoke", creds, "at-1", "access_token")
    finally:
        await client.aclose()
    found = await discovery.discover(issuer, [])
    assert found.jwks_uri == f"{issuer}/jwks"
    jwks = await fetch_json(found.jwks_uri, "JWKS endpoint")
    assert jwks.status == 200 and jwks.body == {"keys": []}


async def test_public_roots_stay_trusted_beside_the_bundle(
    internal_ca_server: Server,
) -> None:
    """The bundle is added to the public roots, not a replacement for them."""
    with_bundle = outbound.build_context(internal_ca_server.pki.ca_pem)
    public = outbound.build_context(None)
    assert with_bundle.cert_store_stats()["x509_ca"] == public.cert_store_stats()["x509_ca"] + 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "is not a file"),
        (b"not a certificate\n", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be parsed"),
    ],
)
def test_a_bad_bundle_stops_start_up_with_one_clear_message(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        _settings_with(tmp_path, ca_bundle=path)
    assert "GRANTVAULT_CA_BUNDLE" in str(caught.value) and expected in str(caught.value)


# -- review: the vault's own settings, not a process-wide side effect; no environment --------


async def test_a_settings_built_directly_is_honoured_by_the_vaults_clients(
    internal_ca_server: Server, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(os.urandom(32)).decode(),  # type: ignore[arg-type]
        ca_bundle=internal_ca_server.pki.ca_pem,
    )
    vault = await Vault.start(settings, migrate_schema=True)
    try:
        outbound._configured = None  # whatever the process default says: public roots
        assert vault.tls_context is outbound.context_for(internal_ca_server.pki.ca_pem)
        doc = await vault.oauth.discover(internal_ca_server.issuer)
        assert doc["issuer"] == internal_ca_server.issuer
        found = await discovery.discover(internal_ca_server.issuer, [], verify=vault.tls_context)
        assert found.jwks_uri.endswith("/jwks")
    finally:
        await vault.close()


async def test_identity_fetches_ignore_proxy_variables(
    internal_ca_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a proxy that is not there
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    context = outbound.context_for(internal_ca_server.pki.ca_pem)
    fetched = await fetch_json(f"{internal_ca_server.issuer}/jwks", "JWKS", verify=context)
    assert fetched.status == 200


def test_ca_variables_of_other_tools_are_named_at_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/corp.pem")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with caplog.at_level(logging.WARNING, logger="grantvault_server.outbound"):
        assert outbound.warn_ignored_environment(None) == ["SSL_CERT_FILE"]
    assert "GRANTVAULT_CA_BUNDLE" in caplog.text and "SSL_CERT_FILE" in caplog.text
    assert outbound.warn_ignored_environment(tmp_path / "ca.pem") == []


def test_an_empty_ca_bundle_variable_means_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRANTVAULT_CA_BUNDLE", "")
    assert load_settings(data_dir=tmp_path / "data").ca_bundle is None

"""The traps a new operator fell into with the CLI, each pinned by what they should see.

From the black-box review (issue 9, item 12): a GitHub Enterprise test server on plain http
refused through ``--override`` although its host was allowed; an ``api_hosts`` refusal that
did not say the port was missing; a redirect URI printed as a placeholder; a refused http URL
that did not name the setting that allows it; ``serve`` printing "listening" on a port it
could not bind; no ``--version``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grantvault_server.cli.main import cli

runner = CliRunner()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in (
        "GRANTVAULT_DATABASE_URL",
        "GRANTVAULT_MASTER_KEY",
        "GRANTVAULT_MASTER_KEY_FILE",
        "GRANTVAULT_PUBLIC_BASE_URL",
        "GRANTVAULT_HOST",
        "GRANTVAULT_PORT",
        "GRANTVAULT_CA_BUNDLE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", "127.0.0.1")
    data = tmp_path / "data"
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(data))
    assert invoke("apps", "create", "demo", "--json")[0] == 0
    return data


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _add(*args: str) -> tuple[int, str, str]:
    return invoke(
        "providers", "add", "--app", "demo", *args, "--client-id", "cid", "--client-secret-stdin",
        stdin="csecret",
    )  # fmt: skip


def test_override_urls_follow_the_plain_http_rule_of_custom_providers(embedded: Path) -> None:
    code, out, err = _add(
        "github",
        "--override", "authorize_url=http://127.0.0.1:9000/login/oauth/authorize",
        "--override", "token_url=http://127.0.0.1:9000/login/oauth/access_token",
        "--override", "api_base_url=http://127.0.0.1:9000/api/v3",
        "--api-host", "127.0.0.1:9000",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["token_url"] == "http://127.0.0.1:9000/login/oauth/access_token"
    # A host not in GRANTVAULT_ALLOW_HTTP_HOSTS is still refused, and the message says why.
    code, _, err = _add("gitlab", "--override", "token_url=http://10.0.0.1/oauth/token")
    assert code != 0 and "GRANTVAULT_ALLOW_HTTP_HOSTS" in err


def test_a_refused_plain_http_url_names_the_setting_that_allows_it(embedded: Path) -> None:
    code, _, err = _add(
        "corp",
        "--authorize-url", "http://10.0.0.1/authorize",
        "--token-url", "http://10.0.0.1/token",
        "--userinfo-url", "http://10.0.0.1/user",
        "--api-host", "10.0.0.1",
    )  # fmt: skip
    assert code == 1
    assert "GRANTVAULT_ALLOW_HTTP_HOSTS" in err and "authorize_url" in err
    assert "docs_url" not in err and "Value error" not in err
    code, _, err = invoke(
        "providers", "add", "--app", "demo", "oidc", "--client-id", "c", "--issuer",
        "http://10.0.0.1/realm",
    )  # fmt: skip
    assert code == 1 and "GRANTVAULT_ALLOW_HTTP_HOSTS" in err


def test_the_api_hosts_error_says_when_the_port_is_what_is_missing(embedded: Path) -> None:
    code, _, err = _add(
        "github",
        "--override", "api_base_url=https://ghe.corp.example:8443/api/v3",
        "--api-host", "ghe.corp.example",
    )  # fmt: skip
    assert code == 1
    assert "ghe.corp.example:8443" in err and "port" in err
    code, _, err = _add(
        "github",
        "--override", "api_base_url=https://ghe.corp.example:8443/api/v3",
        "--api-host", "ghe.corp.example:8443",
    )  # fmt: skip
    assert code == 0, err


def test_providers_add_prints_the_real_redirect_uri(
    embedded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = _add("google")
    assert code == 0
    assert "http://127.0.0.1:8080/sdk/oauth/callback" in out.replace("\n", "")
    assert "<GRANTVAULT_PUBLIC_BASE_URL>" not in out and "GRANTVAULT_PUBLIC_BASE_URL" in out
    monkeypatch.setenv("GRANTVAULT_PUBLIC_BASE_URL", "https://vault.example.com/")
    code, out, _ = _add("github", "--json")
    assert code == 0
    assert json.loads(out)["redirect_uri"] == "https://vault.example.com/sdk/oauth/callback"


def test_version() -> None:
    from grantvault_server import __version__

    code, out, _ = invoke("--version")
    assert code == 0 and out.strip() == f"grantvault {__version__}"


def test_serve_reports_a_port_in_use_before_saying_it_listens(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTVAULT_")} | {
            "GRANTVAULT_DATA_DIR": str(tmp_path / "data")
        }
        done = subprocess.run(
            [sys.executable, "-m", "grantvault_server", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {port}" in done.stderr and "already in use" in done.stderr
    assert "listening" not in done.stderr.lower()
    # Nothing was started: not even the embedded database or its master key.
    assert not (tmp_path / "data" / "master.key").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104 - never bound
def test_no_redirect_uri_is_derived_from_a_wildcard_listen_address(
    embedded: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("GRANTVAULT_HOST", host)
    code, out, err = _add("google")
    assert code != 0
    text = (out + err).replace("\n", " ")
    assert "GRANTVAULT_PUBLIC_BASE_URL" in text and "0.0.0.0:8080" not in text
    listed = invoke("providers", "list", "--app", "demo", "--json")[1]
    assert json.loads(listed)["providers"] == []  # refused before anything was stored
    monkeypatch.setenv("GRANTVAULT_HOST", "::1")
    code, out, _ = _add("google", "--json")
    assert code == 0
    assert json.loads(out)["redirect_uri"] == "http://[::1]:8080/sdk/oauth/callback"

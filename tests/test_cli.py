"""The ``grantvault`` command in-process: contracts, errors and exit codes, key files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grantvault_server.cli.main import cli

runner = CliRunner()


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("GRANTVAULT_DATABASE_URL", "GRANTVAULT_MASTER_KEY", "GRANTVAULT_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(data))
    return data


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_help_everywhere() -> None:
    for group in (
        [],
        ["apps"],
        ["keys"],
        ["secrets"],
        ["grants"],
        ["policies"],
        ["operators"],
        ["operators", "token"],
        ["audit"],
        ["master-key"],
        ["db"],
        ["serve"],
    ):
        code, out, _ = invoke(*group, "--help")
        assert code == 0 and "Usage" in out, group


def test_embedded_default_generates_a_private_key_file(embedded: Path) -> None:
    code, out, _ = invoke("apps", "create", "demo", "--json")
    assert code == 0 and json.loads(out)["name"] == "demo"
    key_file = embedded / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Losing the key file with the database still there is refused, not papered over.
    key_file.unlink()
    code, _, err = invoke("apps", "list")
    assert code == 2 and "missing" in err


def test_contract_commands_and_json(embedded: Path) -> None:
    assert invoke("apps", "create", "demo", "--json")[0] == 0
    code, out, _ = invoke("keys", "create", "--app", "demo", "--json")
    key = json.loads(out)
    assert (
        code == 0 and set(key) >= {"key_id", "api_key"} and key["api_key"].startswith("alter_rk_")
    )
    code, out, _ = invoke("secrets", "create", "--app", "demo", "--template", "openai", "--json")
    secret = json.loads(out)
    assert code == 0 and secret["slug"] == "openai" and secret["has_credential"] is False
    code, _, _ = invoke(
        "secrets", "set-credential", secret["managed_secret_id"], "--stdin", stdin="sk-cli-123456"
    )
    assert code == 0
    code, out, _ = invoke(
        "grants",
        "create",
        "--secret",
        secret["managed_secret_id"],
        "--principal",
        "system",
        "--json",
    )
    assert code == 0 and "grant_id" in json.loads(out)
    code, out, _ = invoke("secrets", "list", "--app", "demo", "--json")
    assert json.loads(out)["secrets"][0]["has_credential"] is True and "sk-cli-123456" not in out
    code, out, _ = invoke("keys", "list", "--app", "demo", "--json")
    assert json.loads(out)["keys"][0]["status"] == "active" and key["api_key"] not in out
    # Tables by default.
    code, out, _ = invoke("grants", "list", "--app", "demo")
    assert code == 0 and "Grants (1)" in out
    # Audit export as CSV and verification.
    code, out, _ = invoke("audit", "export", "--app", "demo", "--csv")
    assert code == 0 and out.splitlines()[0].startswith("seq,occurred_at,app,event")
    assert "sk-cli-123456" not in out
    code, out, _ = invoke("audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_errors_are_clear_and_non_zero(embedded: Path) -> None:
    code, _, err = invoke("keys", "create", "--app", "nope")
    assert code == 1 and "No app 'nope'" in err
    assert invoke("apps", "create", "demo")[0] == 0
    code, _, err = invoke("apps", "create", "demo")
    assert code == 1 and "already exists" in err
    code, _, err = invoke("apps", "create", "Bad Name!")
    assert code == 1 and "lowercase" in err
    code, _, err = invoke("secrets", "create", "--app", "demo", "--template", "nosuch")
    assert code == 1 and "Unknown template" in err
    code, _, err = invoke(
        "secrets",
        "create",
        "--app",
        "demo",
        "--auth",
        "header",
        "--header",
        "Host",
        "--slug",
        "x",
        "--allowed-host",
        "a.example",
    )
    assert code == 1 and "cannot carry a credential" in err
    code, _, err = invoke(
        "secrets",
        "create",
        "--app",
        "demo",
        "--auth",
        "bearer",
        "--slug",
        "x",
        "--allowed-host",
        "*.com",
    )
    assert code == 1 and "too broad" in err
    code, out, _ = invoke("secrets", "create", "--app", "demo", "--template", "twilio", "--json")
    secret_id = json.loads(out)["managed_secret_id"]
    code, _, err = invoke("secrets", "set-credential", secret_id, "--stdin", stdin="only-one-value")
    assert code == 1 and "JSON object" in err
    code, _, err = invoke(
        "secrets", "set-credential", secret_id, "--stdin", stdin='{"username": "AC1"}'
    )
    assert code == 1 and "'password' is required" in err
    code, _, err = invoke("secrets", "set-credential", secret_id)
    assert code == 2 and "--stdin" in err
    code, _, err = invoke(
        "secrets", "create", "--app", "demo", "--template", "openai", "--header", "X-Key"
    )
    assert code == 2 and "--template defines the injection" in err
    code, _, err = invoke("grants", "create", "--secret", secret_id, "--principal", "user")
    assert code == 1 and "external id" in err


def test_invalid_configuration_stops_with_one_message(
    embedded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", "[not json")
    code, _, err = invoke("apps", "list")
    assert code == 2 and "ALLOW_HTTP_HOSTS" in err and "Traceback" not in err
    monkeypatch.delenv("GRANTVAULT_ALLOW_HTTP_HOSTS")
    monkeypatch.setenv("GRANTVAULT_PORT", "not-a-port")
    code, _, err = invoke("apps", "list")
    assert code == 2 and "GRANTVAULT_PORT" in err and "Traceback" not in err
    monkeypatch.delenv("GRANTVAULT_PORT")
    monkeypatch.setenv("GRANTVAULT_DATABASE_URL", "mysql://x")
    code, _, err = invoke("apps", "list")
    assert code == 2 and "GRANTVAULT_DATABASE_URL" in err
    monkeypatch.setenv(
        "GRANTVAULT_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1/postgres"
    )
    code, _, err = invoke("apps", "list")
    assert code == 2 and "No master key" in err
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", "dG9vIHNob3J0")
    code, _, err = invoke("apps", "list")
    assert code == 2 and "32 bytes" in err


def test_wrong_master_key_exits_3(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert invoke("apps", "create", "demo")[0] == 0
    code, out, _ = invoke("master-key", "generate")
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", out.strip())
    code, _, err = invoke("apps", "list")
    assert code == 3 and "refusing to start" in err


def test_master_key_rotate_with_key_files(embedded: Path) -> None:
    assert invoke("apps", "create", "demo")[0] == 0
    _, out, _ = invoke("secrets", "create", "--app", "demo", "--template", "openai", "--json")
    secret_id = json.loads(out)["managed_secret_id"]
    assert (
        invoke("secrets", "set-credential", secret_id, "--stdin", stdin="sk-rotate-123456")[0] == 0
    )
    old_key = (embedded / "master.key").read_text()
    code, out, err = invoke("master-key", "rotate", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["complete"] is True and result["rows_reencrypted"] == 2  # credential + audit key
    assert (embedded / "master.key").read_text() != old_key
    assert (embedded / "master.key.prev").read_text() == old_key
    assert stat.S_IMODE((embedded / "master.key").stat().st_mode) == 0o600
    # The vault opens with the new key file; retiring the old key completes the rotation.
    code, out, err = invoke("master-key", "retire-old", "--json")
    assert code == 0, err
    code, out, _ = invoke(
        "audit", "list", "--app", "system", "--event", "master_key.rotated", "--json"
    )
    assert code == 0 and len(json.loads(out)["events"]) == 1
    assert invoke("audit", "verify")[0] == 0


def test_show_and_delete_a_secret(embedded: Path) -> None:
    assert invoke("apps", "create", "demo")[0] == 0
    _, out, _ = invoke("secrets", "create", "--app", "demo", "--template", "datadog", "--json")
    secret_id = json.loads(out)["managed_secret_id"]
    assert (
        invoke(
            "secrets", "set-credential", secret_id, "--stdin", stdin='{"token": "dd-api-123456"}'
        )[0]
        == 0
    )
    assert invoke("grants", "create", "--secret", secret_id)[0] == 0
    code, out, _ = invoke("secrets", "show", secret_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["injection"]["header"] == "DD-API-KEY" and "dd-api-123456" not in out
    assert invoke("secrets", "delete", secret_id)[0] == 2
    code, out, _ = invoke("secrets", "delete", secret_id, "--yes", "--json")
    assert code == 0 and json.loads(out)["active_grants_removed"] == 1
    assert invoke("secrets", "show", secret_id)[0] == 1
    _, out, _ = invoke("audit", "list", "--app", "demo", "--event", "secret.deleted", "--json")
    assert len(json.loads(out)["events"]) == 1


def test_allow_http_hosts_accepts_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    from grantvault_server.config import load_settings

    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", "127.0.0.1, localhost")
    assert load_settings().allow_http_hosts == ["127.0.0.1", "localhost"]
    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", '["127.0.0.1"]')
    assert load_settings().allow_http_hosts == ["127.0.0.1"]


def test_audit_verify_with_an_anchor_file(embedded: Path, tmp_path: Path) -> None:
    assert invoke("apps", "create", "demo")[0] == 0
    code, out, _ = invoke("audit", "verify", "--json")
    anchor = tmp_path / "anchor.json"
    anchor.write_text(out)
    assert invoke("audit", "verify", "--anchor", str(anchor))[0] == 0
    anchor.write_text("{not json")
    code, _, err = invoke("audit", "verify", "--anchor", str(anchor))
    assert code == 2 and "cannot read the anchor" in err

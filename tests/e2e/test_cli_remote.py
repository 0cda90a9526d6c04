"""``grantvault operators`` and the CLI driving a remote vault (issue 12).

The CLI runs in-process (CliRunner) against the embedded database; the remote mode talks to a
real ``grantvault serve`` on the same data directory, so both modes see the same vault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from grantvault_server.cli.main import cli
from tests.e2e.conftest import free_port, running_server, server_env

PASSWORD = "correct-stapler-orbit-47"


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def local_env(tmp_path: Path, database_url: str, backend: str) -> dict[str, str]:
    """The CLI's environment on this machine: the server's database, no remote target."""
    env = server_env(tmp_path, database_url, backend, free_port())
    return {**env, "GRANTVAULT_SERVER": "", "GRANTVAULT_TOKEN": ""}


@pytest.fixture
def server(local_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A real ``grantvault serve`` on the same database as the local CLI."""
    with running_server(local_env, tmp_path / "server.log", migrate=True) as srv:
        yield srv.base_url


def _json(code: int, out: str, err: str) -> dict[str, Any]:
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_first_owner_then_a_token_then_remote_commands(
    local_env: dict[str, str], server: str
) -> None:
    alice = _json(
        *invoke(
            local_env,
            "operators",
            "create",
            "alice",
            "--role",
            "owner",
            "--password-stdin",
            "--json",
            stdin=PASSWORD + "\n",
        )
    )
    assert alice["role"] == "owner" and alice["password"] is True and PASSWORD not in str(alice)
    token = _json(
        *invoke(local_env, "operators", "token", "create", "alice", "--name", "ci", "--json")
    )
    assert token["token"].startswith("gvat_")
    remote = {**local_env, "GRANTVAULT_SERVER": server, "GRANTVAULT_TOKEN": token["token"]}
    created = _json(*invoke(remote, "apps", "create", "demo", "--json"))
    # The same vault from both sides, the same JSON.
    assert _json(*invoke(remote, "apps", "list", "--json")) == _json(
        *invoke(local_env, "apps", "list", "--json")
    )
    assert created["name"] == "demo"
    key = _json(*invoke(remote, "keys", "create", "--app", "demo", "--json"))
    assert _json(*invoke(remote, "keys", "list", "--app", "demo", "--json")) == _json(
        *invoke(local_env, "keys", "list", "--app", "demo", "--json")
    )
    assert key["api_key"].startswith("alter_rk_")
    # The token list never shows a token again.
    listed = invoke(remote, "operators", "token", "list", "--json")
    assert token["token"] not in listed[1] and json.loads(listed[1])["tokens"][0]["name"] == "ci"


def test_remote_errors_read_like_local_ones(local_env: dict[str, str], server: str) -> None:
    invoke(
        local_env,
        "operators",
        "create",
        "root",
        "--role",
        "owner",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    invoke(
        local_env,
        "operators",
        "create",
        "audra",
        "--role",
        "auditor",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    token = _json(
        *invoke(local_env, "operators", "token", "create", "audra", "--name", "t", "--json")
    )
    remote = {**local_env, "GRANTVAULT_SERVER": server, "GRANTVAULT_TOKEN": token["token"]}
    code, _, err = invoke(remote, "apps", "create", "nope")
    assert code == 1 and "auditor role may not" in err
    missing_local = invoke(local_env, "keys", "list", "--app", "ghost")
    missing_remote = invoke(remote, "keys", "list", "--app", "ghost")
    assert missing_local[0] == missing_remote[0] == 1
    assert missing_local[2] == missing_remote[2]
    bad = {**remote, "GRANTVAULT_TOKEN": "gvat_wrong"}
    code, _, err = invoke(bad, "apps", "list")
    assert code == 1 and "not valid" in err
    half = {**local_env, "GRANTVAULT_SERVER": server}
    code, _, err = invoke(half, "apps", "list")
    assert code == 2 and "GRANTVAULT_TOKEN is not set" in err


def test_weak_passwords_and_missing_input_are_refused(local_env: dict[str, str]) -> None:
    code, _, err = invoke(
        local_env,
        "operators",
        "create",
        "bob",
        "--role",
        "admin",
        "--password-stdin",
        stdin="password1234\n",
    )
    assert code == 1 and "common passwords" in err
    code, _, err = invoke(local_env, "operators", "create", "bob", "--role", "admin")
    assert code == 2 and "--password-stdin" in err
    code, _, err = invoke(
        local_env,
        "operators",
        "create",
        "bob",
        "--role",
        "wizard",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 1 and "Unknown role" in err

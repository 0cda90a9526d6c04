"""The CLI's remote mode prints the same ``--json`` as its local mode, for every command
(issue 12: "the CLI remote mode producing the same --json output as the local mode for every
command (one parametrised test)").

One real ``grantvault serve`` for the module (SQLite, the embedded vault) and the CLI in
process (CliRunner) on the same data directory: locally it opens the database, remotely it
goes through the admin API with an owner's token. The commands are enumerated from the Typer
app, so a new command with ``--json`` fails here until it has a case (or is listed as
local-only with the reason).

Reading commands run with the same arguments in both modes and must print the same JSON.
Changing commands run the same change in both modes on two objects of the same kind (names
ending ``-xl`` locally, ``-xr`` remotely, seeded alike) and must print the same keys and the
same values, except what legitimately differs: ids, timestamps, minted secrets, and the names.
Refusals must match too (exit code and message).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from grantvault_server.cli.main import cli
from tests.e2e.conftest import free_port, running_server, server_env
from tests.peer import Peer, start_peer

pytestmark = pytest.mark.e2e

PASSWORD = "correct-stapler-orbit-47"
MODES = ("xl", "xr")

#: Commands that take --json but never go to a remote vault, and why.
LOCAL_ONLY = {
    "master-key rotate": "needs the master key material, which only the server host holds",
    "master-key retire-old": "rewraps data keys with the master key on the server host",
}

POLICY = """description: parity
applies_to:
  secrets: [openai]
rules:
  methods: [GET]
"""


def json_commands() -> list[str]:
    """Every CLI command that takes ``--json``, as ``"group sub"`` paths."""
    found: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                walk(sub, [*path, name])
        elif any("--json" in getattr(p, "opts", ()) for p in command.params):
            found.append(" ".join(path))

    walk(typer.main.get_command(cli), [])
    return found


@dataclass
class Vault:
    """The module's server, the two environments, and what the seed created."""

    local: dict[str, str]
    remote: dict[str, str]
    issuer: str
    policy_file: Path
    ids: dict[str, str] = field(default_factory=dict)


def invoke(env: dict[str, str], args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> dict[str, Any]:
    code, out, err = invoke(env, [*args, "--json"], stdin)
    assert code == 0, f"{args}: {err}"
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    started = start_peer()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, peer: Peer) -> Iterator[Vault]:
    tmp = tmp_path_factory.mktemp("parity")
    env = {**server_env(tmp, "", "sqlite", free_port()), "GRANTVAULT_SERVER": ""}
    env["GRANTVAULT_TOKEN"] = ""
    with running_server(env, tmp / "server.log", migrate=True) as srv:
        ok(env, "operators", "create", "root", "--role", "owner", "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
        token = ok(env, "operators", "token", "create", "root", "--name", "parity")["token"]
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(POLICY)
        v = Vault(
            env, {**env, "GRANTVAULT_SERVER": srv.base_url, "GRANTVAULT_TOKEN": token},
            peer.issuer, policy_file,
        )  # fmt: skip
        seed(v)
        yield v


def operator(env: dict[str, str], name: str) -> None:
    ok(env, "operators", "create", name, "--role", "auditor", "--password-stdin",
       stdin=PASSWORD + "\n")  # fmt: skip


def seed(v: Vault) -> None:
    """The objects the reading commands show, and one per mode for each changing command."""
    env, ids = v.local, v.ids
    ok(env, "apps", "create", "demo")
    secret = ok(env, "secrets", "create", "--app", "demo", "--template", "openai")
    ids["secret"] = secret["managed_secret_id"]
    ok(env, "secrets", "set-credential", ids["secret"], "--stdin", stdin="sk-parity-0\n")
    ids["grant"] = ok(env, "grants", "create", "--secret", ids["secret"])["grant_id"]
    ids["key"] = ok(env, "keys", "create", "--app", "demo", "--name", "ci")["key_id"]
    ok(env, "policies", "put", "--app", "demo", "shown", "--file", str(v.policy_file))
    ok(env, "providers", "add", "github", "--app", "demo", "--client-id", "cid",
       "--client-secret-stdin", stdin="client-secret-0\n")  # fmt: skip
    ok(env, "idp", "set", "--app", "demo", "--issuer", v.issuer, "--audience", "vault")
    operator(env, "shown")
    for m in MODES:
        for purpose in ("exp", "rev", "rot"):
            made = ok(env, "keys", "create", "--app", "demo", "--name", f"{purpose}-{m}")
            ids[f"key-{purpose}-{m}"] = made["key_id"]
        ids[f"grant-{m}"] = ok(
            env, "grants", "create", "--secret", ids["secret"], "--label", f"g-{m}"
        )["grant_id"]
        for purpose in ("del", "cred"):
            made = ok(
                env, "secrets", "create", "--app", "demo", "--template", "openai",
                "--slug", f"{purpose}-{m}",
            )  # fmt: skip
            ids[f"secret-{purpose}-{m}"] = made["managed_secret_id"]
        ok(env, "policies", "put", "--app", "demo", f"del-{m}", "--file", str(v.policy_file))
        for name in (f"prov-{m}", f"provrm-{m}", f"idp-{m}", f"whk-{m}"):
            ok(env, "apps", "create", name)
        ok(env, "providers", "add", "github", "--app", f"provrm-{m}", "--client-id", "cid",
           "--client-secret-stdin", stdin="client-secret-0\n")  # fmt: skip
        ok(env, "idp", "set", "--app", f"whk-{m}", "--issuer", v.issuer, "--audience", "vault")
        for purpose in ("del", "unl", "upd"):
            operator(env, f"{purpose}-{m}")
        made = ok(env, "operators", "token", "create", "shown", "--name", f"rev-{m}")
        ids[f"token-{m}"] = made["token_id"]


Case = Callable[[Vault, str], tuple[list[str], str | None]]


def same(*args: str) -> Case:
    """A reading command: the same arguments in both modes (``{x}``: a seeded id)."""

    def build(v: Vault, _: str) -> tuple[list[str], str | None]:
        return [a.format(**v.ids) if "{" in a else a for a in args], None

    return build


@dataclass(frozen=True)
class Mode:
    """What a changing command's arguments are made of: the vault and the mode's suffix."""

    v: Vault
    m: str


def per_mode(build: Callable[[Mode], list[str]], stdin: str | None = None) -> Case:
    return lambda v, m: (build(Mode(v, m)), stdin)


CASES: dict[str, Case] = {
    "apps create": per_mode(lambda c: ["apps", "create", f"p-{c.m}"]),
    "apps list": same("apps", "list"),
    "audit export": same("audit", "export", "--app", "demo", "--limit", "20"),
    "audit list": same("audit", "list", "--app", "demo", "--limit", "20"),
    "audit verify": same("audit", "verify", "--app", "demo"),
    "grants create": per_mode(
        lambda c: ["grants", "create", "--secret", c.v.ids["secret"], "--label", f"n-{c.m}"]
    ),
    "grants list": same("grants", "list", "--app", "demo"),
    "grants revoke": per_mode(lambda c: ["grants", "revoke", c.v.ids[f"grant-{c.m}"]]),
    "groups list": same("groups", "list", "--app", "demo"),
    "idp discover": per_mode(
        lambda c: ["idp", "discover", "--app", "demo", "--issuer", c.v.issuer]
    ),
    "idp set": per_mode(
        lambda c: [
            "idp",
            "set",
            "--app",
            f"idp-{c.m}",
            "--issuer",
            c.v.issuer,
            "--audience",
            "vault",
        ]
    ),
    "idp show": same("idp", "show", "--app", "demo"),
    "idp webhook-secret": per_mode(lambda c: ["idp", "webhook-secret", "--app", f"whk-{c.m}"]),
    "keys create": per_mode(lambda c: ["keys", "create", "--app", "demo", "--name", f"k-{c.m}"]),
    "keys expire": per_mode(
        lambda c: ["keys", "expire", c.v.ids[f"key-exp-{c.m}"], "--app", "demo", "--in", "30d"]
    ),
    "keys list": same("keys", "list", "--app", "demo"),
    "keys revoke": per_mode(
        lambda c: ["keys", "revoke", c.v.ids[f"key-rev-{c.m}"], "--app", "demo"]
    ),
    "keys rotate": per_mode(
        lambda c: ["keys", "rotate", c.v.ids[f"key-rot-{c.m}"], "--app", "demo"]
    ),
    "master-key status": same("master-key", "status"),
    "operators create": per_mode(
        lambda c: ["operators", "create", f"new-{c.m}", "--role", "admin", "--password-stdin"],
        stdin=PASSWORD + "\n",
    ),
    "operators delete": per_mode(lambda c: ["operators", "delete", f"del-{c.m}"]),
    "operators list": same("operators", "list"),
    "operators show": same("operators", "show", "shown"),
    "operators token create": per_mode(
        lambda c: ["operators", "token", "create", "shown", "--name", f"t-{c.m}"]
    ),
    "operators token list": same("operators", "token", "list", "shown"),
    "operators token revoke": per_mode(
        lambda c: ["operators", "token", "revoke", c.v.ids[f"token-{c.m}"]]
    ),
    "operators unlock": per_mode(lambda c: ["operators", "unlock", f"unl-{c.m}"]),
    "operators update": per_mode(
        lambda c: ["operators", "update", f"upd-{c.m}", "--role", "admin"]
    ),
    "policies delete": per_mode(lambda c: ["policies", "delete", "--app", "demo", f"del-{c.m}"]),
    "policies list": same("policies", "list", "--app", "demo"),
    "policies put": per_mode(
        lambda c: ["policies", "put", "--app", "demo", f"put-{c.m}", "--file", str(c.v.policy_file)]
    ),
    "policies show": same("policies", "show", "--app", "demo", "shown"),
    "policies test": same(
        "policies",
        "test",
        "--app",
        "demo",
        "--grant",
        "{grant}",
        "--url",
        "https://api.openai.com/v1/models",
        "--at",
        "2026-12-07T10:00:00+00:00",
    ),
    "providers add": per_mode(
        lambda c: [
            "providers",
            "add",
            "github",
            "--app",
            f"prov-{c.m}",
            "--client-id",
            "cid",
            "--client-secret-stdin",
        ],
        stdin="client-secret-0\n",
    ),
    "providers catalog": same("providers", "catalog"),
    "providers list": same("providers", "list", "--app", "demo"),
    "providers remove": per_mode(
        lambda c: ["providers", "remove", "github", "--app", f"provrm-{c.m}"]
    ),
    "secrets create": per_mode(
        lambda c: [
            "secrets",
            "create",
            "--app",
            "demo",
            "--template",
            "openai",
            "--slug",
            f"c-{c.m}",
        ]
    ),
    "secrets delete": per_mode(
        lambda c: ["secrets", "delete", c.v.ids[f"secret-del-{c.m}"], "--yes"]
    ),
    "secrets list": same("secrets", "list", "--app", "demo"),
    "secrets set-credential": per_mode(
        lambda c: ["secrets", "set-credential", c.v.ids[f"secret-cred-{c.m}"], "--stdin"],
        stdin="sk-parity-1\n",
    ),
    "secrets show": same("secrets", "show", "{secret}"),
    "secrets templates": same("secrets", "templates"),
    # No user has signed in: both modes must refuse alike, and list nobody alike.
    "users disable": same("users", "disable", "nobody", "--app", "demo"),
    "users enable": same("users", "enable", "nobody", "--app", "demo"),
    "users list": same("users", "list", "--app", "demo"),
}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")
_MINTED = re.compile(r"\b(alter_rk_|gvat_|whsec_)[A-Za-z0-9_-]+")
_MODE = re.compile(r"-x[lr]\b")
#: Keys whose values are minted per object: compared by presence and type only.
_VOLATILE_KEYS = re.compile(
    r"(^|_)(id|ids|at|prefix|secret|token|api_key|hash|head|fingerprint|key)$"
)


def normalise(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, key) for v in value]
    if isinstance(value, str):
        if _VOLATILE_KEYS.search(key):
            return f"<{key}>"
        text = _MINTED.sub(r"\1<minted>", value)
        text = _UUID.sub("<uuid>", text)
        text = _TIME.sub("<time>", text)
        return _MODE.sub("-x?", text)
    return value


def test_every_json_command_has_a_case() -> None:
    commands = set(json_commands())
    assert commands, "no command with --json found: the walk over the Typer app is broken"
    missing = commands - set(CASES) - set(LOCAL_ONLY)
    stale = (set(CASES) | set(LOCAL_ONLY)) - commands
    assert not missing, f"commands with --json without a parity case: {sorted(missing)}"
    assert not stale, f"parity cases for commands that no longer exist: {sorted(stale)}"


@pytest.mark.parametrize("command", sorted(CASES))
def test_remote_json_equals_local_json(vault: Vault, command: str) -> None:
    build = CASES[command]
    results = []
    for mode, env in zip(MODES, (vault.local, vault.remote), strict=True):
        args, stdin = build(vault, mode)
        code, out, err = invoke(env, [*args, "--json"], stdin)
        results.append((code, out, err))
    (lcode, lout, lerr), (rcode, rout, rerr) = results
    assert lcode == rcode, f"exit codes differ: local {lcode} ({lerr}), remote {rcode} ({rerr})"
    assert lcode == 0, f"the case itself is wrong: {lerr}"  # refusals are tested elsewhere
    if lcode != 0:
        assert normalise(lerr) == normalise(rerr)
        return
    local, remote = json.loads(lout), json.loads(rout)
    assert normalise(remote) == normalise(local)

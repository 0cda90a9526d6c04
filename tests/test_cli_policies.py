"""``grantvault policies`` and the policies column of ``grants list``, in-process, on SQLite and
PostgreSQL (the ``settings`` fixture): documents from files and stdin, every validation
problem at once, versions, and ``policies test`` deciding exactly as ``POST /sdk/token`` does
without charging a counter. docs/policies.md is kept truthful here too: every YAML block
validates (or is marked invalid and is refused), and every worked example prints what the
page shows.

Times are given with ``--at`` (and the server's clock is advanced), never slept for.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import Result
from typer.testing import CliRunner

from grantvault_server.cli.main import cli
from grantvault_server.config import Settings
from grantvault_server.identity.claims import Identity
from grantvault_server.policy.compile import compile_policy
from grantvault_server.policy.document import PolicyDocumentError, validate_document
from grantvault_server.services import (
    grants as grant_service,
    policies as policy_service,
    secrets as secret_service,
    tokens,
)
from grantvault_server.services.apps import App
from grantvault_server.services.vault import Vault
from grantvault_server.services.vault_time import FakeClock
from grantvault_server.storage.tables import audit_events, policies, policy_counters

from .conftest import OPERATOR, SignedClient, make_app
from .test_identity_support import IdpPeer, configure, idp_peer_fixture

__all__ = ["idp_peer_fixture"]  # the session fixture, shared with the identity tests

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "policies.md"
URL = "https://api.openai.com/v1/models"
runner = CliRunner()

OFFICE_HOURS = """\
description: OpenAI calls during Berlin office hours.
applies_to:
  secrets: [openai]
rules:
  time_windows:
    timezone: Europe/Berlin
    windows:
      - days: [mon, tue, wed, thu, fri]
        start: "09:00"
        end: "17:00"
"""
OUTSIDE = "outside office-hours: allowed Mon\u2013Fri 09:00\u201317:00 Europe/Berlin"


@pytest.fixture
def shell(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's shell: the test vault's database and master key, in a scratch folder."""
    assert settings.master_key is not None
    monkeypatch.setenv("GRANTVAULT_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("GRANTVAULT_MASTER_KEY", settings.master_key.get_secret_value())
    monkeypatch.setenv("GRANTVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("GRANTVAULT_ALLOW_HTTP_HOSTS", "127.0.0.1")
    monkeypatch.setenv("COLUMNS", "400")  # tables are not cut to a narrow terminal
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def gv(*args: str, stdin: str | None = None) -> Result:
    """One ``grantvault`` command (in a thread: the command runs its own event loop)."""
    return await asyncio.to_thread(runner.invoke, cli, list(args), stdin)


async def gv_json(*args: str, stdin: str | None = None, code: int = 0) -> Any:
    result = await gv(*args, "--json", stdin=stdin)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def clean(result: Result) -> None:
    """Exited on purpose (typer.Exit), not by an exception, and printed no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


async def _grant(
    vault: Vault,
    app: App,
    template: str = "openai",
    principal_type: str = "system",
    principal_id: str | None = None,
) -> str:
    """A grant on the app's secret of ``template`` (created with a credential the first time)."""
    secret = next(
        (s for s, _ in await secret_service.list_secrets(vault, app) if s.slug == template), None
    )
    if secret is None:
        secret = await secret_service.create_secret(vault, app, OPERATOR, template=template)
        await secret_service.set_credential(
            vault, app, secret, {"token": "sk-test-abc123456"}, OPERATOR
        )
    result = await grant_service.create_grant(
        vault, app, secret, OPERATOR, principal_type=principal_type, principal_id=principal_id
    )
    return str(result["grant_id"])


def _test_args(app: App, grant_id: str, *more: str) -> tuple[str, ...]:
    return ("policies", "test", "--app", app.name, "--grant", grant_id, "--url", URL, *more)


# -- put, list, show, delete --------------------------------------------------------------------


async def test_put_from_a_file_and_stdin_then_list_show_and_delete(
    vault: Vault, shell: Path
) -> None:
    app, _ = await make_app(vault)
    (shell / "office-hours.yaml").write_text(OFFICE_HOURS)
    first = await gv_json(
        "policies", "put", "--app", app.name, "office-hours", "--file", "office-hours.yaml"
    )
    assert set(first) == {"policy_id", "name", "version"}
    assert (first["name"], first["version"]) == ("office-hours", 1)
    edited = OFFICE_HOURS.replace('"17:00"', '"18:00"')
    second = await gv_json(
        "policies", "put", "--app", app.name, "office-hours", "--file", "-", stdin=edited
    )
    assert (second["policy_id"], second["version"]) == (first["policy_id"], 2)

    listed = await gv_json("policies", "list", "--app", app.name)
    assert [(p["name"], p["version"]) for p in listed["policies"]] == [("office-hours", 2)]
    assert listed["policies"][0]["applies_to"] == {"secrets": ["openai"]}
    assert listed["policies"][0]["rules"] == ["time_windows"]
    table = await gv("policies", "list", "--app", app.name)
    assert table.exit_code == 0 and "office-hours" in table.stdout
    assert "secrets: openai" in table.stdout

    # show prints the text as written, byte for byte (so it can be edited and put again).
    shown = await gv("policies", "show", "--app", app.name, "office-hours")
    assert shown.exit_code == 0 and shown.stdout == edited
    older = await gv("policies", "show", "--app", app.name, "office-hours", "--version", "1")
    assert older.exit_code == 0 and older.stdout == OFFICE_HOURS
    whole = await gv_json("policies", "show", "--app", app.name, "office-hours", "--version", "1")
    assert whole["version"] == 1 and whole["source"] == OFFICE_HOURS
    window = whole["document"]["rules"]["time_windows"]["windows"][0]
    assert (window["start"], window["end"]) == ("09:00", "17:00")

    deleted = await gv_json("policies", "delete", "--app", app.name, "office-hours")
    assert deleted == {"name": "office-hours", "deleted": True, "version": 2}
    assert (await gv_json("policies", "list", "--app", app.name)) == {"policies": []}
    gone = await gv("policies", "show", "--app", app.name, "office-hours")
    assert gone.exit_code == 1 and "No policy 'office-hours'" in gone.stderr
    clean(gone)
    # The audited versions stay readable after the delete.
    kept = await gv("policies", "show", "--app", app.name, "office-hours", "--version", "2")
    assert kept.exit_code == 0 and kept.stdout == edited
    again = await gv("policies", "delete", "--app", app.name, "office-hours")
    assert again.exit_code == 1 and "No policy" in again.stderr

    async with vault.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(audit_events.c.event, audit_events.c.actor)
                .where(audit_events.c.chain == app.id, audit_events.c.event.like("policy.%"))
                .order_by(audit_events.c.seq)
            )
        ).all()
    assert [r.event for r in rows] == ["policy.created", "policy.updated", "policy.deleted"]
    assert all(r.actor["type"] == "operator" and r.actor["via"] == "cli" for r in rows)


async def test_an_invalid_document_lists_every_problem_and_stores_nothing(
    vault: Vault, shell: Path
) -> None:
    app, _ = await make_app(vault)
    grant_id = await _grant(vault, app)
    (shell / "bad.yaml").write_text(
        "descripton: typo\n"
        "applies_to:\n  principals: [robot]\n"
        "rules:\n"
        "  time_windows:\n    timezone: Europe/Berln\n"
        '    windows:\n      - {days: [mon], start: "09:00", end: 17:00}\n'
        "  ip_allow: [203.0.113.0/24, 10.0.0.1/8]\n"
        "  quota: {limit: 0, window: week, per: grant}\n"
    )
    expected = {
        "descripton",
        "applies_to.principals[0]",
        "rules.time_windows.timezone",
        "rules.time_windows.windows[0].end",
        "rules.ip_allow[1]",
        "rules.quota.limit",
        "rules.quota.window",
    }
    human = await gv("policies", "put", "--app", app.name, "office-hours", "--file", "bad.yaml")
    assert human.exit_code == 1 and human.stdout == ""
    clean(human)
    assert "invalid (7 problems)" in human.stderr
    listed_locs = {line.split(": ", 1)[0].strip() for line in human.stderr.splitlines()[1:]}
    assert listed_locs == expected
    assert "write '10.0.0.0/8' for the network" in human.stderr
    assert 'quoted strings "HH:MM"' in human.stderr

    as_json = await gv_json(
        "policies", "put", "--app", app.name, "office-hours", "--file", "bad.yaml", code=1
    )
    assert as_json["error"] == "invalid_request" and as_json["message"]
    assert {e["loc"] for e in as_json["errors"]} == expected
    assert all(set(e) == {"loc", "msg"} and e["msg"] for e in as_json["errors"])

    # Syntax errors name the line; a bad name is refused by the service, with its key.
    broken = await gv(
        "policies", "put", "--app", app.name, "x", "--file", "-", stdin="rules: [\n  a: b\n"
    )
    assert broken.exit_code == 1 and "line 3, column 1" in broken.stderr
    clean(broken)
    named = await gv_json(
        "policies",
        "put",
        "--app",
        app.name,
        "Office Hours",
        "--file",
        "-",
        stdin=OFFICE_HOURS,
        code=1,
    )
    assert [e["loc"] for e in named["errors"]] == ["name"]
    empty = await gv("policies", "put", "--app", app.name, "x", "--file", "-", stdin="rules: {}\n")
    assert empty.exit_code == 1 and "at least one rule" in empty.stderr
    # A candidate for `policies test` is checked the same way.
    candidate = await gv(*_test_args(app, grant_id, "--file", "bad.yaml", "--name", "office-hours"))
    assert candidate.exit_code == 1 and "invalid (7 problems)" in candidate.stderr
    clean(candidate)
    missing = await gv("policies", "put", "--app", app.name, "x", "--file", "nope.yaml")
    assert missing.exit_code == 2 and "cannot read nope.yaml" in missing.stderr
    clean(missing)
    assert await policy_service.list_policies(vault, app) == []


# -- policies test --------------------------------------------------------------------------------


async def test_time_windows_at_the_edges_and_across_a_dst_change(vault: Vault, shell: Path) -> None:
    app, _ = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault, app, "office-hours", policy_service.parse_source(OFFICE_HOURS), actor=OPERATOR
    )

    async def decide(at: str) -> tuple[int, dict[str, Any]]:
        result = await gv(*_test_args(app, grant_id, "--at", at), "--json")
        clean(result)
        return result.exit_code, json.loads(result.stdout)

    # start is inclusive, end exclusive (Monday 7 December 2026, CET).
    assert (await decide("2026-12-07T08:59:59+01:00"))[0] == 1
    assert (await decide("2026-12-07T09:00:00+01:00"))[0] == 0
    code, allowed = await decide("2026-12-07T16:59:59+01:00")
    assert code == 0 and allowed["decision"] == "allow"
    assert allowed["applied"] == [{"name": "office-hours", "version": 1}]
    code, denied = await decide("2026-12-07T17:00:00+01:00")
    assert code == 1
    assert {k: denied[k] for k in ("decision", "policy", "version", "rule", "reason", "code")} == {
        "decision": "deny",
        "policy": "office-hours",
        "version": 1,
        "rule": "time_windows",
        "reason": OUTSIDE,
        "code": "policy_violation",
    }
    # The same instant in another offset is the same decision.
    assert (await decide("2026-12-07T16:00:00Z"))[0] == 1
    assert (await decide("2026-12-07T15:59:59Z"))[0] == 0
    # Wall time: 07:30 UTC is 08:30 before the spring change (Sunday 29 March 2026) and 09:30
    # after it.
    assert (await decide("2026-03-27T07:30:00Z"))[0] == 1
    assert (await decide("2026-03-30T07:30:00Z"))[0] == 0
    assert (await decide("2026-12-12T12:00:00+01:00"))[0] == 1  # a Saturday

    human = await gv(*_test_args(app, grant_id, "--at", "2026-12-07T22:00:00+01:00"))
    assert human.exit_code == 1
    assert human.stdout.strip() == f"DENY by office-hours v1 (time_windows): {OUTSIDE}"
    ok = await gv(*_test_args(app, grant_id, "--at", "2026-12-07T10:00:00+01:00"))
    assert (ok.exit_code, ok.stdout.strip()) == (0, "ALLOW: allowed by office-hours v1")

    naive = await gv(*_test_args(app, grant_id, "--at", "2026-12-07T22:00:00"))
    assert naive.exit_code == 2 and "no UTC offset" in naive.stderr
    clean(naive)
    nonsense = await gv(*_test_args(app, grant_id, "--at", "tomorrow"))
    assert nonsense.exit_code == 2 and "ISO 8601" in nonsense.stderr


async def test_ip_allow_inside_outside_mapped_and_unknown(vault: Vault, shell: Path) -> None:
    app, _ = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault,
        app,
        "office-network",
        {"rules": {"ip_allow": ["198.51.100.0/24", "2001:db8:4::/48"]}},
        actor=OPERATOR,
    )

    async def decide(*ip: str) -> tuple[int, dict[str, Any]]:
        result = await gv(*_test_args(app, grant_id, *ip), "--json")
        clean(result)
        return result.exit_code, json.loads(result.stdout)

    for inside in ("198.51.100.23", "::ffff:198.51.100.23", "2001:db8:4::1"):
        code, data = await decide("--ip", inside)
        assert (code, data["decision"]) == (0, "allow"), inside
    code, data = await decide("--ip", "198.51.101.1")
    assert (code, data["rule"], data["code"]) == (1, "ip_allow", "policy_violation")
    assert "caller address 198.51.101.1 is not in office-network's ip_allow" in data["reason"]
    # No address at all: the rule cannot be judged, and the call is refused (fail closed).
    code, data = await decide()
    assert (code, data["rule"], data["code"]) == (1, "ip_allow", "policy_evaluation_failed")
    bad = await gv(*_test_args(app, grant_id, "--ip", "10.0.0.300"))
    assert bad.exit_code == 2 and "not an IPv4 or IPv6 address" in bad.stderr


async def test_a_candidate_file_is_judged_without_being_stored(vault: Vault, shell: Path) -> None:
    app, _ = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault, app, "office-hours", policy_service.parse_source(OFFICE_HOURS), actor=OPERATOR
    )
    late = ("--at", "2026-12-07T17:30:00+01:00")
    (shell / "longer.yaml").write_text(OFFICE_HOURS.replace('"17:00"', '"18:00"'))
    assert (await gv(*_test_args(app, grant_id, *late))).exit_code == 1
    tried = await gv(
        *_test_args(app, grant_id, *late, "--file", "longer.yaml", "--name", "office-hours")
    )
    assert (tried.exit_code, tried.stdout.strip()) == (
        0,
        "ALLOW: allowed by candidate office-hours",
    )
    # From stdin, with --json: a candidate has no version yet.
    data = await gv_json(
        *_test_args(app, grant_id, *late, "--file", "-", "--name", "office-hours"),
        stdin=OFFICE_HOURS.replace('"17:00"', '"18:00"'),
    )
    assert data["candidate"] == "office-hours"
    assert data["applied"] == [{"name": "office-hours", "version": None}]
    # A candidate under a new name is judged beside the stored ones, which still refuse.
    (shell / "read-only.yaml").write_text("rules:\n  methods: [GET]\n")
    beside = await gv_json(
        *_test_args(app, grant_id, *late, "--file", "read-only.yaml", "--name", "read-only"),
        code=1,
    )
    assert (beside["policy"], beside["version"], beside["rule"]) == (
        "office-hours",
        1,
        "time_windows",
    )
    refused = await gv_json(
        *_test_args(
            app, grant_id, "--method", "POST", "--at", "2026-12-07T10:00:00+01:00",
            "--file", "read-only.yaml", "--name", "read-only",
        ),
        code=1,
    )  # fmt: skip
    assert (refused["policy"], refused["version"], refused["rule"]) == (
        "read-only",
        None,
        "methods",
    )
    # Nothing was stored.
    listed = await policy_service.list_policies(vault, app)
    assert [(p.name, p.version) for p in listed] == [("office-hours", 1)]
    usage = await gv(*_test_args(app, grant_id, "--file", "longer.yaml"))
    assert usage.exit_code == 2 and "--name" in usage.stderr


async def test_an_unreadable_stored_policy_refuses_and_a_candidate_can_replace_it(
    vault: Vault, shell: Path
) -> None:
    app, _ = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault, app, "office-hours", policy_service.parse_source(OFFICE_HOURS), actor=OPERATOR
    )
    async with vault.db.write() as conn:  # a hand-edited row that no longer validates
        await conn.execute(
            sa.update(policies)
            .where(policies.c.app_id == app.id)
            .values(document={"rules": {"methods": []}})
        )
    data = await gv_json(*_test_args(app, grant_id), code=1)
    assert (data["policy"], data["rule"], data["code"]) == (
        "office-hours",
        "document",
        "policy_evaluation_failed",
    )
    (shell / "fixed.yaml").write_text("rules:\n  methods: [GET]\n")
    fixed = await gv_json(
        *_test_args(app, grant_id, "--file", "fixed.yaml", "--name", "office-hours")
    )
    assert fixed["decision"] == "allow"
    listed = await gv_json("grants", "list", "--app", app.name)
    assert listed["grants"][0]["policies"] == [
        {"name": "office-hours", "version": 1, "conditional": False, "broken": True}
    ]
    table = await gv("grants", "list", "--app", app.name)
    assert "office-hours (unreadable)" in table.stdout


async def test_counters_are_reported_never_charged(
    vault: Vault, client: httpx.AsyncClient, shell: Path
) -> None:
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault,
        app,
        "one-a-day",
        {
            "rules": {
                "quota": {"limit": 1, "window": "day", "per": "grant"},
                "rate_limit": {"per_minute": 5, "per": "app"},
            }
        },
        actor=OPERATOR,
    )
    at = ("--at", "2026-12-07T23:30:00+01:00")
    for _ in range(2):  # a quota of one, tested twice: neither leaves a count behind
        data = await gv_json(*_test_args(app, grant_id, *at))
        assert data["decision"] == "allow"
    assert data["charges"] == [
        {
            "policy": "one-a-day",
            "policy_version": 1,
            "rule": "quota",
            "per": "grant",
            "subject": grant_id,
            "limit": 1,
            "window": "day",
            "window_start": "2026-12-07T00:00:00Z",
            "window_end": "2026-12-08T00:00:00Z",
        },
        {
            "policy": "one-a-day",
            "policy_version": 1,
            "rule": "rate_limit",
            "per": "app",
            "subject": app.id,
            "limit": 5,
            "window": "minute",
            "window_start": "2026-12-07T22:30:00Z",
            "window_end": "2026-12-07T22:31:00Z",
        },
    ]
    human = await gv(*_test_args(app, grant_id, *at))
    assert human.exit_code == 0
    assert f"would charge quota of one-a-day v1: 1 per day per grant ({grant_id})" in human.stdout

    async def counters() -> int:
        async with vault.db.read() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(policy_counters))
                ).scalar_one()
            )

    assert await counters() == 0
    # The server does charge them (the table the test looks at is the right one).
    body = {"grant_id": grant_id, "reason": None, "request": {"method": "GET", "url": URL}}
    answer = await SignedClient(client, key).post("/sdk/token", body)
    assert answer.status_code == 200 and await counters() == 2


async def test_the_cli_decides_exactly_as_the_server(
    vault: Vault, client: httpx.AsyncClient, clock: FakeClock, shell: Path
) -> None:
    """Each call is made for real (``POST /sdk/token`` at the clock's time, from the test
    client's address 127.0.0.1) and tested with the CLI at the same instant: same answer."""
    app, key = await make_app(vault)
    grant_id = await _grant(vault, app)
    await policy_service.put_policy(
        vault, app, "office-hours", policy_service.parse_source(OFFICE_HOURS), actor=OPERATOR
    )
    await policy_service.put_policy(
        vault,
        app,
        "read-models",
        {
            "rules": {
                "ip_allow": ["127.0.0.0/8"],
                "methods": ["GET"],
                "paths": ["/v1/models", "/v1/files/*"],
            }
        },
        actor=OPERATOR,
    )
    signed = SignedClient(client, key)
    friday = datetime(2027, 10, 29, 14, 59, 59, tzinfo=UTC)  # 16:59:59 in Berlin (CEST)
    cases = [
        (friday, "GET", URL),
        (friday, "DELETE", URL),
        (friday, "GET", "https://api.openai.com/v1/files/f_1"),
        (friday, "GET", "https://api.openai.com/v1/files/f_1/content"),
        (friday, "GET", "https://api.openai.com/v1/files/..%2Fadmin"),
        (friday, "GET", "https://api.openai.com/v1/files/x/../../models"),
        (datetime(2027, 10, 29, 15, 0, 0, tzinfo=UTC), "GET", URL),
        (datetime(2027, 11, 1, 7, 59, 59, tzinfo=UTC), "GET", URL),  # 08:59:59 CET
        (datetime(2027, 11, 1, 8, 0, 0, tzinfo=UTC), "GET", URL),
    ]
    seen = set()
    for at, method, url in cases:
        clock.advance((at - clock.now()).total_seconds())
        body = {"grant_id": grant_id, "reason": None, "request": {"method": method, "url": url}}
        server = await signed.post("/sdk/token", body)
        result = await gv(
            "policies", "test", "--app", app.name, "--grant", grant_id, "--method", method,
            "--url", url, "--ip", "127.0.0.1", "--at", at.isoformat(), "--json",
        )  # fmt: skip
        ours = json.loads(result.stdout)
        if server.status_code == 200:
            assert (result.exit_code, ours["decision"]) == (0, "allow"), (at, method, url)
        else:
            theirs = server.json()
            assert server.status_code == 403 and result.exit_code == 1, (at, method, url)
            assert (
                ours["code"],
                ours["policy"],
                ours["version"],
                ours["rule"],
                ours["reason"],
            ) == (
                theirs["error"],
                theirs["policy"],
                theirs["policy_version"],
                theirs["rule"],
                theirs["message"],
            )
        seen.add(ours["rule"])
    assert seen == {None, "time_windows", "methods", "paths"}


async def test_the_facts_are_those_the_server_builds(vault: Vault) -> None:
    """``policies test`` reads the grant with ``grants.load_grant``, the server with its
    retrieval query; both rows give ``services.policies.call_facts`` the same facts, for
    every kind of principal, with and without a verified user."""
    app, _ = await make_app(vault)
    at = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
    alice = Identity("u-1", "alice", "idp-1", frozenset({"eng"}), None, None)
    for principal_type, principal_id in (("system", None), ("user", "alice"), ("group", "eng")):
        grant_id = await _grant(vault, app, "openai", principal_type, principal_id)
        async with vault.db.read() as conn:
            server_row = await tokens._BY_GRANT_ID.first(
                conn, {"app_id": app.id, "grant_id": grant_id}
            )
            cli_row = await grant_service.load_grant(conn, app, grant_id)
        for identity in (None, alice):
            address = policy_service.caller_address("::ffff:10.0.0.1")
            facts = [
                policy_service.call_facts(
                    app.id, row, identity, method="POST", url=URL, at=at, caller_ip=address
                )
                for row in (server_row, cli_row)
            ]
            assert facts[0] == facts[1]
            assert facts[0].credential == "openai" and facts[0].principal_id == principal_id


async def test_a_user_token_is_verified_and_gives_the_user_and_groups(
    vault: Vault, shell: Path, idp_peer: IdpPeer
) -> None:
    app, _ = await make_app(vault)
    await configure(vault, app, idp_peer)
    grant_id = await _grant(vault, app, "openai", "user", "carol")
    await policy_service.put_policy(
        vault,
        app,
        "eng-daily",
        {
            "applies_to": {"groups": ["eng"]},
            "rules": {"quota": {"limit": 50, "window": "day", "per": "user"}},
        },
        actor=OPERATOR,
    )
    in_eng = idp_peer.forge(idp_peer.claims(sub="carol", groups=["eng", "ops"]))
    data = await gv_json(*_test_args(app, grant_id, "--user-token", in_eng))
    assert data["applied"] == [{"name": "eng-daily", "version": 1}]
    assert [(c["per"], c["subject"]) for c in data["charges"]] == [("user", "carol")]
    # Not in the group: the policy does not apply to this call.
    in_ops = idp_peer.forge(idp_peer.claims(sub="carol", groups=["ops"]))
    data = await gv_json(*_test_args(app, grant_id, "--user-token", in_ops))
    assert (data["applied"], data["reason"]) == ([], "no_policy_applies")
    # No token: the groups are unknown, so the call is refused (fail closed).
    data = await gv_json(*_test_args(app, grant_id), code=1)
    assert (data["rule"], data["code"]) == ("applies_to", "policy_evaluation_failed")
    # Someone else's token on carol's grant: judged, with a note that the server would
    # refuse the call before any policy.
    other = idp_peer.forge(idp_peer.claims(sub="dan", groups=["eng"]))
    noted = await gv(*_test_args(app, grant_id, "--user-token", other))
    assert noted.exit_code == 0 and "note:" in noted.stderr and "(dan)" in noted.stderr
    # A token the IdP did not sign is refused as the server refuses it.
    forged = await gv(*_test_args(app, grant_id, "--user-token", in_eng[:-4] + "AAAA"))
    assert forged.exit_code == 1 and forged.stdout == ""
    clean(forged)


# -- grants list ----------------------------------------------------------------------------------


async def test_grants_list_shows_the_policies_that_apply(vault: Vault, shell: Path) -> None:
    app, _ = await make_app(vault)
    system_openai = await _grant(vault, app, "openai")
    system_stripe = await _grant(vault, app, "stripe")
    alice_openai = await _grant(vault, app, "openai", "user", "alice")
    documents: dict[str, dict[str, Any]] = {
        "everything": {"rules": {"methods": ["GET"]}},
        "openai-only": {"applies_to": {"secrets": ["openai"]}, "rules": {"methods": ["GET"]}},
        "users": {"applies_to": {"principals": ["user"]}, "rules": {"methods": ["GET"]}},
        "eng": {
            "applies_to": {"secrets": ["openai"], "groups": ["eng"]},
            "rules": {"methods": ["GET"]},
        },
        "github": {"applies_to": {"providers": ["github"]}, "rules": {"methods": ["GET"]}},
    }
    for name, document in documents.items():
        await policy_service.put_policy(vault, app, name, document, actor=OPERATOR)
    listed = await gv_json("grants", "list", "--app", app.name)
    by_grant = {
        g["grant_id"]: [(p["name"], p["version"], p["conditional"]) for p in g["policies"]]
        for g in listed["grants"]
    }
    assert by_grant == {
        system_openai: [("eng", 1, True), ("everything", 1, False), ("openai-only", 1, False)],
        system_stripe: [("everything", 1, False)],
        alice_openai: [
            ("eng", 1, True),
            ("everything", 1, False),
            ("openai-only", 1, False),
            ("users", 1, False),
        ],
    }
    table = await gv("grants", "list", "--app", app.name)
    assert table.exit_code == 0 and "policies" in table.stdout
    row = next(line for line in table.stdout.splitlines() if system_openai in line)
    assert "eng (groups), everything, openai-only" in row
    # An app without policies lists every grant with none.
    other, _ = await make_app(vault)
    await _grant(vault, other)
    assert [
        g["policies"] for g in (await gv_json("grants", "list", "--app", other.name))["grants"]
    ] == [[]]


def test_help_names_the_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(cli, ["policies", "test", "--help"])
    assert result.exit_code == 0
    assert "Exit 0 for allow, 1 for deny" in " ".join(result.stdout.split())
    for command in ("put", "list", "show", "delete"):
        assert runner.invoke(cli, ["policies", command, "--help"]).exit_code == 0


# -- docs/policies.md -----------------------------------------------------------------------------

DOC_TEXT = DOC.read_text()
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC_TEXT, re.S)
_HEADER = re.compile(r"# (?P<file>[a-z0-9-]+\.yaml)(?P<invalid> \(invalid\))?\n")


def _sections() -> dict[str, str]:
    """Headings (## and ###) and their text; YAML comments are one '#', never a heading."""
    parts = re.split(r"^#{2,3} (.*)$", DOC_TEXT, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _files(section: str) -> dict[str, str]:
    files = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        header = _HEADER.match(block)
        assert header, block
        files[header["file"]] = block
    return files


def _commands(section: str) -> list[tuple[list[str], str]]:
    """Each ``$ grantvault ...`` of the console blocks (continuations joined) and the output
    the page shows for it."""
    found: list[tuple[list[str], str]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ grantvault "), lines[i]
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + lines[i].strip()
            i += 1
            shown = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            found.append((shlex.split(command)[1:], "\n".join(shown)))
    return found


def test_the_page_has_the_worked_examples() -> None:
    sections = _sections()
    assert {
        "Office hours",
        "Office network",
        "Read-only",
        "Per-user daily quota",
        "Group-restricted secret",
    } <= set(sections)
    assert set(EXAMPLES) == {t for t, body in sections.items() if "```console" in body}
    assert len(YAML_BLOCKS) >= 14


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"yaml{i}" for i in range(len(YAML_BLOCKS))])
def test_every_yaml_block_of_the_page_is_a_complete_document(block: str) -> None:
    """Each block names its file; those not marked invalid validate and compile as stored
    policies do, and the invalid one is refused."""
    header = _HEADER.match(block)
    assert header, f"a YAML block without a '# name.yaml' first line:\n{block}"
    try:
        document = validate_document(policy_service.parse_source(block))
        compile_policy("example", 1, document)
    except PolicyDocumentError:
        assert header["invalid"], block
    else:
        assert not header["invalid"], f"{header['file']} is marked invalid but validates"


Setup = Callable[[Vault, App, pytest.FixtureRequest], Awaitable[dict[str, str]]]


async def _alice_openai(vault: Vault, app: App, request: pytest.FixtureRequest) -> dict[str, str]:
    return {"$GRANT": await _grant(vault, app, "openai", "user", "alice")}


async def _payroll(vault: Vault, app: App, request: pytest.FixtureRequest) -> dict[str, str]:
    idp: IdpPeer = request.getfixturevalue("idp_peer")
    await configure(vault, app, idp)
    secret = await secret_service.create_secret(
        vault,
        app,
        OPERATOR,
        slug="payroll",
        injection={"auth": "bearer"},
        allowed_hosts=["api.payroll.example"],
    )
    ids = {}
    for user in ("alice", "bob"):
        made = await grant_service.create_grant(
            vault, app, secret, OPERATOR, principal_type="user", principal_id=user
        )
        ids[user] = str(made["grant_id"])
    return {
        "$ALICE_GRANT": ids["alice"],
        "$BOB_GRANT": ids["bob"],
        "$ALICE_TOKEN": idp.forge(idp.claims(sub="alice", groups=["finance"])),
        "$BOB_TOKEN": idp.forge(idp.claims(sub="bob", groups=["sales"])),
    }


async def _nothing(vault: Vault, app: App, request: pytest.FixtureRequest) -> dict[str, str]:
    return {}


def _template(template: str) -> Setup:
    async def setup(vault: Vault, app: App, request: pytest.FixtureRequest) -> dict[str, str]:
        return {"$GRANT": await _grant(vault, app, template)}

    return setup


#: What each example's variables stand for (the page says it in words).
EXAMPLES: dict[str, Setup] = {
    "Office hours": _template("openai"),
    "Office network": _template("stripe"),
    "Read-only": _template("github"),
    "Per-user daily quota": _alice_openai,
    "Group-restricted secret": _payroll,
    "When a file is refused": _nothing,
}


@pytest.mark.parametrize("title", sorted(EXAMPLES))
async def test_a_worked_example_prints_what_the_page_shows(
    title: str, vault: Vault, shell: Path, request: pytest.FixtureRequest
) -> None:
    section = _sections()[title]
    app, _ = await make_app(vault, "demo")
    variables = await EXAMPLES[title](vault, app, request)
    for name, text in _files(section).items():
        (shell / name).write_text(text)
    commands = _commands(section)
    assert commands
    for args, shown in commands:
        result = await gv(*[variables.get(a, a) for a in args])
        clean(result)
        denied = shown.startswith(("DENY", "error:")) or '"decision": "deny"' in shown
        assert result.exit_code == (1 if denied else 0), (args, result.output)
        if shown.startswith("{"):
            assert json.loads(result.stdout) == json.loads(shown)
        else:
            assert result.output.strip() == shown.strip(), args

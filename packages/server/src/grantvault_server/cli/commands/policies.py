"""``grantvault policies``: the rules every credential retrieval of an app must pass.

``put``, ``list``, ``show`` and ``delete`` go through ``services.policies`` like the admin
API, so every change is versioned, audited and reaches every replica with its next request.
``test`` judges one call the way ``POST /sdk/token`` would: the app's stored policies
(optionally with a candidate file in place of one of them) are loaded and compiled by the
same service, the facts are those the server builds for the grant, and the decision comes
from the same ``policy.engine.decide``. It never charges a counter.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from rich.text import Text

from grantvault.types.errors import ErrorCode
from grantvault_server.cli._common import (
    AppOpt,
    JsonOpt,
    emit,
    err,
    fail,
    out,
    run,
    table,
    with_vault,
)
from grantvault_server.errors import VaultError
from grantvault_server.identity.claims import Identity
from grantvault_server.policy.cache import AppPolicies
from grantvault_server.policy.compile import Charge, CompiledPolicy, compile_policy
from grantvault_server.policy.document import PolicyDocumentError, validate_document
from grantvault_server.policy.engine import Decision, decide
from grantvault_server.services import (
    apps as app_service,
    grants as grant_service,
    policies as policy_service,
)
from grantvault_server.services.identity.service import resolve_user
from grantvault_server.services.tokens import usable_by
from grantvault_server.services.vault import Vault, operator_actor
from grantvault_server.timefmt import iso

policies_cli = typer.Typer(
    help="Policies: rules (time windows, networks, groups, methods, paths, quotas) checked "
    "on every credential retrieval. Guide: docs/policies.md.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Policy name: a-z, 0-9, '.', '_', '-'.")]
FileOpt = Annotated[
    str,
    typer.Option("--file", "-f", help="The policy document (YAML or JSON); '-' reads stdin."),
]

T = TypeVar("T")

#: The version a candidate document (``policies test --file``) is compiled with: it has none.
CANDIDATE_VERSION = 0


# --------------------------------------------------------------------------- documents


class _InvalidDocument(Exception):
    """A document that cannot be stored or tested: every problem with its key location."""

    def __init__(self, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors

    @classmethod
    def from_error(cls, exc: PolicyDocumentError) -> _InvalidDocument:
        invalid = policy_service.invalid_document(exc)
        return cls(invalid.message, list(invalid.extra["errors"]))


def _report_invalid(exc: _InvalidDocument, as_json: bool) -> NoReturn:
    """Every problem at once (exit 1), so the file can be fixed in one pass."""
    if as_json:
        emit(
            {"error": ErrorCode.INVALID_REQUEST.value, "message": exc.message, "errors": exc.errors}
        )
    else:
        count = len(exc.errors)
        err.print(
            Text.assemble(
                ("error:", "bold red"),
                f" the policy document is invalid ({count} problem{'s' if count != 1 else ''}):",
            ),
            soft_wrap=True,
        )
        for problem in exc.errors:
            err.print(Text(f"  {problem['loc']}: {problem['msg']}"), soft_wrap=True)
    raise typer.Exit(1)


def _read_source(path: str) -> str:
    """The text of ``--file`` (``-``: standard input)."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{path} is not UTF-8 text", 2)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", 2)
    raise AssertionError("unreachable")


def _parse(text: str) -> dict[str, Any]:
    try:
        return policy_service.parse_source(text)
    except PolicyDocumentError as exc:
        raise _InvalidDocument.from_error(exc) from None


def _checked(as_json: bool, action: Callable[[Vault], Awaitable[T]]) -> T:
    """``run(with_vault(action))``, with an invalid document reported key by key."""
    try:
        return run(with_vault(action))
    except _InvalidDocument as exc:
        _report_invalid(exc, as_json)


def _info_json(info: policy_service.PolicyInfo) -> dict[str, Any]:
    return {
        **info.summary(),
        "created_at": iso(info.created_at),
        "document": info.document,
        "source": info.source,
    }


def _applies_to_text(applies_to: dict[str, Any] | None) -> str:
    if not applies_to:
        return "every grant"
    return "; ".join(f"{key}: {', '.join(map(str, values))}" for key, values in applies_to.items())


# --------------------------------------------------------------------------- commands


@policies_cli.command("put")
def policies_put(
    app: AppOpt,
    name: NameArg,
    file: FileOpt,
    as_json: JsonOpt = False,
) -> None:
    """Create a policy, or store a new version of it, from a YAML or JSON file.

    The document is validated first: every problem is printed with its key (exit 1) and
    nothing is stored. Each replica applies the new version from its next request.
    """
    text = _read_source(file)
    try:
        raw = _parse(text)
    except _InvalidDocument as exc:
        _report_invalid(exc, as_json)

    async def action(vault: Vault) -> policy_service.PolicyInfo:
        target = await app_service.get_app(vault, app)
        try:
            return await policy_service.put_policy(
                vault, target, name, raw, actor=operator_actor(), source=text
            )
        except VaultError as exc:
            errors = exc.extra.get("errors")
            if exc.code is ErrorCode.INVALID_REQUEST and isinstance(errors, list):
                raise _InvalidDocument(exc.message, errors) from None
            raise

    info = _checked(as_json, action)
    if as_json:
        emit({"policy_id": info.policy_id, "name": info.name, "version": info.version})
    else:
        out.print(
            f"Stored policy {info.name} v{info.version}; every replica applies it from its "
            "next request.",
            soft_wrap=True,
            highlight=False,
        )


@policies_cli.command("list")
def policies_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's policies in evaluation order (by name)."""

    async def action(vault: Vault) -> list[policy_service.PolicyInfo]:
        return await policy_service.list_policies(vault, await app_service.get_app(vault, app))

    infos = run(with_vault(action))
    if as_json:
        emit({"policies": [info.summary() for info in infos]})
        return
    table(
        f"Policies ({len(infos)})",
        ["name", "version", "applies to", "rules", "updated"],
        [
            [
                info.name,
                info.version,
                _applies_to_text(info.applies_to),
                ", ".join(info.summary()["rules"]),
                iso(info.updated_at),
            ]
            for info in infos
        ],
    )


@policies_cli.command("show")
def policies_show(
    app: AppOpt,
    name: NameArg,
    version: Annotated[
        int | None,
        typer.Option(help="An older version (still readable after an update or delete)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a policy's document as it was written (save it, edit it, `put` it again)."""

    async def action(vault: Vault) -> policy_service.PolicyInfo:
        target = await app_service.get_app(vault, app)
        return await policy_service.get_policy(vault, target, name, version)

    info = run(with_vault(action))
    if as_json:
        emit(_info_json(info))
        return
    text = info.source
    if text is None:
        # Stored without its source text (through the admin API as JSON): the document.
        text = yaml.safe_dump(info.document, sort_keys=False, allow_unicode=True)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@policies_cli.command("delete")
def policies_delete(app: AppOpt, name: NameArg, as_json: JsonOpt = False) -> None:
    """Delete a policy: calls are no longer checked against it from the next request.

    Its versions stay readable (`policies show --version N`) for the audit trail.
    """

    async def action(vault: Vault) -> int:
        target = await app_service.get_app(vault, app)
        return await policy_service.delete_policy(vault, target, name, actor=operator_actor())

    live = run(with_vault(action))
    if as_json:
        emit({"name": name, "deleted": True, "version": live})
    else:
        out.print(
            f"Deleted policy {name} (it was at v{live}); `policies show --version {live}` "
            "still prints it.",
            soft_wrap=True,
            highlight=False,
        )


# --------------------------------------------------------------------------- test


@dataclass(frozen=True)
class _Candidate:
    """A document from ``--file`` tested in place of (or beside) the stored policies."""

    name: str
    source: str
    policy: CompiledPolicy


@dataclass
class _Outcome:
    decision: Decision
    entry: AppPolicies
    candidate: str | None
    notes: list[str] = field(default_factory=list)


def _compile_candidate(name: str, path: str) -> _Candidate:
    raw = _parse(_read_source(path))
    try:
        policy = compile_policy(name, CANDIDATE_VERSION, validate_document(raw))
    except PolicyDocumentError as exc:
        raise _InvalidDocument.from_error(exc) from None
    return _Candidate(name, path, policy)


def with_candidate(entry: AppPolicies, candidate: CompiledPolicy) -> AppPolicies:
    """The app's policies with ``candidate`` replacing the stored policy of its name (also a
    stored one that no longer compiles), or added in its place in the evaluation order."""
    stored = [p for p in entry.compiled if p.name != candidate.name]
    at = next((i for i, p in enumerate(stored) if p.name > candidate.name), len(stored))
    stored.insert(at, candidate)
    broken = tuple(b for b in entry.broken if b.name != candidate.name)
    return AppPolicies(entry.generation, tuple(stored), broken)


def _notes(row: Any, identity: Identity | None, now: datetime) -> list[str]:
    """What the server would refuse before any policy is looked at (not judged here)."""
    notes: list[str] = []
    status = grant_service.grant_status(row, now)
    if status != "active":
        notes.append(
            f"this grant is {status}: the server refuses its calls (grant_{status}) before "
            "any policy is checked"
        )
    if identity is not None and not usable_by(row, identity):
        notes.append(
            f"the user token's user ({identity.subject}) may not use this grant: the server "
            "refuses that call before any policy is checked"
        )
    return notes


def _parse_at(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at {text!r} is not an ISO 8601 time such as 2026-12-07T22:00:00+01:00", 2)
        raise AssertionError("unreachable") from None
    if at.tzinfo is None or at.utcoffset() is None:
        fail(
            f"--at {text!r} has no UTC offset; write the offset (+01:00) or Z so the time is "
            "one instant",
            2,
        )
    return at


def _charge_json(
    charge: Charge, policy: CompiledPolicy | None, candidate: str | None
) -> dict[str, Any]:
    return {
        "policy": charge.policy,
        "policy_version": None if charge.policy == candidate else charge.policy_version,
        "rule": charge.rule,
        "per": charge.per,
        "subject": charge.subject,
        "limit": charge.limit,
        "window": _window_name(charge, policy),
        "window_start": iso(charge.window_start),
        "window_end": iso(charge.window_end),
    }


def _window_name(charge: Charge, policy: CompiledPolicy | None) -> str:
    quota = policy.document.rules.quota if policy is not None else None
    if charge.rule == "quota" and quota is not None:
        return str(quota.window)
    return "minute"


def _result_json(outcome: _Outcome) -> dict[str, Any]:
    decision, candidate = outcome.decision, outcome.candidate
    by_name = {p.name: p for p in outcome.entry.compiled}
    return {
        "decision": "allow" if decision.allowed else "deny",
        "policy": decision.policy,
        "version": None if decision.policy == candidate else decision.policy_version,
        "rule": decision.matched_rule,
        "reason": decision.reason,
        "code": decision.code,
        "charges": [_charge_json(c, by_name.get(c.policy), candidate) for c in decision.charges],
        "applied": [
            {"name": n, "version": None if n == candidate else v} for n, v in decision.applied
        ],
        "candidate": candidate,
        "notes": outcome.notes,
    }


def _label(name: str, version: int | None) -> str:
    return f"candidate {name}" if version is None else f"{name} v{version}"


def _print_result(data: dict[str, Any]) -> None:
    if data["decision"] == "deny":
        detail = (
            data["rule"]
            if data["code"] == "policy_violation"
            else f"{data['rule']}, {data['code']}"
        )
        out.print(
            Text.assemble(
                ("DENY", "bold red"),
                f" by {_label(data['policy'], data['version'])} ({detail}): {data['reason']}",
            ),
            soft_wrap=True,
        )
        return
    applied = ", ".join(_label(p["name"], p["version"]) for p in data["applied"])
    out.print(
        Text.assemble(
            ("ALLOW", "bold green"),
            f": allowed by {applied}" if applied else ": no policy applies to this call",
        ),
        soft_wrap=True,
    )
    for c in data["charges"]:
        out.print(
            Text(
                f"  would charge {c['rule']} of {_label(c['policy'], c['policy_version'])}: "
                f"{c['limit']} per {c['window']} per {c['per']} ({c['subject']}), "
                f"window {c['window_start']} to {c['window_end']}"
            ),
            soft_wrap=True,
        )


@policies_cli.command("test")
def policies_test(
    app: AppOpt,
    grant: Annotated[str, typer.Option("--grant", help="The grant_id the call would use.")],
    url: Annotated[str, typer.Option("--url", help="The destination URL of the call.")],
    method: Annotated[str, typer.Option("--method", help="The HTTP method of the call.")] = "GET",
    ip: Annotated[
        str | None,
        typer.Option("--ip", help="The calling app server's address (for ip_allow)."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="When, ISO 8601 with a UTC offset: 2026-12-07T22:00:00+01:00 (default: now).",
        ),
    ] = None,
    user_token: Annotated[
        str | None,
        typer.Option(
            "--user-token",
            help="An end user's JWT, verified as the server does (user and groups).",
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            help="Test this document (not stored) in place of the policy --name; '-' reads stdin.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The policy name the --file document takes.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Would the app's policies allow this call? Exit 0 for allow, 1 for deny.

    Judged by the server's own evaluation: the stored policies (with --file, a candidate
    document in place of the policy --name, to try it before `put`), the grant's secret or
    provider and principal, the end user and groups of --user-token, --ip and --at. Only
    the policies are judged (not the grant's status or allowed hosts), and no quota or
    rate-limit counter is read or charged: the charges the call would make are listed.
    """
    if (file is None) != (name is None):
        fail("--file and --name go together: the candidate document and the policy it is", 2)
    when = _parse_at(at) if at is not None else None
    caller_ip = policy_service.caller_address(ip)
    if ip is not None and caller_ip is None:
        fail(f"--ip {ip!r} is not an IPv4 or IPv6 address", 2)
    try:
        candidate = _compile_candidate(name, file) if file and name else None
    except _InvalidDocument as exc:
        _report_invalid(exc, as_json)

    async def action(vault: Vault) -> _Outcome:
        target = await app_service.get_app(vault, app)
        identity = None
        if user_token is not None:
            identity = await resolve_user(vault, target.id, user_token, actor=operator_actor())
        async with vault.db.read() as conn:
            row = await grant_service.load_grant(conn, target, grant)
            entry = await policy_service.load(conn, target.id)
        now = vault.clock.now()
        if candidate is not None:
            entry = with_candidate(entry, candidate.policy)
        facts = policy_service.call_facts(
            target.id, row, identity, method=method, url=url, at=when or now, caller_ip=caller_ip
        )
        return _Outcome(
            decide(entry, facts),
            entry,
            candidate.name if candidate else None,
            _notes(row, identity, now),
        )

    outcome: _Outcome = run(with_vault(action))
    data = _result_json(outcome)
    for note in outcome.notes:
        err.print(Text.assemble(("note:", "bold yellow"), f" {note}"), soft_wrap=True)
    if as_json:
        emit(data)
    else:
        _print_result(data)
    raise typer.Exit(0 if outcome.decision.allowed else 1)

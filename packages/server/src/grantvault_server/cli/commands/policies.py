"""``grantvault policies``: the rules every credential retrieval of an app must pass.

Each command turns its options into the inputs of a ``policies.*`` operation
(``services.admin.areas.policies``), runs it here or on a remote vault (``cli._invoke``) and
renders the answer, so both modes print the same thing. Files are read here and sent as text
(``source``); the vault parses and validates them, and a refused document comes back with
every problem and its key, which is printed in full (exit 1) in both modes. ``test`` is
judged by the vault's own evaluation and never charges a counter; the exit code (0 allow,
1 deny) is the CLI's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
    table,
)
from grantvault_server.cli._invoke import call, call_or_raise
from grantvault_server.errors import VaultError
from grantvault_server.services.admin.areas.policies import parse_at, parse_ip

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


# --------------------------------------------------------------------------- documents


class _InvalidDocument(Exception):
    """A document the vault refused: every problem with its key location."""

    def __init__(self, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors

    @classmethod
    def of(cls, exc: VaultError) -> _InvalidDocument | None:
        """The refusal as a list of problems, when it carries one (``errors``: the 422 of
        ``services.policies.invalid_document``); ``None`` for any other error."""
        errors = exc.extra.get("errors")
        if exc.code is not ErrorCode.INVALID_REQUEST or not isinstance(errors, list):
            return None
        problems = [
            {"loc": str(e["loc"]), "msg": str(e["msg"])}
            for e in errors
            if isinstance(e, dict) and "loc" in e and "msg" in e
        ]
        return cls(exc.message, problems) if problems else None


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


def _call_with_document(as_json: bool, operation: str, /, **params: Any) -> dict[str, Any]:
    """:func:`~grantvault_server.cli._invoke.call` for an operation that takes a document:
    a document refused with its problems is reported problem by problem, locally and
    remotely alike (``call`` keeps only the message of an error)."""
    try:
        return call_or_raise(operation, **params)
    except VaultError as exc:
        invalid = _InvalidDocument.of(exc)
        if invalid is not None:
            _report_invalid(invalid, as_json)
        fail(exc.message, 1)
    raise AssertionError("unreachable")


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
    data = _call_with_document(as_json, "policies.put", app=app, name=name, source=text)
    if as_json:
        emit(data)
    else:
        out.print(
            f"Stored policy {data['name']} v{data['version']}; every replica applies it from "
            "its next request.",
            soft_wrap=True,
            highlight=False,
        )


@policies_cli.command("list")
def policies_list(app: AppOpt, as_json: JsonOpt = False) -> None:
    """List an app's policies in evaluation order (by name)."""
    data = call("policies.list", app=app)
    if as_json:
        emit(data)
        return
    infos = data["policies"]
    table(
        f"Policies ({len(infos)})",
        ["name", "version", "applies to", "rules", "updated"],
        [
            [
                info["name"],
                info["version"],
                _applies_to_text(info["applies_to"]),
                ", ".join(info["rules"]),
                info["updated_at"],
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
    data = call("policies.show", app=app, name=name, version=version)
    if as_json:
        emit(data)
        return
    text = data["source"]
    if text is None:
        # Stored without its source text (through the admin API as JSON): the document.
        text = yaml.safe_dump(data["document"], sort_keys=False, allow_unicode=True)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@policies_cli.command("delete")
def policies_delete(app: AppOpt, name: NameArg, as_json: JsonOpt = False) -> None:
    """Delete a policy: calls are no longer checked against it from the next request.

    Its versions stay readable (`policies show --version N`) for the audit trail.
    """
    data = call("policies.delete", app=app, name=name)
    if as_json:
        emit(data)
    else:
        live = data["version"]
        out.print(
            f"Deleted policy {data['name']} (it was at v{live}); `policies show --version "
            f"{live}` still prints it.",
            soft_wrap=True,
            highlight=False,
        )


# --------------------------------------------------------------------------- test


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


def _usage(check: Callable[[str, str], object], text: str, label: str) -> None:
    """A mistyped option is a usage error (exit 2) before anything is sent; the operation
    checks the same input with the same function."""
    try:
        check(text, label)
    except VaultError as exc:
        fail(exc.message, 2)


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
    if at is not None:
        _usage(parse_at, at, "--at")
    if ip is not None:
        _usage(parse_ip, ip, "--ip")
    source = _read_source(file) if file is not None else None
    data = _call_with_document(
        as_json,
        "policies.test",
        app=app,
        grant_id=grant,
        url=url,
        method=method,
        ip=ip,
        at=at,
        user_token=user_token,
        name=name,
        source=source,
    )
    for note in data["notes"]:
        err.print(Text.assemble(("note:", "bold yellow"), f" {note}"), soft_wrap=True)
    if as_json:
        emit(data)
    else:
        _print_result(data)
    raise typer.Exit(0 if data["decision"] == "allow" else 1)

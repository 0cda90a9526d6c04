"""``grantvault audit``: list, export and verify the audit trail.

Each command is one administrative operation (``audit.list``, ``audit.export``,
``audit.verify``), run on the local database or on a remote vault; an export walks the
operation's pages and writes them out as they arrive.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import JsonOpt, emit, fail, out, table
from grantvault_server.cli._invoke import call
from grantvault_server.services import audit_log

audit_cli = typer.Typer(help="The audit trail.", no_args_is_help=True)

#: Events asked for per page of an export (the operation's maximum).
EXPORT_PAGE = 1000

AppFilter = Annotated[
    str | None, typer.Option(help="App name or id, or `system` (default: all you may read).")
]
EventFilter = Annotated[str | None, typer.Option(help="Event, e.g. credential.retrieved.")]
GrantFilter = Annotated[str | None, typer.Option(help="Only this grant.")]
OutcomeFilter = Annotated[str | None, typer.Option(help="success, denied or failure.")]
SinceFilter = Annotated[
    str | None, typer.Option(help="Only the last e.g. 24h, or since an ISO 8601 time.")
]


def _actor(actor: dict[str, Any]) -> str:
    if actor.get("type") == "operator_account":
        return f"operator_account:{actor.get('name', '?')}"
    return audit_log.actor_label(actor)


@audit_cli.command("list")
def audit_list(
    app: AppFilter = None,
    event: EventFilter = None,
    grant: GrantFilter = None,
    outcome: OutcomeFilter = None,
    since: SinceFilter = None,
    limit: Annotated[int, typer.Option(help="At most this many events (1-1000).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show recent audit events, newest first."""
    data = call(
        "audit.list",
        app=app,
        event=event,
        grant_id=grant,
        outcome=outcome,
        since=since,
        limit=limit,
    )
    if as_json:
        emit(data)
    else:
        table(
            "Audit events",
            ["time", "app", "event", "outcome", "actor", "grant", "url"],
            [
                [
                    e["occurred_at"],
                    e["app"],
                    e["event"],
                    e["outcome"],
                    _actor(e["actor"]),
                    e["grant_id"],
                    e["url"],
                ]
                for e in data["events"]
            ],
        )


def _csv_row(event: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in event.items()}


@audit_cli.command("export")
def audit_export(
    app: AppFilter = None,
    event: EventFilter = None,
    grant: GrantFilter = None,
    outcome: OutcomeFilter = None,
    since: SinceFilter = None,
    limit: Annotated[int, typer.Option(help="At most this many events in all.")] = 100_000,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Write CSV.")] = False,
) -> None:
    """Export audit events, newest first (JSON lines by default, or --json / --csv) to stdout."""
    writer = None
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=audit_log.CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
    collected: list[dict[str, Any]] = []
    remaining, cursor = limit, None
    while True:
        page = call(
            "audit.export",
            app=app,
            event=event,
            grant_id=grant,
            outcome=outcome,
            since=since,
            # A limit below 1 goes through as is, so the operation refuses it.
            limit=min(EXPORT_PAGE, remaining),
            cursor=cursor,
        )
        events: list[dict[str, Any]] = page["events"]
        if as_json:
            collected += events
        elif writer is not None:
            writer.writerows(_csv_row(e) for e in events)
        else:
            sys.stdout.writelines(json.dumps(e, default=str) + "\n" for e in events)
        remaining -= len(events)
        cursor = page["next_cursor"]
        if cursor is None or remaining <= 0:
            break
    if as_json:
        emit({"events": collected})


@audit_cli.command("verify")
def audit_verify(
    app: AppFilter = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            help="An earlier `audit verify --json` report: also detect a rollback or a "
            "truncated tail since then."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chains: detects edited, deleted and reordered rows.

    Keep the `--json` report somewhere the database's administrators cannot write; passing
    it back as `--anchor` later also detects a truncated or restored trail.
    """
    anchor_data = None
    if anchor is not None:
        try:
            anchor_data = json.loads(anchor.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read the anchor {anchor}: {exc}", 2)
        if not isinstance(anchor_data, dict):
            fail(f"cannot read the anchor {anchor}: not an `audit verify --json` report", 2)
    report = call("audit.verify", app=app, anchor=anchor_data)
    if as_json:
        emit(report)
    else:
        for chain_report in report["chains"]:
            status = "[green]intact[/]" if not chain_report["problems"] else "[bold red]TAMPERED[/]"
            out.print(f"{chain_report['name']}: {chain_report['events']} events, {status}")
            for p in chain_report["problems"]:
                where = f"seq {p['seq']}" if p["seq"] is not None else "chain"
                out.print(f"  {where}: {p['problem']}")
    if not report["ok"]:
        raise typer.Exit(1)

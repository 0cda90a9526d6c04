"""``grantvault audit``: list, export and verify the audit trail."""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from grantvault_server.cli._common import (
    JsonOpt,
    emit,
    fail,
    out,
    parse_duration,
    run,
    table,
    with_vault,
)
from grantvault_server.services import audit_log

audit_cli = typer.Typer(help="The audit trail.", no_args_is_help=True)

AuditFilters = dict[str, Any]


def _audit_filters(
    app: str | None,
    event: str | None,
    grant: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
) -> AuditFilters:
    return {
        "app": app,
        "event": event,
        "grant_id": grant,
        "outcome": outcome,
        "since": datetime.now(UTC) - parse_duration(since) if since else None,
        "limit": limit,
    }


@audit_cli.command("list")
def audit_list(
    app: Annotated[str | None, typer.Option(help="App name or id (default: all).")] = None,
    event: Annotated[str | None, typer.Option(help="Event, e.g. credential.retrieved.")] = None,
    grant: Annotated[str | None, typer.Option(help="Only this grant.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last e.g. 24h.")] = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Show recent audit events, newest first."""
    filters = _audit_filters(app, event, grant, outcome, since, limit)
    events = run(with_vault(lambda v: audit_log.query(v, **filters)))
    if as_json:
        emit({"events": events})
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
                    audit_log.actor_label(e["actor"]),
                    e["grant_id"],
                    e["url"],
                ]
                for e in events
            ],
        )


@audit_cli.command("export")
def audit_export(
    app: Annotated[str | None, typer.Option(help="App name or id (default: all).")] = None,
    event: Annotated[str | None, typer.Option(help="Event, e.g. credential.retrieved.")] = None,
    grant: Annotated[str | None, typer.Option(help="Only this grant.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last e.g. 24h.")] = None,
    limit: int = 100_000,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Write CSV.")] = False,
) -> None:
    """Export audit events (JSON lines by default, or --json / --csv) to stdout."""
    filters = _audit_filters(app, event, grant, outcome, since, limit)
    events = run(with_vault(lambda v: audit_log.query(v, **filters)))
    if as_json:
        emit({"events": events})
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=audit_log.CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for e in events:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in e.items()}
            )
    else:
        for e in events:
            sys.stdout.write(json.dumps(e, default=str) + "\n")


@audit_cli.command("verify")
def audit_verify(
    app: Annotated[
        str | None, typer.Option(help="App name or id, or `system` (default: every chain).")
    ] = None,
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
    report = run(with_vault(lambda v: audit_log.verify(v, app, anchor=anchor_data)))
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

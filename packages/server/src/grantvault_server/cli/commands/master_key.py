"""``grantvault master-key``: generate, rotate and retire the master key, and its status.

``status`` is an administrative operation (``master-key.status``) like every other, so it
works on a remote vault too. ``rotate`` and ``retire-old`` are not: they need the master key
itself (the key file, or ``GRANTVAULT_MASTER_KEY``) on the server host, write the new key
file there and re-encrypt every row, so they refuse to run in remote mode instead of acting
on whatever local database the shell happens to point at. ``generate`` touches no vault.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from grantvault_server.cli._common import JsonOpt, emit, err, fail, out, run
from grantvault_server.cli._invoke import call, remote_target
from grantvault_server.config import generate_master_key_text, load_settings, write_key_file

master_key_cli = typer.Typer(
    help="The master key that wraps all data keys. `status` works on a remote vault; "
    "`rotate` and `retire-old` run on the server host only.",
    no_args_is_help=True,
)

_ON_THE_HOST = (
    "Run this on the server host, with the vault's master key and database configured "
    "(without --server/--token or GRANTVAULT_SERVER/GRANTVAULT_TOKEN)."
)


def _local_only(command: str) -> None:
    """Refuse in remote mode: the master key never travels over the admin API."""
    if remote_target() is not None:
        fail(
            f"`grantvault master-key {command}` needs the master key files of the server "
            f"host, so it cannot run through the admin API. {_ON_THE_HOST}",
            2,
        )


@master_key_cli.command("status")
def master_key_status(as_json: JsonOpt = False) -> None:
    """Show the master key the vault runs with and where a rotation stands.

    For owners and auditors; works on a remote vault like every other command.
    """
    data = call("master-key.status")
    if as_json:
        emit(data)
        return
    out.print(
        f"Master key   {data['key_id']} (from the {data['key_source']}; "
        f"data key term {data['active_term']})",
        highlight=False,
    )
    for term in data["terms"]:
        out.print(
            f"  term {term['term']}: wrapped by {', '.join(term['master_key_ids'])}",
            highlight=False,
        )
    rotation = data["rotation"]
    if rotation is None:
        out.print("Rotation     none in progress", highlight=False)
    else:
        out.print(
            f"Rotation     {rotation['from_key_id']} -> {rotation['to_key_id']} "
            f"(since {rotation['started_at']})",
            highlight=False,
        )
        out.print(
            "             "
            + (
                "re-encryption unfinished: run `grantvault master-key rotate` again"
                if data["reencryption_pending"]
                else "every row re-encrypted: `grantvault master-key retire-old` can run"
            ),
            highlight=False,
        )
    if data["restart_needed"]:
        out.print("[bold yellow]This server still runs with the old key: restart it.[/]")
    if data["sealed"]:
        out.print(f"[bold red]Sealed:[/] {data['sealed_reason']}", highlight=False)
    out.print(f"Last rotated {data['last_rotated_at'] or 'never'}", highlight=False)


@master_key_cli.command("generate")
def master_key_generate(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file (mode 0600) instead of stdout.")
    ] = None,
) -> None:
    """Generate a new random master key (base64). Touches no vault."""
    text = generate_master_key_text()
    if output:
        if output.exists():
            fail(f"{output} exists; refusing to overwrite a key", 2)
        write_key_file(output, text)
        out.print(f"Wrote a new master key to {output} (mode 0600). Back it up.")
    else:
        sys.stdout.write(text + "\n")


@master_key_cli.command("rotate")
def master_key_rotate(
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="The new key (required when the key comes from GRANTVAULT_MASTER_KEY)."),
    ] = None,
    batch: Annotated[int, typer.Option(help="Rows re-encrypted per transaction.")] = 500,
    stop_after: Annotated[
        int | None, typer.Option(hidden=True, help="Stop after N batches (tests).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rotate the master key online, on the server host: new data key, re-encrypt every row.

    Safe to interrupt: run it again to resume. Servers keep serving throughout; the old key
    stays valid until `grantvault master-key retire-old`. Runs on the server host only (it
    needs the key files there), never through --server / GRANTVAULT_SERVER.
    """
    from grantvault_server.services import rotation

    _local_only("rotate")

    settings = load_settings()
    result = run(
        rotation.rotate(
            settings,
            new_key_file=new_key_file,
            batch=batch,
            stop_after=stop_after,
            progress=_progress(),
        )
    )
    if as_json:
        emit(result)
        return
    if not result["complete"]:
        out.print(
            f"Rotation interrupted after {result['rows_reencrypted']} rows; run the command again "
            "to resume. Every row stays readable with either key."
        )
        return
    out.print(
        f"Re-encrypted {result['rows_reencrypted']} rows under master key {result['new_key_id']} "
        f"(data key term {result['active_term']})."
    )
    if result.get("key_file"):
        out.print(
            f"The new key is in [bold]{result['key_file']}[/] (the previous one is kept as "
            f"{result['key_file']}.prev): [bold]back it up now[/]."
        )
    else:
        out.print("Set GRANTVAULT_MASTER_KEY to the new key everywhere the server runs.")
    out.print(
        "Running servers keep working with the old key. Restart each one with the new key, "
        "then run [bold]grantvault master-key retire-old[/]."
    )


@master_key_cli.command("retire-old")
def master_key_retire_old(as_json: JsonOpt = False) -> None:
    """Forget the previous master key once every server runs with the new one (server host).

    Runs on the server host only, never through --server / GRANTVAULT_SERVER.
    """
    from grantvault_server.services import rotation

    _local_only("retire-old")

    result = run(rotation.retire_old(load_settings()))
    if as_json:
        emit(result)
    else:
        out.print(
            f"Retired master key {result['retired_key_id']}; only {result['active_key_id']} "
            "opens this vault now. Servers still running with the old key seal themselves."
        )


def _progress() -> Callable[[str, int], None]:
    def report(stage: str, count: int) -> None:
        err.print(f"[dim]{stage}: {count}[/]")

    return report

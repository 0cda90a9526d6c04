"""``grantvault master-key``: generate, rotate and retire the master key."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from grantvault_server.cli._common import JsonOpt, emit, err, fail, out, run
from grantvault_server.config import generate_master_key_text, load_settings, write_key_file

master_key_cli = typer.Typer(help="The master key that wraps all data keys.", no_args_is_help=True)


@master_key_cli.command("generate")
def master_key_generate(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file (mode 0600) instead of stdout.")
    ] = None,
) -> None:
    """Generate a new random master key (base64)."""
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
    """Rotate the master key online: new data key, re-encrypt every row.

    Safe to interrupt: run it again to resume. Servers keep serving throughout; the old key
    stays valid until `grantvault master-key retire-old`.
    """
    from grantvault_server.services import rotation

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
    """Forget the previous master key once every server runs with the new one."""
    from grantvault_server.services import rotation

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

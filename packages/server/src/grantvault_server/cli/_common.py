"""Pieces shared by every ``grantvault`` command: consoles, output helpers, option types and
the mapping from errors to exit codes.

Results go to stdout (``out``, or ``emit`` for ``--json``: exactly one JSON object);
messages and errors go to stderr (``err``). ``fail`` and ``run`` set the exit code:
1 for a refused operation, 2 for bad configuration or usage, 3 for a wrong master key.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from grantvault_server.config import ConfigError, load_settings
from grantvault_server.crypto.barrier import BarrierError
from grantvault_server.errors import VaultError
from grantvault_server.services.vault import Vault

T = TypeVar("T")

out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
AppOpt = Annotated[str, typer.Option("--app", help="App name or id.")]


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as an error on stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn the errors an operator can act on into a message and
    an exit code (2 configuration, 3 wrong master key, 1 refused) instead of a traceback."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(str(exc), 2)
    except BarrierError as exc:
        fail(f"{exc}", 3)
    except VaultError as exc:
        fail(exc.message, 1)
    except IntegrityError:
        fail("the database refused the change (a conflicting row exists); nothing was changed", 1)
    raise AssertionError("unreachable")


async def with_vault(action: Callable[[Vault], Awaitable[T]], *, migrate: bool | None = None) -> T:
    settings = load_settings()
    vault = await Vault.start(settings, migrate_schema=migrate)
    if vault.key_generated:
        err.print(
            f"[bold yellow]Created a new vault in {settings.data_dir.resolve()}[/] (SQLite database "
            "and master key). Back up master.key; set GRANTVAULT_DATA_DIR to use another vault."
        )
    try:
        return await action(vault)
    finally:
        await vault.close()


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 30s, 15m, 12h, 90d")
    value, unit = int(match.group(1)), match.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: value})


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out.print(t)

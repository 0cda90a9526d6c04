"""``grantvault db``: the database schema."""

from __future__ import annotations

import typer

from grantvault_server.cli._common import out, run, with_vault
from grantvault_server.services.vault import Vault

db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (needed for PostgreSQL; SQLite is migrated by `serve`)."""
    from grantvault_server.storage import migrate

    async def action(vault: Vault) -> str:
        return await migrate.current_revision(vault.db) or "none"

    revision = run(with_vault(action, migrate=True))
    out.print(f"Database schema is at revision [bold]{revision}[/].")

"""``grantvault serve``: run the vault server, with a welcome banner on stderr."""

from __future__ import annotations

import errno
import gc
import socket
from typing import Annotated, Any

import typer
from rich.panel import Panel

from grantvault_server.cli._common import err, fail, run
from grantvault_server.config import ConfigError, load_settings
from grantvault_server.services.vault import Vault


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (GRANTVAULT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (GRANTVAULT_PORT).")] = None,
) -> None:
    """Run the vault server (migrates the embedded SQLite database automatically)."""
    import uvicorn

    from grantvault_server import outbound
    from grantvault_server.app import create_app
    from grantvault_server.observability import configure_logging

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    configure_logging(settings.log_level, settings.log_format)
    outbound.warn_ignored_environment(settings.ca_bundle)
    sock = _listen_socket(settings.host, settings.port)

    async def main() -> None:
        vault = await Vault.start(settings)
        try:
            _welcome(vault)
            # Start-up objects (modules, routes, templates) live for the whole process: move
            # them out of the collector's way, and collect young objects less often. Request
            # handling allocates many short-lived objects; the default thresholds spent
            # noticeable time in collections that found nothing to free.
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            config = uvicorn.Config(
                # The app closes the vault in its shutdown: uvicorn re-raises SIGTERM after
                # shutting down, so code after serve() may never run.
                create_app(vault=vault, close_vault=True),
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                server_header=False,
                # Longer than the clients' pool expiry (httpx 5 s, SDKs 30 s): the client
                # drops an idle connection first, so no request is sent on one the server is
                # closing at that moment (it would get no answer).
                timeout_keep_alive=settings.keep_alive_seconds,
                # X-Forwarded-For is applied by the app itself (app._install_middleware, with
                # GRANTVAULT_TRUSTED_PROXIES), so tests and servers share one rule.
                proxy_headers=False,
            )
            await uvicorn.Server(config).serve(sockets=[sock])
        finally:
            sock.close()
            await vault.close()

    run(main())


def _listen_socket(host: str, port: int) -> socket.socket:
    """Claim the listening socket before anything is started or printed.

    uvicorn binds only after start-up, so a port already in use showed the "listening"
    banner first and then a log line; a newcomer read the banner. Binding (and listening)
    here turns the conflict into one error and a non-zero exit, and the socket is handed to
    uvicorn as is.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        found = []
    if not found:
        fail(f"cannot listen on {host}:{port}: {host!r} does not resolve (--host)", 2)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what uvicorn sets too
    try:
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"port {port} on {host} is already in use (another `grantvault serve`?); "
                "stop that process or choose another port with --port or GRANTVAULT_PORT",
                2,
            )
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
    sock.set_inheritable(True)
    return sock


def _welcome(vault: Vault) -> None:
    s = vault.settings
    lines = [
        f"Grantvault is listening on [bold]{s.effective_public_base_url}[/]",
        f"Database: {'embedded SQLite in ' + str(s.data_dir) if s.is_embedded else 'configured URL'}",
        "",
        "Next steps (in another terminal):",
        "  grantvault apps create demo",
        "  grantvault keys create --app demo",
        "  grantvault secrets create --app demo --template openai",
        "  printf '%s' \"$OPENAI_KEY\" | grantvault secrets set-credential <id> --stdin",
        "  grantvault grants create --secret <id> --principal system",
        "",
        f"Then point the SDK at it: ALTER_BASE_URL={s.effective_public_base_url}",
    ]
    err.print(Panel("\n".join(lines), title="Grantvault", expand=False))
    if vault.key_generated:
        err.print(
            Panel(
                f"A new master key was generated at [bold]{s.data_dir / 'master.key'}[/] (mode 0600).\n"
                "BACK IT UP NOW. Without it, nothing in this vault can ever be decrypted.",
                title="[bold red]master key created[/]",
                border_style="red",
                expand=False,
            )
        )

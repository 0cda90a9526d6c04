"""The one Jinja environment of the hosted pages, and the responses built with it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from grantvault_server.services.vault import Vault
from grantvault_server.web.security import HeaderPolicy, protect

HERE = Path(__file__).resolve().parent
#: Where the static files are served (the popup widget and the pages load them from here).
STATIC_PATH = "/connect/static"

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def page(name: str, policy: HeaderPolicy, status: int = 200, **context: Any) -> Response:
    """Render ``templates/<name>`` with the security headers of ``policy`` (and a fresh
    ``csp_nonce`` for a policy with an inline style)."""
    nonce = secrets.token_urlsafe(16) if policy.inline_style else None
    html = templates.get_template(name).render(csp_nonce=nonce, **context)
    return protect(HTMLResponse(html, status_code=status), policy, style_nonce=nonce)


def redirect(url: str, policy: HeaderPolicy) -> Response:
    """A 303 to ``url`` with the security headers of ``policy``."""
    return protect(RedirectResponse(url, status_code=303), policy)


def vault_of(request: Request) -> Vault:
    """The vault the application serves."""
    vault: Vault = request.app.state.vault
    return vault

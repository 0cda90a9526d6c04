"""Every HTML page the vault serves (audience: end users' browsers, not SDKs).

One Jinja environment and one base layout (:mod:`.pages`, ``templates/base.html``), one
security-header policy and one CSRF helper (:mod:`.security`), and the routers of the
hosted flows: Connect (:mod:`.connect`) and the sign-in broker (:mod:`.signin`). The flows'
steps are application services (``services.connect``, ``services.signin``) on the
hosted-session engine (``services.hosted_sessions``); the JSON routes stay in ``api``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from grantvault_server.web import connect, signin
from grantvault_server.web.pages import STATIC_PATH, static_files

router = APIRouter(include_in_schema=False)
router.include_router(connect.router)
router.include_router(signin.router)


def mount(app: FastAPI) -> None:
    """Add the hosted pages and their static files (the widget loads them from
    ``/connect/static``) to ``app``."""
    app.include_router(router)
    app.mount(STATIC_PATH, static_files(), name="connect-static")

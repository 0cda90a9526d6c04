"""The operator portal (``/portal/``): server-rendered pages for the people who run the vault.

* **Sign-in** (``/portal/login``, then ``/portal/login/totp`` for an operator with a second
  factor) through ``services.operators``; the session lives in an HttpOnly, ``SameSite=Strict``
  cookie scoped to ``/portal`` (``Secure`` over https) and is checked on every request by
  ``services.portal_sessions`` (idle and absolute timeouts, sign-out everywhere, disabled
  operators). Both sign-in steps spend the client IP's rate-limit budget (``ratelimit``).
* **Every change goes through the administrative operations** (``services.admin``), the very
  handlers the admin API and the CLI run, so authorisation, validation and audit are the same;
  a refusal by role or app scope leaves the same ``admin.refused`` row. Pages hide the forms a
  role may not use, and the server refuses them anyway.
* **Every form carries a CSRF token** derived from the browser's cookie (the session, or
  before sign-in a random login cookie), which a cross-site page can neither read nor set.
  Nothing is changed by a GET; destructive actions confirm on a page naming the object.
* **Every response carries the vault's security headers** (:data:`~.security.PORTAL`: no
  inline script or style, one stylesheet, one small script for copy buttons).
* **Secrets are shown once**: a minted API key, a TOTP seed while enrolling, recovery codes;
  they appear only in the answer to the POST that made them, never in a later page.
* Every page shows the CLI command and the admin API route that do the same thing.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode

import segno
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import Response

from grantvault.types.errors import ErrorCode
from grantvault_server.errors import InvalidInput, VaultError
from grantvault_server.services import (
    operator_sso,
    operators as operator_service,
    portal_overview,
    portal_sessions,
)
from grantvault_server.services.admin.catalog import load_all
from grantvault_server.services.admin.refusals import audit_refusal
from grantvault_server.services.admin.registry import OpContext
from grantvault_server.services.operators import Principal
from grantvault_server.services.portal_sessions import PortalSession, SessionEnded
from grantvault_server.services.vault import Vault
from grantvault_server.timefmt import iso
from grantvault_server.web import pages
from grantvault_server.web.security import PORTAL, csrf_ok, csrf_token

router = APIRouter(include_in_schema=False)

COOKIE = "gv_portal"
COOKIE_PATH = "/portal"
#: Binds the sign-in form to the browser that loaded it (login CSRF), before any session.
LOGIN_COOKIE = "gv_portal_login"
LOGIN_COOKIE_PATH = "/portal/login"
CSRF_PURPOSE = "portal"
ADMIN_API = "/admin/v1"
#: Every administrative operation (importing the catalog registers them).
OPERATIONS = load_all()
PAGE_SIZE = 25

#: Overlap windows and lifetimes offered in the key forms (the CLI takes any duration).
OVERLAPS = [("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days")]
LIFETIMES = [("30d", "30 days"), ("90d", "90 days"), ("365d", "1 year")]
EXPIRIES = [("0s", "now"), ("1h", "in 1 hour"), ("24h", "in 24 hours"), ("7d", "in 7 days")]
EXPIRIES += [("30d", "in 30 days"), ("90d", "in 90 days")]
ROLES = [
    ("owner", "Owner: everything, including operators"),
    ("admin", "Admin: everything inside its apps"),
    ("auditor", "Auditor: reads and verifies, changes nothing"),
]

#: What a page says after a redirect (``?done=``): fixed words, never text from the URL.
NOTICES = {
    "app_created": "App created. Mint its first API key below.",
    "key_revoked": "The key was revoked. Requests signed with it are refused from now on.",
    "key_expiry_set": "The key's expiry was set.",
    "operator_created": "Operator created. They can sign in at /portal/login.",
    "operator_updated": "Operator updated.",
    "operator_disabled": "Operator disabled: their sessions and tokens stopped working.",
    "operator_enabled": "Operator enabled: they can sign in again.",
    "operator_unlocked": "Sign-in lockout lifted.",
}

KEY_STATUS = {
    "active": "Active",
    "rotating": "Rotating",
    "rotated_expired": "Replaced",
    "expired": "Expired",
    "revoked": "Revoked",
}


# --------------------------------------------------------------------------- plumbing


def vault_for(request: Request) -> Vault:
    return pages.vault_of(request)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(
    request: Request, response: Response, name: str, value: str, *, path: str, max_age: int
) -> None:
    """HttpOnly, SameSite=Strict (no cross-site request carries it), Secure over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request)
    )


def see_other(url: str) -> Response:
    return pages.redirect(url, PORTAL)


def client_address_of(request: Request) -> str | None:
    return request.client.host if request.client else None


@dataclass(frozen=True)
class When:
    """A time as pages show it: relative, with the exact UTC time on hover."""

    iso: str
    exact: str
    rel: str


def when(value: datetime | str | None, now: datetime) -> When | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = (value - now).total_seconds()
    size = abs(seconds)
    if size < 45:
        rel = "just now"
    else:
        # 45 s and more is at least "1 minute": the last unit always matches.
        units = (("day", 86400), ("hour", 3600), ("minute", 60))
        unit, length = next((u, n) for u, n in units if size >= n * 0.75)
        count = max(1, round(size / length))
        words = f"{count} {unit}{'s' if count != 1 else ''}"
        rel = f"in {words}" if seconds > 0 else f"{words} ago"
    return When(iso(value) or "", value.strftime("%Y-%m-%d %H:%M:%S UTC"), rel)


@dataclass(frozen=True)
class Automation:
    """One line of a page's "do this from the command line" box."""

    what: str
    cli: str
    api: str | None
    #: Only reads: shown to every role (an auditor sees no command it may not run).
    reads: bool


def automation(what: str, cli: str, op_name: str, **values: str) -> Automation:
    """The CLI command and, when the operation is registered, its admin API route."""
    op = OPERATIONS.get(op_name)
    api = f"{op.method} {ADMIN_API}{op.url(values)}" if op is not None else None
    reads = op.method == "GET" if op is not None else op_name.endswith((".list", ".show"))
    return Automation(what, cli, api, reads)


@dataclass(frozen=True)
class Auth:
    """A signed-in browser: its live session and the cookie value (for the CSRF token)."""

    vault: Vault
    session: PortalSession
    cookie: str

    @property
    def principal(self) -> Principal:
        return self.session.principal

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookie, CSRF_PURPOSE)

    @property
    def can_write(self) -> bool:
        return self.principal.role in ("owner", "admin")

    @property
    def can_create_apps(self) -> bool:
        return self.can_write and self.principal.apps is None

    @property
    def is_owner(self) -> bool:
        return self.principal.role == "owner"


async def session_auth(
    request: Request, *, step: Literal["signed_in", "second_factor", "any"] = "signed_in"
) -> Auth | Response:
    """The signed-in browser, or the redirect to where it must go (sign-in, the TOTP step).

    ``step``: a fully signed-in session (every page), one waiting for its second factor (the
    TOTP step), or either (signing out).
    """
    vault = vault_for(request)
    cookie = request.cookies.get(COOKIE)
    try:
        session = await portal_sessions.resolve(vault, cookie)
    except SessionEnded as ended:
        target = "/portal/login"
        if ended.reason in portal_sessions.ENDED_MESSAGES and ended.reason != "revoked":
            target += f"?ended={ended.reason}"
        response = see_other(target)
        if cookie is not None:
            _clear_cookie(request, response)
        return response
    assert cookie is not None
    if session.pending_mfa and step == "signed_in":
        return see_other("/portal/login/totp")
    if not session.pending_mfa and step == "second_factor":
        return see_other("/portal/")
    return Auth(vault, session, cookie)


def csrf_refused(auth: Auth | None = None) -> Response:
    return error_page(
        auth,
        VaultError(
            ErrorCode.FORBIDDEN,
            "This form's security token is missing or out of date, so nothing was changed. "
            "Reload the page and submit the form again.",
        ),
    )


async def posted_form(
    request: Request, *, sudo_back: str | None = None
) -> tuple[Auth, FormData] | Response:
    """A form post from a signed-in browser with the right CSRF token; with ``sudo_back`` (the
    page to return to) a dangerous one, which needs sudo mode (``/portal/sudo``)."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not csrf_ok(sent, auth.cookie, CSRF_PURPOSE):
        return csrf_refused(auth)
    if sudo_back is not None and not portal_sessions.sudo_active(auth.vault, auth.session):
        return see_other("/portal/sudo?" + urlencode({"next": sudo_back}))
    return auth, form


def form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def run_operation(auth: Auth, operation: str, **params: Any) -> dict[str, Any]:
    """Run the administrative operation ``operation`` as the signed-in operator.

    The same handler, validation, authorisation and audit as ``/admin/v1``; a refusal by role
    or app scope is recorded as ``admin.refused`` before it is shown.
    """
    op = OPERATIONS[operation]
    values = {k: v for k, v in params.items() if v is not None}
    try:
        checked = op.params.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(problems) from None
    ctx = OpContext(auth.vault, auth.principal, auth.principal.actor)
    try:
        return await op.handler(ctx, checked)
    except VaultError as exc:
        if exc.code is ErrorCode.FORBIDDEN:
            await audit_refusal(auth.vault, auth.principal, operation, values, exc)
        raise


def _nav(auth: Auth) -> list[tuple[str, str]]:
    items = [("overview", "/portal/"), ("apps", "/portal/apps"), ("audit", "/portal/audit")]
    if auth.is_owner:
        items.append(("operators", "/portal/operators"))
    items.append(("account", "/portal/account"))
    return items


#: The tabs of an app's pages: (section, label, path under /portal/apps/{app}).
APP_TABS = (
    ("keys", "API keys", ""),
    ("secrets", "Secrets", "/secrets"),
    ("grants", "Grants", "/grants"),
    ("policies", "Policies", "/policies"),
    ("providers", "OAuth providers", "/providers"),
    ("identity", "Identity", "/identity"),
    ("users", "Users & groups", "/users"),
    ("audit", "Audit", "/audit"),
)


def render(
    auth: Auth | None,
    template: str,
    *,
    section: str = "",
    status: int = 200,
    error: VaultError | None = None,
    **context: Any,
) -> Response:
    """Render ``portal/<template>`` with what every page shows (who, the nav, the token)."""
    now = auth.vault.clock.now() if auth is not None else datetime.now(UTC)
    # A session waiting for its second factor gets no navigation: it may only finish signing in.
    signed_in = auth is not None and not auth.session.pending_mfa
    common: dict[str, Any] = {
        "auth": auth,
        "me": auth.principal.operator if auth is not None and signed_in else None,
        "role": auth.principal.role if auth is not None else None,
        "csrf": auth.csrf if auth is not None else "",
        "nav": _nav(auth) if auth is not None and signed_in else [],
        "app_tabs": APP_TABS,
        "section": section,
        "static": pages.STATIC_PATH,
        "error": error,
        "when": lambda value: when(value, now),
    }
    if auth is not None and not auth.can_write and "cli" in context:
        context["cli"] = [a for a in context["cli"] if a.reads]
    response = pages.page(f"portal/{template}", PORTAL, status, **common, **context)
    if error is not None and error.headers:
        response.headers.update(error.headers)  # Retry-After of account_locked
    return response


def error_page(auth: Auth | None, error: VaultError, back: str = "/portal/") -> Response:
    return render(auth, "error.html", status=error.status, error=error, back=back)


def notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


def paginate(items: list[Any], request: Request) -> tuple[list[Any], dict[str, Any]]:
    """One page of ``items`` (``?page=``, 1-based) and what the pager shows."""
    raw = request.query_params.get("page", "1")
    pages_total = max(1, math.ceil(len(items) / PAGE_SIZE))
    number = min(max(int(raw) if raw.isdigit() else 1, 1), pages_total)
    start = (number - 1) * PAGE_SIZE
    return items[start : start + PAGE_SIZE], {"page": number, "pages": pages_total}


# --------------------------------------------------------------------------- sign-in


def _login_page(
    request: Request,
    *,
    status: int = 200,
    error: VaultError | None = None,
    name: str = "",
    message: str | None = None,
) -> Response:
    browser = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        None,
        "login.html",
        status=status,
        error=error,
        csrf_login=csrf_token(browser, "portal-login"),
        typed_name=name,
        message=message,
        sso=operator_sso.configured(vault_for(request).settings),
        cli=[
            automation(
                "Create an operator (on the server host, the first owner)",
                "grantvault operators create alice --role owner --password-stdin",
                "operators.create",
            )
        ],
    )
    _set_cookie(request, response, LOGIN_COOKIE, browser, path=LOGIN_COOKIE_PATH, max_age=3600)
    return response


@router.get("/portal")
async def portal_root() -> Response:
    return see_other("/portal/")


@router.get("/portal/login")
async def login_form(request: Request) -> Response:
    vault = vault_for(request)
    try:
        session = await portal_sessions.resolve(vault, request.cookies.get(COOKIE))
    except SessionEnded:
        ended = request.query_params.get("ended", "")
        return _login_page(request, message=portal_sessions.ENDED_MESSAGES.get(ended))
    return see_other("/portal/login/totp" if session.pending_mfa else "/portal/")


@router.post("/portal/login")
async def login(request: Request) -> Response:
    vault = vault_for(request)
    form = await request.form()
    browser = request.cookies.get(LOGIN_COOKIE)
    sent = form.get("csrf")
    if not browser or not isinstance(sent, str) or not csrf_ok(sent, browser, "portal-login"):
        return _login_page(
            request,
            status=403,
            error=VaultError(
                ErrorCode.FORBIDDEN,
                "The sign-in form expired or did not come from this page. Sign in again.",
            ),
        )
    name = form_text(form, "name")
    password = form.get("password")
    try:
        if not name or not isinstance(password, str) or not password:
            raise VaultError(ErrorCode.LOGIN_FAILED, "Enter your operator name and password.")
        signed = await operator_service.sign_in_password(
            vault, name, password, address=client_address_of(request)
        )
    except VaultError as exc:
        return _login_page(request, status=exc.status, error=exc, name=name)
    cookie, session = await portal_sessions.start(
        vault, signed.operator, pending_mfa=signed.needs_second_factor
    )
    response = see_other("/portal/login/totp" if session.pending_mfa else "/portal/")
    lifetime = session.expires_at - session.created_at
    _set_cookie(
        request,
        response,
        COOKIE,
        cookie,
        path=COOKIE_PATH,
        max_age=int(lifetime.total_seconds()),
    )
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_COOKIE_PATH)
    return response


def _totp_page(auth: Auth, *, status: int = 200, error: VaultError | None = None) -> Response:
    return render(auth, "totp.html", status=status, error=error, cli=[])


@router.get("/portal/login/totp")
async def totp_form(request: Request) -> Response:
    auth = await session_auth(request, step="second_factor")
    if isinstance(auth, Response):
        return auth
    return _totp_page(auth)


@router.post("/portal/login/totp")
async def totp(request: Request) -> Response:
    auth = await session_auth(request, step="second_factor")
    if isinstance(auth, Response):
        return auth
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not csrf_ok(sent, auth.cookie, CSRF_PURPOSE):
        return _totp_page(
            auth,
            status=403,
            error=VaultError(
                ErrorCode.FORBIDDEN, "The form expired. Enter the code from your app again."
            ),
        )
    try:
        await operator_service.verify_second_factor(
            auth.vault,
            auth.session.operator.id,
            form_text(form, "code"),
            address=client_address_of(request),
        )
    except VaultError as exc:
        return _totp_page(auth, status=exc.status, error=exc)
    cookie, session = await portal_sessions.complete_second_factor(auth.vault, auth.session)
    response = see_other("/portal/")
    lifetime = session.expires_at - session.created_at
    _set_cookie(
        request, response, COOKIE, cookie, path=COOKIE_PATH, max_age=int(lifetime.total_seconds())
    )
    return response


@router.post("/portal/logout")
async def logout(request: Request) -> Response:
    auth = await session_auth(request, step="any")
    if isinstance(auth, Response):
        return auth
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not csrf_ok(sent, auth.cookie, CSRF_PURPOSE):
        return csrf_refused(auth)
    await portal_sessions.sign_out(auth.vault, auth.session)
    response = see_other("/portal/login?ended=revoked")
    _clear_cookie(request, response)
    return response


# --------------------------------------------------------------------------- overview


@router.get("/portal/")
async def overview(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    summaries = await portal_overview.app_summaries(auth.vault, auth.principal)
    activity = await portal_overview.recent_activity(
        auth.vault, auth.principal, [a.app_id for a in summaries]
    )
    totals = {
        "apps": len(summaries),
        "api_keys": sum(a.active_keys for a in summaries),
        "grants": sum(a.active_grants for a in summaries),
        "secrets": sum(a.secrets for a in summaries),
    }
    return render(
        auth,
        "overview.html",
        section="overview",
        apps=summaries,
        activity=activity,
        totals=totals,
        cli=[
            automation("List apps", "grantvault apps list --json", "apps.list"),
            automation(
                "Recent denials",
                "grantvault audit list --outcome denied --since 24h --json",
                "audit.list",
            ),
        ],
    )


# --------------------------------------------------------------------------- account


async def _account_page(
    auth: Auth, *, status: int = 200, error: VaultError | None = None
) -> Response:
    me = auth.principal.operator.name
    scoped = auth.principal.apps is not None
    visible = (
        [a["name"] for a in (await run_operation(auth, "apps.list"))["apps"]] if scoped else None
    )
    return render(
        auth,
        "account.html",
        section="account",
        status=status,
        error=error,
        my_apps=visible,
        cli=[
            automation(
                "Show this account",
                f"grantvault operators show {me} --json",
                "operators.show",
                operator=me,
            ),
            automation(
                "Create a personal API token",
                f"grantvault operators token create {me} --name laptop --json",
                "operators.token.create",
                operator=me,
            ),
        ],
    )


@router.get("/portal/account")
async def account(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _account_page(auth)


def _qr_svg(uri: str) -> str:
    """The provisioning URI as an SVG QR code (markup only: no script, no style)."""
    svg: str = segno.make(uri, error="m").svg_inline(scale=5, border=2, dark="#111", light="#fff")
    return svg.replace(
        "<svg ",
        '<svg role="img" aria-label="QR code of the two-factor secret" focusable="false" ',
        1,
    )


def _enrol_page(
    auth: Auth, uri: str, *, status: int = 200, error: VaultError | None = None
) -> Response:
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render(
        auth,
        "enrol.html",
        section="account",
        status=status,
        error=error,
        secret=grouped,
        uri=uri,
        qr=_qr_svg(uri),
        cli=[],
    )


@router.post("/portal/account/totp")
async def totp_begin(request: Request) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, _ = posted
    try:
        uri = await operator_service.begin_totp(auth.vault, auth.principal.operator.id)
    except VaultError as exc:
        return await _account_page(auth, status=exc.status, error=exc)
    return _enrol_page(auth, uri)


@router.post("/portal/account/totp/confirm")
async def totp_confirm(request: Request) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    operator_id = auth.principal.operator.id
    try:
        codes = await operator_service.confirm_totp(
            auth.vault, operator_id, form_text(form, "code")
        )
    except VaultError as exc:
        uri = await portal_sessions.pending_totp_uri(auth.vault, operator_id)
        if uri is None:
            return await _account_page(auth, status=exc.status, error=exc)
        return _enrol_page(auth, uri, status=exc.status, error=exc)
    return render(auth, "recovery.html", section="account", codes=codes, cli=[])


@router.post("/portal/account/sign-out-everywhere")
async def sign_out_everywhere(request: Request) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, _ = posted
    await portal_sessions.sign_out_everywhere(auth.vault, auth.principal.operator.id)
    response = see_other("/portal/login?ended=signed_out")
    _clear_cookie(request, response)
    return response


# --------------------------------------------------------------------------- apps


async def _apps_page(
    request: Request,
    auth: Auth,
    *,
    status: int = 200,
    error: VaultError | None = None,
    name: str = "",
) -> Response:
    listed = await run_operation(auth, "apps.list")
    summaries = {
        s.app_id: s for s in await portal_overview.app_summaries(auth.vault, auth.principal)
    }
    query = request.query_params.get("q", "").strip().lower()
    rows = [
        {**a, "summary": summaries.get(a["app_id"])}
        for a in listed["apps"]
        if not query or query in a["name"]
    ]
    shown, pager = paginate(rows, request)
    return render(
        auth,
        "apps.html",
        section="apps",
        status=status,
        error=error,
        notice=notice(request),
        apps=shown,
        total=len(listed["apps"]),
        query=query,
        pager=pager,
        typed_name=name,
        cli=[
            automation("List apps", "grantvault apps list --json", "apps.list"),
            automation("Create an app", "grantvault apps create demo --json", "apps.create"),
        ],
    )


@router.get("/portal/apps")
async def apps(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _apps_page(request, auth)


@router.post("/portal/apps")
async def apps_create(request: Request) -> Response:
    posted = await posted_form(request)
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    name = form_text(form, "name")
    try:
        created = await run_operation(auth, "apps.create", name=name)
    except VaultError as exc:
        if exc.code is ErrorCode.FORBIDDEN:
            return error_page(auth, exc, back="/portal/apps")
        return await _apps_page(request, auth, status=exc.status, error=exc, name=name)
    return see_other(f"/portal/apps/{quote(created['name'], safe='')}?done=app_created")


def _key_cli(app: str, key_id: str = "KEY_ID") -> list[Automation]:
    return [
        automation("List keys", f"grantvault keys list --app {app} --json", "keys.list", app=app),
        automation(
            "Mint a key",
            f"grantvault keys create --app {app} --name ci --expires-in 90d --json",
            "keys.create",
            app=app,
        ),
        automation(
            "Rotate with a 7-day overlap",
            f"grantvault keys rotate {key_id} --app {app} --overlap 7d --json",
            "keys.rotate",
            app=app,
            key_id=key_id,
        ),
        automation(
            "Set an expiry",
            f"grantvault keys expire {key_id} --app {app} --in 30d --json",
            "keys.expire",
            app=app,
            key_id=key_id,
        ),
        automation(
            "Revoke",
            f"grantvault keys revoke {key_id} --app {app} --json",
            "keys.revoke",
            app=app,
            key_id=key_id,
        ),
    ]


async def _app_page(
    request: Request,
    auth: Auth,
    app: str,
    *,
    status: int = 200,
    error: VaultError | None = None,
    minted: dict[str, Any] | None = None,
) -> Response:
    try:
        listed = await run_operation(auth, "keys.list", app=app)
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/apps")
    app_info = await _app_info(auth, app)
    wanted = request.query_params.get("status", "")
    keys = [k for k in listed["keys"] if not wanted or k["status"] == wanted]
    shown, pager = paginate(keys, request)
    return render(
        auth,
        "app.html",
        section="apps",
        status=status,
        error=error,
        notice=notice(request),
        app=app_info,
        keys=shown,
        all_keys=len(listed["keys"]),
        status_filter=wanted,
        statuses=KEY_STATUS,
        pager=pager,
        minted=minted,
        lifetimes=LIFETIMES,
        cli=_key_cli(app_info["name"]),
    )


async def _app_info(auth: Auth, app: str) -> dict[str, Any]:
    listed = await run_operation(auth, "apps.list")
    found = next((a for a in listed["apps"] if app in (a["name"], a["app_id"])), None)
    return found or {"name": app, "app_id": app, "created_at": None}


@router.get("/portal/apps/{app}")
async def app_page(request: Request, app: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _app_page(request, auth, app)


async def act(
    request: Request, app: str, operation: str, *, sudo: bool = False, **params: Any
) -> tuple[Auth, dict[str, Any]] | Response:
    """Post a form that runs ``operation`` on ``app``; an error re-renders the app page."""
    posted = await posted_form(
        request, sudo_back=f"/portal/apps/{quote(app, safe='')}" if sudo else None
    )
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    values = {k: (v(form) if callable(v) else v) for k, v in params.items()}
    try:
        return auth, await run_operation(auth, operation, app=app, **values)
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back=f"/portal/apps/{quote(app, safe='')}")
        return await _app_page(request, auth, app, status=exc.status, error=exc)


def form_field(name: str, *, empty_is_none: bool = True) -> Callable[[FormData], str | None]:
    def read(form: FormData) -> str | None:
        value = form_text(form, name)
        return None if empty_is_none and not value else value

    return read


@router.post("/portal/apps/{app}/keys")
async def key_create(request: Request, app: str) -> Response:
    done = await act(
        request,
        app,
        "keys.create",
        sudo=True,
        name=form_field("name"),
        expires_in=form_field("expires_in"),
    )
    if isinstance(done, Response):
        return done
    auth, minted = done
    return await _app_page(request, auth, app, minted={**minted, "title": "Your new API key"})


async def _key(auth: Auth, app: str, key_id: str) -> dict[str, Any]:
    listed = await run_operation(auth, "keys.list", app=app)
    for key in listed["keys"]:
        if key["key_id"] == key_id:
            found: dict[str, Any] = key
            return found
    raise VaultError(ErrorCode.NOT_FOUND, f"No key {key_id!r} in this app.")


async def _key_view(
    request: Request, app: str, key_id: str, template: str, cli_from: int, **context: Any
) -> Response:
    """A page about one key (its detail, its revoke confirmation), or the error page."""
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    try:
        key = await _key(auth, app, key_id)
    except VaultError as exc:
        return error_page(auth, exc, back=f"/portal/apps/{quote(app, safe='')}")
    return render(
        auth,
        template,
        section="apps",
        app=await _app_info(auth, app),
        key=key,
        cli=_key_cli(app, key_id)[cli_from:],
        **context,
    )


@router.get("/portal/apps/{app}/keys/{key_id}")
async def key_page(request: Request, app: str, key_id: str) -> Response:
    return await _key_view(
        request,
        app,
        key_id,
        "key.html",
        2,
        statuses=KEY_STATUS,
        overlaps=OVERLAPS,
        expiries=EXPIRIES,
    )


@router.post("/portal/apps/{app}/keys/{key_id}/rotate")
async def key_rotate(request: Request, app: str, key_id: str) -> Response:
    done = await act(
        request,
        app,
        "keys.rotate",
        sudo=True,
        key_id=key_id,
        overlap=form_field("overlap", empty_is_none=False),
    )
    if isinstance(done, Response):
        return done
    auth, minted = done
    return await _app_page(
        request, auth, app, minted={**minted, "title": "The replacement API key"}
    )


@router.post("/portal/apps/{app}/keys/{key_id}/expire")
async def key_expire(request: Request, app: str, key_id: str) -> Response:
    done = await act(
        request,
        app,
        "keys.expire",
        key_id=key_id,
        expires_in=form_field("expires_in", empty_is_none=False),
    )
    if isinstance(done, Response):
        return done
    return see_other(f"/portal/apps/{quote(app, safe='')}?done=key_expiry_set")


@router.get("/portal/apps/{app}/keys/{key_id}/revoke")
async def key_revoke_confirm(request: Request, app: str, key_id: str) -> Response:
    """The confirmation step: names the key; the POST below revokes it."""
    return await _key_view(request, app, key_id, "revoke.html", 4)


@router.post("/portal/apps/{app}/keys/{key_id}/revoke")
async def key_revoke(request: Request, app: str, key_id: str) -> Response:
    done = await act(request, app, "keys.revoke", sudo=True, key_id=key_id)
    if isinstance(done, Response):
        return done
    return see_other(f"/portal/apps/{quote(app, safe='')}?done=key_revoked")


# --------------------------------------------------------------------------- operators


def _operators_cli() -> list[Automation]:
    return [
        automation("List operators", "grantvault operators list --json", "operators.list"),
        automation(
            "Create an operator",
            "grantvault operators create bob --role admin --apps demo --password-stdin --json",
            "operators.create",
        ),
    ]


async def _operators_page(
    request: Request,
    auth: Auth,
    *,
    status: int = 200,
    error: VaultError | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    try:
        listed = await run_operation(auth, "operators.list")
    except VaultError as exc:
        return error_page(auth, exc)
    apps_listed = await run_operation(auth, "apps.list")
    names = {a["app_id"]: a["name"] for a in apps_listed["apps"]}
    shown, pager = paginate(listed["operators"], request)
    return render(
        auth,
        "operators.html",
        section="operators",
        status=status,
        error=error,
        notice=notice(request),
        operators=shown,
        pager=pager,
        app_names=names,
        all_apps=apps_listed["apps"],
        roles=ROLES,
        form=form or {"role": "admin", "apps": []},
        cli=_operators_cli(),
    )


@router.get("/portal/operators")
async def operators_list(request: Request) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _operators_page(request, auth)


@router.post("/portal/operators")
async def operators_create(request: Request) -> Response:
    posted = await posted_form(request, sudo_back="/portal/operators")
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    name = form_text(form, "name")
    role = form_text(form, "role")
    chosen = [a for a in form.getlist("apps") if isinstance(a, str) and a]
    password = form.get("password")
    try:
        await run_operation(
            auth,
            "operators.create",
            name=name,
            role=role,
            password=password if isinstance(password, str) and password else None,
            apps=chosen or None,
        )
    except VaultError as exc:
        if exc.code is ErrorCode.FORBIDDEN:
            return error_page(auth, exc)
        return await _operators_page(
            request,
            auth,
            status=exc.status,
            error=exc,
            form={"name": name, "role": role, "apps": chosen},
        )
    return see_other("/portal/operators?done=operator_created")


async def _operator_page(
    request: Request, auth: Auth, name: str, *, status: int = 200, error: VaultError | None = None
) -> Response:
    try:
        shown = await run_operation(auth, "operators.show", operator=name)
    except VaultError as exc:
        return error_page(auth, exc, back="/portal/operators")
    apps_listed = await run_operation(auth, "apps.list")
    names = {a["app_id"]: a["name"] for a in apps_listed["apps"]}
    op = shown["name"]
    return render(
        auth,
        "operator.html",
        section="operators",
        status=status,
        error=error,
        notice=notice(request),
        operator=shown,
        app_names=names,
        all_apps=apps_listed["apps"],
        roles=ROLES,
        is_self=op == auth.principal.operator.name,
        cli=[
            automation(
                "Show", f"grantvault operators show {op} --json", "operators.show", operator=op
            ),
            automation(
                "Change role and apps",
                f"grantvault operators update {op} --role admin --apps demo --json",
                "operators.update",
                operator=op,
            ),
            automation(
                "Disable (or --enable)",
                f"grantvault operators update {op} --disable --json",
                "operators.update",
                operator=op,
            ),
            automation(
                "Lift a lockout",
                f"grantvault operators unlock {op} --json",
                "operators.unlock",
                operator=op,
            ),
        ],
    )


@router.get("/portal/operators/{name}")
async def operator_page(request: Request, name: str) -> Response:
    auth = await session_auth(request)
    if isinstance(auth, Response):
        return auth
    return await _operator_page(request, auth, name)


async def _operator_act(
    request: Request,
    name: str,
    operation: str,
    done: str,
    params: Callable[[FormData], dict[str, Any]],
) -> Response:
    posted = await posted_form(request, sudo_back=f"/portal/operators/{quote(name, safe='')}")
    if isinstance(posted, Response):
        return posted
    auth, form = posted
    values = params(form)
    try:
        await run_operation(auth, operation, operator=name, **values)
    except VaultError as exc:
        if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND):
            return error_page(auth, exc, back="/portal/operators")
        return await _operator_page(request, auth, name, status=exc.status, error=exc)
    if (
        operation == "operators.update"
        and values.get("disabled")
        and name == auth.principal.operator.name
    ):
        return see_other("/portal/login?ended=disabled")
    return see_other(f"/portal/operators/{quote(name, safe='')}?done={done}")


def _role_and_apps(form: FormData) -> dict[str, Any]:
    role = form_text(form, "role")
    chosen = [a for a in form.getlist("apps") if isinstance(a, str) and a]
    if role == "owner" or not chosen:
        return {"role": role or None, "all_apps": True}
    return {"role": role or None, "apps": chosen}


@router.post("/portal/operators/{name}")
async def operator_update(request: Request, name: str) -> Response:
    return await _operator_act(
        request, name, "operators.update", "operator_updated", _role_and_apps
    )


@router.post("/portal/operators/{name}/disable")
async def operator_disable(request: Request, name: str) -> Response:
    return await _operator_act(
        request, name, "operators.update", "operator_disabled", lambda _: {"disabled": True}
    )


@router.post("/portal/operators/{name}/enable")
async def operator_enable(request: Request, name: str) -> Response:
    return await _operator_act(
        request, name, "operators.update", "operator_enabled", lambda _: {"disabled": False}
    )


@router.post("/portal/operators/{name}/unlock")
async def operator_unlock(request: Request, name: str) -> Response:
    return await _operator_act(request, name, "operators.unlock", "operator_unlocked", lambda _: {})

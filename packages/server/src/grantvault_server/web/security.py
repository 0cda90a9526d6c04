"""The one security-header policy of the hosted pages, and the one CSRF helper.

Every page and redirect the vault sends to a browser goes through :func:`protect`:
``Content-Security-Policy`` (``default-src 'none'``, ``frame-ancestors 'none'``,
``base-uri 'none'``, no inline script), ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff`` and
``Cache-Control: no-store``. A flow's :class:`HeaderPolicy` says only what its pages may
load beyond that (Connect: its own scripts and stylesheet; sign-in: one nonce'd inline
style, no script) and where their forms may post.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace

from starlette.responses import Response


@dataclass(frozen=True)
class HeaderPolicy:
    """What a flow's pages may load, beyond ``default-src 'none'``."""

    #: ``script-src``; ``None`` for pages without any script.
    script_src: str | None = None
    #: ``style-src`` (of redirects too, for a policy with ``inline_style``).
    style_src: str = "'none'"
    #: Pages carry one inline ``<style nonce="{{ csp_nonce }}">``: their ``style-src`` is
    #: that response's nonce.
    inline_style: bool = False
    img_src: str | None = None
    form_action: str = "'none'"
    #: ``Cross-Origin-Opener-Policy``, for pages that talk to their opener.
    opener_policy: str | None = None

    def with_form_action(self, form_action: str) -> HeaderPolicy:
        return replace(self, form_action=form_action)

    def csp(self, style_nonce: str | None = None) -> str:
        style = f"'nonce-{style_nonce}'" if style_nonce else self.style_src
        directives = [
            ("default-src", "'none'"),
            ("script-src", self.script_src),
            ("style-src", style),
            ("img-src", self.img_src),
            ("form-action", self.form_action),
            ("frame-ancestors", "'none'"),
            ("base-uri", "'none'"),
        ]
        return "; ".join(f"{name} {value}" for name, value in directives if value is not None)


#: Connect's pages: their own script and stylesheet; forms post here (the consent form
#: adds the provider's origin: its 303 goes there); the popup result talks to its opener.
CONNECT = HeaderPolicy(
    script_src="'self'",
    style_src="'self'",
    img_src="'self' data:",
    form_action="'self'",
    opener_policy="unsafe-none",
)
#: The sign-in pages: no script at all, one inline style with a nonce, no forms.
SIGNIN = HeaderPolicy(inline_style=True)
#: The operator portal: its own stylesheet and one small script (progressive enhancement:
#: copy buttons), images only its own (the TOTP QR code is SVG markup in the page), forms
#: post only to the portal itself.
PORTAL = HeaderPolicy(
    script_src="'self'", style_src="'self'", img_src="'self'", form_action="'self'"
)


def protect(
    response: Response, policy: HeaderPolicy, *, style_nonce: str | None = None
) -> Response:
    """Put the security headers on a response to a browser."""
    response.headers["Content-Security-Policy"] = policy.csp(style_nonce)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    if policy.opener_policy is not None:
        response.headers["Cross-Origin-Opener-Policy"] = policy.opener_policy
    return response


def set_browser_cookie(
    response: Response, name: str, value: str, *, max_age: int, secure: bool, path: str
) -> None:
    """The cookie binding a hosted session to its first browser: HttpOnly, and SameSite=Lax
    (the third party's redirect back is a top-level GET navigation, which carries it)."""
    response.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure, path=path
    )


def csrf_token(browser: str, purpose: str) -> str:
    """The form token of a page: derived from the browser's session cookie, which a
    cross-site page can neither read nor set."""
    return hashlib.sha256(f"gv-{purpose}-csrf:".encode() + browser.encode()).hexdigest()[:32]


def csrf_ok(sent: str, browser: str, purpose: str) -> bool:
    return hmac.compare_digest(sent, csrf_token(browser, purpose))

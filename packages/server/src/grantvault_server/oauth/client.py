"""The vault's OAuth 2.0 / OIDC client: authorization URLs, code exchange, refresh, revocation.

Written on httpx rather than Authlib's OAuth client (decision 0007): every provider quirk we
support is data in ``providers/oauth_providers.yaml`` (form-encoded token responses, tokens
nested under another key, JSON token requests, comma-separated scopes, errors sent with HTTP
200), and Authlib's client would need a compliance hook per quirk plus wrappers for what it
does not bound. Every call goes through the vault's one outbound client
(:mod:`grantvault_server.outbound`), the token requests through its one OAuth 2.0 token
request (:mod:`grantvault_server.outbound.oauth2`: PKCE, client authentication), so a
provider call gets what every outbound call gets:

* bounded time (connect 5 s, whole request 15 s) and bounded size (1 MiB) of any answer;
* no redirect following (a token endpoint that redirects is misconfigured or hostile);
* https only, except hosts the operator allows for tests (``GRANTVAULT_ALLOW_HTTP_HOSTS``);

and here, errors are classified once: ``invalid_grant`` is permanent, 5xx/429/network are
transient, and a lost answer is marked ``maybe_delivered``.

Secrets never appear in exceptions or logs: only OAuth error codes and HTTP statuses do.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import jwt

from grantvault_server.outbound import oauth2, oidc
from grantvault_server.outbound.http import Answer, OutboundClient, OutboundError
from grantvault_server.outbound.oauth2 import pkce_pair
from grantvault_server.outbound.urls import HttpAllowance, UrlRefused, check_url
from grantvault_server.providers.oauth_schema import OAuthProviderSpec

__all__ = [
    "ClientCredentials",
    "OAuthClient",
    "OAuthError",
    "TokenSet",
    "authorization_url",
    "check_endpoint",
    "dotted",
    "id_token_claims",
    "pkce_pair",
    "safe_error_code",
]

MAX_RESPONSE_BYTES = 1 << 20
#: Wall-clock limit of one provider call, however the answer trickles in (connect: 5 s).
TOTAL_TIMEOUT_S = 15.0
#: Token types usable as a bearer token (Slack calls its user tokens "user", bot tokens "bot").
ACCEPTED_TOKEN_TYPES = frozenset({"bearer", "user", "bot"})
#: Longest lifetime believed from a provider: ten years.
MAX_EXPIRES_IN = 315_360_000

#: OAuth error codes that mean "this credential is dead; the user must connect again".
DEAD_CREDENTIAL = frozenset({"invalid_grant", "invalid_token", "token_revoked", "token_expired"})
#: Codes that mean the app's client registration is wrong: no retry will help.
CONFIG_ERRORS = frozenset({"invalid_client", "unauthorized_client", "unsupported_grant_type"})
#: Printable ASCII that is not markup or a quote: an error code from a provider (token
#: endpoint answer or the ``error`` of a redirect back) travels on into poll answers, return
#: URLs, pages and audit rows, so it is cut down to what real codes use (RFC 6749 §5.2).
_CODE_UNSAFE = frozenset("\"'<>&\\`")


def safe_error_code(raw: object, fallback: str) -> str:
    """A provider-supplied error code cut to 64 printable characters without markup,
    control characters (CR/LF, ESC) or quotes; ``fallback`` when nothing usable is left."""
    text = raw if isinstance(raw, str) else ""
    code = "".join(c for c in text[:64] if 0x21 <= ord(c) < 0x7F and c not in _CODE_UNSAFE)
    return code or fallback


class OAuthError(Exception):
    """A provider answered with an error, or could not be reached.

    ``error`` is the provider's OAuth error code (or one of ours: ``network_error``,
    ``timeout``, ``server_error``, ``malformed_response``); ``transient`` says whether trying
    again later can help. ``maybe_delivered`` is set when no answer came back although the
    request may have reached the provider: a refresh it processed has rotated the refresh
    token, so the caller must not send the same one again (and must remember that the answer
    was lost).
    """

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description[:300]
        self.status = status
        self.transient = transient
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered

    @property
    def dead_credential(self) -> bool:
        return self.error in DEAD_CREDENTIAL

    @property
    def config_error(self) -> bool:
        return self.error in CONFIG_ERRORS


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str | None

    def auth(self, spec: OAuthProviderSpec) -> oauth2.ClientAuth:
        """Authentication the way ``spec``'s provider wants it (token and revocation
        endpoints alike)."""
        return oauth2.ClientAuth(self.client_id, self.client_secret, spec.token_auth_method)


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint gave us, with every quirk already applied."""

    access_token: str
    refresh_token: str | None
    expires_in: int | None
    scopes: tuple[str, ...] | None
    id_token: str | None
    #: The response without any token values (used for ``api_base_url_from`` and lookups).
    extra: Mapping[str, Any] = field(default_factory=dict)


def dotted(data: Any, path: str) -> Any:
    """``dotted({"a": {"b": [7]}}, "a.b.0") == 7``; ``None`` when any step is missing."""
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
        if current is None:
            return None
    return current


def check_endpoint(url: str, allow_http_hosts: HttpAllowance | Iterable[str]) -> None:
    """Refuse a provider endpoint the outbound URL rule refuses (plain http to a host not in
    ``GRANTVAULT_ALLOW_HTTP_HOSTS``, user information, ...) as ``endpoint_not_allowed``."""
    try:
        check_url(url, allow_http_hosts, "provider endpoint")
    except UrlRefused as exc:
        raise OAuthError("endpoint_not_allowed", str(exc)) from None


def authorization_url(
    spec: OAuthProviderSpec,
    authorize_endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    code_challenge: str | None,
    nonce: str | None,
    login_hint: str | None = None,
) -> str:
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
    }
    if scopes:
        params[spec.scope_param] = spec.scopes_string(list(scopes))
    if code_challenge is not None:
        params["code_challenge"] = code_challenge
        params["code_challenge_method"] = "S256"
    if nonce is not None:
        params["nonce"] = nonce
    if login_hint:
        params["login_hint"] = login_hint
    params.update(spec.authorize_params)
    sep = "&" if urlsplit(authorize_endpoint).query else "?"
    return authorize_endpoint + sep + urlencode(params, quote_via=quote)


class OAuthClient:
    """Every call the vault makes to an OAuth provider, through one outbound client.

    The vault passes its own (``Vault.http``, shared with identity); without one, a client of
    its own is made from ``allow_http_hosts``, ``transport`` and ``verify`` and closed by
    :meth:`aclose`.
    """

    def __init__(
        self,
        allow_http_hosts: HttpAllowance | Iterable[str] = (),
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | None = None,
        http: OutboundClient | None = None,
    ) -> None:
        self._owned = http is None
        self.http = http or OutboundClient(allow_http_hosts, transport=transport, verify=verify)

    @property
    def allow_http_hosts(self) -> HttpAllowance:
        return self.http.allowance

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    # -- transport ---------------------------------------------------------------------

    @staticmethod
    async def _call(request: Awaitable[Answer]) -> Answer:
        """Await an outbound request, turning its failures into :class:`OAuthError`."""
        try:
            answer = await request
        except UrlRefused as exc:
            raise OAuthError("endpoint_not_allowed", str(exc)) from None
        except OutboundError as exc:
            if exc.kind == "too_large":
                # A 2xx (or 5xx) status line says the request arrived and may have been
                # processed (a refresh token rotated): the answer is lost.
                status = exc.status or 0
                raise OAuthError(
                    "malformed_response",
                    "answer larger than 1 MiB",
                    transient=False,
                    status=exc.status,
                    maybe_delivered=_answer_may_be_lost(status, None),
                ) from None
            if exc.kind == "timeout":
                # A provider that accepted the connection and never answered: transient.
                raise OAuthError(
                    "timeout",
                    "the provider did not answer in time",
                    transient=True,
                    maybe_delivered=exc.maybe_delivered,
                ) from None
            raise OAuthError(
                "network_error", exc.reason, transient=True, maybe_delivered=exc.maybe_delivered
            ) from None
        return answer

    def _limits(self) -> dict[str, Any]:
        # Read at call time: tests shorten TOTAL_TIMEOUT_S.
        return {"timeout_s": TOTAL_TIMEOUT_S, "max_bytes": MAX_RESPONSE_BYTES}

    @staticmethod
    def _decode(spec: OAuthProviderSpec, headers: httpx.Headers, body: bytes) -> dict[str, Any]:
        """Parse a token endpoint answer: JSON, or form-encoded where the provider does that."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        as_form = spec.token_response_format == "form" or (
            spec.token_response_format == "auto"
            and ctype in ("application/x-www-form-urlencoded", "text/plain")
        )
        try:
            if as_form:
                return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise OAuthError("malformed_response", "unreadable token endpoint answer") from None
        if not isinstance(parsed, dict):
            raise OAuthError("malformed_response", "token endpoint answer is not an object")
        return parsed

    @staticmethod
    def _raise_for(status: int, headers: httpx.Headers, payload: dict[str, Any] | None) -> None:
        """Turn an error answer (any status; some providers say ``error`` with a 200) into
        :class:`OAuthError`."""
        error = payload.get("error") if payload else None
        if payload is not None and payload.get("ok") is False and not error:
            error = "server_error"
        if status < 400 and not error:
            return
        description = ""
        if payload:
            raw = payload.get("error_description") or payload.get("message") or ""
            description = str(raw)
        # The code travels on (poll answers, return URLs, audit): short printable ASCII only.
        code = safe_error_code(error, f"http_{status}")
        transient = (
            status >= 500 or status == 429 or code in ("temporarily_unavailable", "server_error")
        )
        maybe_delivered = _answer_may_be_lost(status, payload)
        retry_after = None
        if "retry-after" in headers:
            try:
                retry_after = min(float(headers["retry-after"]), 300.0)
            except ValueError:
                retry_after = None
        raise OAuthError(
            code,
            description,
            status=status,
            transient=transient,
            retry_after=retry_after,
            maybe_delivered=maybe_delivered,
        )

    async def _token_request(
        self,
        spec: OAuthProviderSpec,
        token_url: str,
        creds: ClientCredentials,
        form: dict[str, str],
    ) -> TokenSet:
        answer = await self._call(
            oauth2.token_request(
                self.http,
                token_url,
                form,
                creds.auth(spec),
                what="provider token endpoint",
                headers=spec.token_request_headers,
                body_format=spec.token_request_format,
                **self._limits(),
            )
        )
        return self._token_answer(spec, answer)

    def _token_answer(self, spec: OAuthProviderSpec, answer: Answer) -> TokenSet:
        """A token endpoint's answer, quirks applied; every unusable one an :class:`OAuthError`."""
        status, rheaders, body = answer.status, answer.headers, answer.body
        try:
            payload: dict[str, Any] | None = self._decode(spec, rheaders, body)
        except OAuthError as exc:
            if status >= 400:
                payload = None
            else:
                exc.status = status
                exc.maybe_delivered = _answer_may_be_lost(status, None)
                raise
        self._raise_for(status, rheaders, payload)
        assert payload is not None
        try:
            return self._token_set(spec, payload)
        except OAuthError as exc:
            # A 2xx we cannot use (no access token, a non-bearer type, a bad expiry): the
            # provider has issued tokens, and rotated the refresh token if it does that.
            exc.status = status
            exc.maybe_delivered = True
            raise

    @staticmethod
    def _token_set(spec: OAuthProviderSpec, payload: dict[str, Any]) -> TokenSet:
        """The tokens in a decoded 2xx answer, read at the provider's field paths. The checks
        run in a fixed order (access token, token type, expiry), so the first problem is the
        one reported."""
        f = spec.token_fields
        access = _usable_access_token(dotted(payload, f.access_token))
        refresh = dotted(payload, f.refresh_token)
        refresh = refresh if isinstance(refresh, str) and refresh else None
        _check_token_type(dotted(payload, f.token_type))
        expires_in = _expires_in(dotted(payload, f.expires_in))
        if expires_in is None:
            expires_in = spec.expires_in_default
        id_token = dotted(payload, f.id_token)
        secret_paths = {f.access_token, f.refresh_token, f.id_token}
        extra = _without(payload, secret_paths)
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_in=expires_in,
            scopes=_scopes(dotted(payload, f.scope)),
            id_token=id_token if isinstance(id_token, str) else None,
            extra=extra,
        )

    # -- the OAuth operations ------------------------------------------------------------

    async def exchange_code(
        self,
        spec: OAuthProviderSpec,
        token_url: str,
        creds: ClientCredentials,
        *,
        code: str,
        redirect_uri: str,
        verifier: str | None,
    ) -> TokenSet:
        answer = await self._call(
            oauth2.exchange_code(
                self.http,
                token_url,
                creds.auth(spec),
                code=code,
                redirect_uri=redirect_uri,
                verifier=verifier,
                headers=spec.token_request_headers,
                body_format=spec.token_request_format,
                **self._limits(),
            )
        )
        return self._token_answer(spec, answer)

    async def refresh(
        self,
        spec: OAuthProviderSpec,
        token_url: str,
        creds: ClientCredentials,
        refresh_token: str,
    ) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        form.update(spec.refresh_params)
        return await self._token_request(spec, token_url, creds, form)

    async def revoke(
        self,
        spec: OAuthProviderSpec,
        revocation_url: str,
        creds: ClientCredentials,
        token: str,
        token_type_hint: str,
    ) -> None:
        """RFC 7009 revocation; any 2xx is success (unknown tokens are success too)."""
        form = {"token": token, "token_type_hint": token_type_hint}
        answer = await self._call(
            oauth2.token_request(
                self.http,
                revocation_url,
                form,
                creds.auth(spec),
                what="provider revocation endpoint",
                **self._limits(),
            )
        )
        status, headers, body = answer.status, answer.headers, answer.body
        if status < 300:
            return
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        self._raise_for(status, headers, payload if isinstance(payload, dict) else None)

    async def fetch_json(
        self,
        method: str,
        url: str,
        access_token: str,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """A bearer call to a provider API (account lookup, userinfo)."""
        all_headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        all_headers.update(headers or {})
        answer = await self._call(
            self.http.send(
                method,
                url,
                what="provider API",
                headers=all_headers,
                json_body=body,
                **self._limits(),
            )
        )
        status, raw = answer.status, answer.body
        if status >= 400:
            raise OAuthError(
                f"http_{status}",
                "account lookup failed",
                status=status,
                transient=status >= 500 or status == 429,
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise OAuthError("malformed_response", "account lookup answer is not JSON") from None

    async def discover(self, issuer: str) -> dict[str, Any]:
        """The provider's OIDC discovery document (:func:`grantvault_server.outbound.oidc.
        discover`: exact ``issuer``, its endpoints on the URL rule), failures as
        :class:`OAuthError`."""
        try:
            return await oidc.discover(
                self.http, issuer, required=("authorization_endpoint", "token_endpoint")
            )
        except oidc.DiscoveryError as exc:
            raise OAuthError(
                exc.code, exc.reason, transient=exc.code in ("timeout", "network_error")
            ) from None


#: Gateway answers: the gateway may have passed the request on before giving up on the
#: provider (502 Bad Gateway, 504 Gateway Timeout, Cloudflare's 524 A Timeout Occurred).
_GATEWAY_STATUSES = frozenset({502, 504, 524})


def _answer_may_be_lost(status: int, payload: Mapping[str, Any] | None) -> bool:
    """Whether an unusable answer with ``status`` may follow a request the provider processed.

    A 2xx means it did (an error *code* in a 2xx body, as GitHub sends, is the provider's own
    refusal and is judged by the caller before this). A gateway status, or any 5xx without an
    OAuth error body, may come from something in front of the provider after the provider
    processed the request; a 5xx that carries an OAuth ``error`` is the provider's own answer.
    """
    if 200 <= status < 300 or status in _GATEWAY_STATUSES:
        return True
    return status >= 500 and not (payload and payload.get("error"))


def _usable_access_token(raw: object) -> str:
    """The access token, refused when missing, empty or able to split a header line."""
    if not isinstance(raw, str) or not raw or any(c in raw for c in "\r\n\x00"):
        raise OAuthError("malformed_response", "the token endpoint sent no usable access token")
    return raw


def _check_token_type(raw: object) -> None:
    """Refuse a token type we cannot use as a bearer token (an absent type is bearer)."""
    if isinstance(raw, str) and raw.lower() not in ACCEPTED_TOKEN_TYPES:
        # A sender-constrained token (DPoP, MAC) would fail at the API as a bearer token.
        raise OAuthError("unsupported_token_type", "the provider issued a non-bearer token")


def _expires_in(raw: Any) -> int | None:
    """``expires_in`` as whole seconds; ``None`` when absent or meaning "no expiry"."""
    if raw in (None, ""):
        return None
    if isinstance(raw, bool):
        raise OAuthError("malformed_response", "expires_in is not a number")
    try:
        expires_in = int(raw)
    except (TypeError, ValueError):
        raise OAuthError("malformed_response", "expires_in is not a number") from None
    if expires_in < 0:
        raise OAuthError("malformed_response", "expires_in is negative")
    # 0 means "no expiry" to some providers (Mailchimp); huge values are clamped,
    # never read as "valid forever".
    return min(expires_in, MAX_EXPIRES_IN) or None


def _scopes(raw: object) -> tuple[str, ...] | None:
    """Granted scopes, space- or comma-separated or a list; ``None`` when not reported."""
    if isinstance(raw, str):
        return tuple(s for s in raw.replace(",", " ").split() if s)
    if isinstance(raw, list):
        return tuple(str(s) for s in raw)
    return None


def _without(payload: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """A deep copy of ``payload`` without the values at ``paths`` (the secrets)."""
    copy: dict[str, Any] = json.loads(json.dumps(payload, default=str))
    for path in paths:
        parts = path.split(".")
        node: Any = copy
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    for key in ("refresh_token", "access_token", "id_token"):
        copy.pop(key, None)
    return copy


def id_token_claims(
    id_token: str,
    *,
    issuer: str | None,
    client_id: str,
    nonce: str | None,
    leeway: int,
    now: float | None = None,
) -> dict[str, Any]:
    """Check an ID token received straight from the token endpoint.

    OpenID Connect Core §3.1.3.7 (6) lets a client rely on the TLS connection to the token
    endpoint instead of the signature for an ID token it received there itself, so the
    signature is not checked here; ``iss``, ``aud``, ``exp`` and ``nonce`` are, because they
    bind this token to this login (a replayed or mixed-up token fails them).
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            options={"verify_signature": False, "require": ["iss", "sub", "aud", "exp"]},
        )
    except jwt.PyJWTError:
        raise OAuthError("invalid_id_token", "the ID token cannot be parsed") from None
    now = time.time() if now is None else now
    if issuer is not None and claims.get("iss") != issuer:
        raise OAuthError("invalid_id_token", "the ID token comes from another issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise OAuthError("invalid_id_token", "the ID token was issued to another client")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp + leeway < now:
        raise OAuthError("invalid_id_token", "the ID token has expired")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OAuthError("invalid_id_token", "the ID token's nonce does not match this login")
    return claims

"""The vault's OAuth 2.0 / OIDC client: authorization URLs, code exchange, refresh, revocation.

Written on httpx rather than Authlib's OAuth client (decision 0007): every provider quirk we
support is data in ``providers/oauth_providers.yaml`` (form-encoded token responses, tokens
nested under another key, JSON token requests, comma-separated scopes, errors sent with HTTP
200), and Authlib's client would need a compliance hook per quirk plus wrappers for what it
does not bound. What this module guarantees on every call to a provider:

* bounded time (connect 5 s, whole request 15 s) and bounded size (1 MiB) of any answer;
* no redirect following (a token endpoint that redirects is misconfigured or hostile);
* https only, except hosts the operator allows for tests (``GRANTVAULT_ALLOW_HTTP_HOSTS``);
* errors classified once: ``invalid_grant`` is permanent, 5xx/429/network are transient.

Secrets never appear in exceptions or logs: only OAuth error codes and HTTP statuses do.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import jwt

from grantvault_server import outbound
from grantvault_server.providers.oauth_schema import OAuthProviderSpec

MAX_RESPONSE_BYTES = 1 << 20
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
#: Wall-clock limit of one provider call, however the answer trickles in.
TOTAL_TIMEOUT_S = 15.0
USER_AGENT = "grantvault-server (+oauth client)"
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


def pkce_pair() -> tuple[str, str]:
    """A fresh RFC 7636 verifier (43 characters of 256 bits) and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_endpoint(url: str, allow_http_hosts: Sequence[str]) -> None:
    """Refuse to talk to a provider endpoint over plain http (tests may allow a host)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in set(allow_http_hosts):
        return
    raise OAuthError(
        "endpoint_not_allowed",
        f"{parts.hostname or 'the provider endpoint'}: provider endpoints must use https "
        "(plain http only for hosts listed in GRANTVAULT_ALLOW_HTTP_HOSTS, which the CLI reads "
        "too)",
    )


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
    """One pooled HTTP client for every provider call the vault makes."""

    def __init__(
        self,
        allow_http_hosts: Sequence[str] = (),
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_http_hosts = tuple(allow_http_hosts)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
            # The environment is not read (proxy variables must not reroute tokens); the
            # trust is the process's outbound context, with GRANTVAULT_CA_BUNDLE if set.
            trust_env=False,
            verify=verify or outbound.tls_context(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        json_body: Any = None,
        auth: tuple[str, str] | None = None,
    ) -> tuple[int, httpx.Headers, bytes]:
        check_endpoint(url, self.allow_http_hosts)
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if data is not None:
            kwargs["data"] = dict(data)
        if json_body is not None:
            kwargs["json"] = json_body
        if auth is not None:
            # RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
            user, password = (quote(auth[0], safe=""), quote(auth[1], safe=""))
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            kwargs["headers"]["Authorization"] = f"Basic {token}"
        # Which steps of the exchange began (httpcore's trace events): a failure before the
        # request headers were sent surely never reached the provider.
        started: set[str] = set()

        async def trace(event: str, _info: Mapping[str, Any]) -> None:
            started.add(event)

        def maybe_delivered(exc: BaseException) -> bool:
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                return False
            # No trace at all (a custom transport): we cannot tell, so assume it arrived.
            return not started or any("send_request_headers" in e for e in started)

        try:
            # httpx's timeouts bound each read, not the whole answer: a provider dribbling a
            # byte at a time must not hold a refresh lease hostage.
            async with (
                asyncio.timeout(TOTAL_TIMEOUT_S),
                self._http.stream(method, url, extensions={"trace": trace}, **kwargs) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        # A 2xx (or 5xx) status line says the request arrived and may have
                        # been processed (a refresh token rotated): the answer is lost.
                        raise OAuthError(
                            "malformed_response",
                            "answer larger than 1 MiB",
                            transient=False,
                            status=response.status_code,
                            maybe_delivered=_answer_may_be_lost(response.status_code, None),
                        )
                return response.status_code, response.headers, bytes(body)
        except (httpx.TimeoutException, TimeoutError) as exc:
            # TimeoutError is asyncio.timeout's: a provider that accepted the connection and
            # never answered. Same classification as httpx's own timeouts: transient.
            raise OAuthError(
                "timeout",
                "the provider did not answer in time",
                transient=True,
                maybe_delivered=maybe_delivered(exc),
            ) from None
        except httpx.HTTPError as exc:
            raise OAuthError(
                "network_error",
                outbound.describe_failure(exc),
                transient=True,
                maybe_delivered=maybe_delivered(exc),
            ) from None

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
        headers = {"Accept": "application/json", **spec.token_request_headers}
        auth = _client_auth(spec, creds, form)
        if spec.token_request_format == "json":
            status, rheaders, body = await self._send(
                "POST", token_url, headers=headers, json_body=form, auth=auth
            )
        else:
            status, rheaders, body = await self._send(
                "POST", token_url, headers=headers, data=form, auth=auth
            )
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
        f = spec.token_fields
        access = dotted(payload, f.access_token)
        if not isinstance(access, str) or not access or any(c in access for c in "\r\n\x00"):
            raise OAuthError("malformed_response", "the token endpoint sent no usable access token")
        refresh = dotted(payload, f.refresh_token)
        refresh = refresh if isinstance(refresh, str) and refresh else None
        token_type = dotted(payload, f.token_type)
        if isinstance(token_type, str) and token_type.lower() not in ACCEPTED_TOKEN_TYPES:
            # A sender-constrained token (DPoP, MAC) would fail at the API as a bearer token.
            raise OAuthError("unsupported_token_type", "the provider issued a non-bearer token")
        raw_expiry = dotted(payload, f.expires_in)
        expires_in: int | None = None
        if raw_expiry not in (None, ""):
            if isinstance(raw_expiry, bool):
                raise OAuthError("malformed_response", "expires_in is not a number")
            try:
                expires_in = int(raw_expiry)
            except (TypeError, ValueError):
                raise OAuthError("malformed_response", "expires_in is not a number") from None
            if expires_in < 0:
                raise OAuthError("malformed_response", "expires_in is negative")
            # 0 means "no expiry" to some providers (Mailchimp); huge values are clamped,
            # never read as "valid forever".
            expires_in = min(expires_in, MAX_EXPIRES_IN) or None
        if expires_in is None:
            expires_in = spec.expires_in_default
        raw_scope = dotted(payload, f.scope)
        scopes: tuple[str, ...] | None = None
        if isinstance(raw_scope, str):
            scopes = tuple(s for s in raw_scope.replace(",", " ").split() if s)
        elif isinstance(raw_scope, list):
            scopes = tuple(str(s) for s in raw_scope)
        id_token = dotted(payload, f.id_token)
        secret_paths = {f.access_token, f.refresh_token, f.id_token}
        extra = _without(payload, secret_paths)
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_in=expires_in,
            scopes=scopes,
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
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if verifier is not None:
            form["code_verifier"] = verifier
        return await self._token_request(spec, token_url, creds, form)

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
        auth = _client_auth(spec, creds, form)
        status, headers, body = await self._send(
            "POST", revocation_url, data=form, auth=auth, headers={"Accept": "application/json"}
        )
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
        status, _headers, raw = await self._send(method, url, headers=all_headers, json_body=body)
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
        """Fetch and check an OIDC discovery document (its ``issuer`` must match exactly)."""
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        status, _headers, raw = await self._send("GET", url, headers={"Accept": "application/json"})
        if status != 200:
            raise OAuthError(f"http_{status}", "discovery document not available", status=status)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise OAuthError("malformed_response", "discovery document is not JSON") from None
        if not isinstance(doc, dict) or doc.get("issuer") != issuer:
            raise OAuthError("issuer_mismatch", "the discovery document names a different issuer")
        return doc


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


def _client_auth(
    spec: OAuthProviderSpec, creds: ClientCredentials, form: dict[str, str]
) -> tuple[str, str] | None:
    """Authenticate the client the way the provider wants (token and revocation endpoints
    alike): Basic credentials to send, or ``client_id``/``client_secret`` added to ``form``."""
    if spec.token_auth_method == "client_secret_basic" and creds.client_secret is not None:
        return (creds.client_id, creds.client_secret)
    form["client_id"] = creds.client_id
    if creds.client_secret is not None:
        form["client_secret"] = creds.client_secret
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
    id_token: str, *, issuer: str | None, client_id: str, nonce: str | None, leeway: int
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
    now = time.time()
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

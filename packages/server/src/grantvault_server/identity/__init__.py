"""End-user identity: the app's identity provider (OIDC issuer), JWT verification, app users
and groups, the sign-in broker behind ``authenticate()``, and deprovisioning.

Layout (dependencies point down)::

    service     resolve_user / disable_user / ...: what the rest of the vault calls
    signin      the brokered sign-in (auth sessions, PKCE, code exchange)
    webhooks    signed inbound deprovisioning events
    users       app users and groups: just-in-time creation, group sync, status changes
    idp         per-app IdP configuration (discovery, mappings, encrypted client secrets)
    verify      JWT verification (PyJWT) and the verified-token cache
    jwks        the per-issuer key cache (TTL, refresh cooldown, outage tolerance)
    discovery   the OIDC discovery document, validated
    fetch       bounded outbound HTTP to the IdP

Nothing here imports FastAPI: the routes live in ``api.identity``.
"""

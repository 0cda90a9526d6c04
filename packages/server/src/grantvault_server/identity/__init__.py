"""End-user identity as a library: token verification, key caches, discovery, claim mapping.

Framework-free and storage-free: nothing here imports FastAPI, the database, the audit
chain or :mod:`grantvault_server.services`. The flows that do (IdP set-up, user sync and
deprovisioning, webhooks, sign-in) are application services in
:mod:`grantvault_server.services.identity`; the routes live in ``api.identity``.

Layout (dependencies point down)::

    state              IdpConfig and the per-vault caches (held as ``Vault.identity``)
    claims             claim mapping: the end user a verified token names (Identity)
    webhook_signature  Standard Webhooks secrets and signatures
    verify             JWT verification (PyJWT) and the verified-token cache
    jwks               the per-issuer key cache (TTL, refresh cooldown, outage tolerance)
    discovery          what verification keeps of the IdP's OIDC discovery document
                       (fetched and checked by ``outbound.oidc``, through ``Vault.http``)
"""

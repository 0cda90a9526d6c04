"""End-user identity as application services: the flows that read and write storage and audit.

Layout (dependencies point down; the pure parts live in the :mod:`grantvault_server.identity`
library, which imports nothing from here)::

    service     resolve_user / disable_user / ...: what the rest of the vault calls
    webhooks    signed inbound deprovisioning events, applied
    users       app users and groups: just-in-time creation, group sync, status changes
    idp         per-app IdP configuration (discovery, mappings, encrypted client secrets)

The per-vault caches (keys, verified tokens, configurations) are ``Vault.identity``.
"""

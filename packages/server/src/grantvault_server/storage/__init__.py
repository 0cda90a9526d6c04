"""Storage: table definitions, engine set-up, migrations and per-aggregate repositories.

Repositories take and return ciphertext bytes for secret fields; only the barrier
(``grantvault_server.crypto``) turns them into plaintext.
"""

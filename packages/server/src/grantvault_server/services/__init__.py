"""Application services: each use case reads and writes storage (SQLAlchemy Core statements on
``storage.tables``, in ``Database`` transactions), unseals and seals secrets through the barrier,
asks the policy engine, and appends to the audit chain.

Plaintext secrets exist only here and in ``crypto``; the routes (``api``, ``web``) and the CLI
call services and never touch tables directly. The layers are import-linter contracts
(``docs/architecture.md``).
"""

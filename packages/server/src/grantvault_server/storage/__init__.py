"""Storage: table definitions, engine and transaction set-up, migrations, and small SQL helpers.

There are no repository classes: the services issue SQLAlchemy Core statements on
``storage.tables`` inside ``Database.read()``/``write()`` transactions. Secret columns (``*_ct``)
hold barrier ciphertext bytes; only the barrier (``grantvault_server.crypto``) turns them into
plaintext.
"""

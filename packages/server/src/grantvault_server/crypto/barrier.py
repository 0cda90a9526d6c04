"""AES-256-GCM envelope encryption with a keyring of data keys wrapped by a master key.

Layout of a stored value (all of it in one ``*_ct`` column)::

    version (1 byte, 0x01) | key term (4 bytes, big-endian) | nonce (12 bytes) | ciphertext+tag

* A fresh 96-bit random nonce per encryption (so the same secret encrypts differently).
* The associated data binds the value to its table, app, row and field (:func:`aad_for`):
  a ciphertext copied into another row, app or column fails authentication.
* Data keys ("terms") are random 256-bit keys, stored only wrapped (AES-GCM) by the master
  key, whose id is a keyed fingerprint of it. The master key never touches the database.
* Opening the keyring is the key check: unwrapping with the wrong master key fails GCM
  authentication, and the vault refuses to start instead of writing data nobody can read.

Rotation (``services.rotation``) adds a new term wrapped by the new master key, rewraps the
old terms, and re-encrypts rows; this module only knows terms and wrappings.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.exc import IntegrityError

from grantvault_server.storage.db import Conn
from grantvault_server.storage.tables import data_keys, keyring_state, vault_keys

VERSION = 1
_HEADER = struct.Struct(">BI")
NONCE_BYTES = 12
KEY_BYTES = 32


class BarrierError(Exception):
    """Base of barrier failures. Messages never include key or plaintext material."""


class WrongMasterKey(BarrierError):
    """The configured master key does not open this database's keyring."""


class CorruptCiphertext(BarrierError):
    """A stored value failed authentication (tampered, moved, or truncated)."""


class UnknownTerm(BarrierError):
    """The value names a data-key term this process has not loaded (yet)."""


def aad_for(table: str, app_id: str, row_id: str, column: str) -> bytes:
    """Associated data binding a ciphertext to where it is stored."""
    return f"grantvault:v1|{table}|{app_id}|{row_id}|{column}".encode()


@dataclass(frozen=True)
class MasterKey:
    """The root key. ``key_id`` is a fingerprint safe to store and print."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")

    @property
    def key_id(self) -> str:
        return hmac.new(self.key, b"grantvault-master-key-id", hashlib.sha256).hexdigest()[:16]

    def wrap(self, term: int, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, self._aad(term))

    def unwrap(self, term: int, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.key).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], self._aad(term)
            )
        except InvalidTag:
            raise WrongMasterKey(
                f"data key term {term} does not open with master key {self.key_id}"
            ) from None

    def _aad(self, term: int) -> bytes:
        return f"grantvault:data-key|{term}|{self.key_id}".encode()


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def now() -> datetime:
    return datetime.now(UTC)


class Barrier:
    """Encrypts and decrypts stored values with the keyring opened by one master key."""

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self._keys: dict[int, AESGCM] = {}
        self.active_term = 0
        #: Why this process can no longer open new data keys (None while healthy).
        self.sealed_reason: str | None = None

    # -- keyring --------------------------------------------------------------------------

    async def open(self, conn: Conn) -> None:
        """Load (or, on an empty database, create) the keyring; raise if the key is wrong."""
        state = (
            await conn.execute(sa.select(keyring_state).where(keyring_state.c.id == 1))
        ).first()
        if state is None:
            if (await conn.execute(sa.select(data_keys.c.term).limit(1))).first() is not None:
                # Data keys without their state row: a partial restore. Initialising now would
                # add a second keyring beside the real one and write with it.
                raise WrongMasterKey(
                    "the keyring state is missing while data keys exist; restore the database "
                    "(refusing to start)"
                )
            await self._initialise(conn)
            return
        await self.reload(conn)

    async def reload(self, conn: Conn) -> None:
        """Re-read the keyring: picks up terms and the active term set by a rotation.

        At start-up any mismatch refuses to open. While serving, terms already loaded stay
        usable (nothing is forgotten), and a keyring this process can no longer open (the
        master key was rotated and the old key retired) seals the barrier: requests then get
        a clear 503 ``sealed`` and ``/readyz`` fails, instead of data errors.
        """
        try:
            # State first: a rotation commits its new term and the state change together, so
            # data keys read afterwards always include the active term.
            state = (
                await conn.execute(sa.select(keyring_state).where(keyring_state.c.id == 1))
            ).one()
            rows = (await conn.execute(sa.select(data_keys))).all()
            mine = {r.term: r.wrapped for r in rows if r.master_key_id == self.master.key_id}
            if rows and not mine:
                others = sorted({r.master_key_id for r in rows})
                raise WrongMasterKey(
                    f"the configured master key ({self.master.key_id}) is not the one this "
                    f"database was encrypted with ({', '.join(others)}); refusing to start"
                )
            keys = dict(self._keys)
            for term, wrapped in mine.items():
                if term not in keys:
                    keys[term] = AESGCM(self.master.unwrap(term, wrapped))
            if state.active_term not in keys:
                raise WrongMasterKey(
                    f"the active data key term {state.active_term} is not wrapped by master "
                    f"key {self.master.key_id}"
                )
        except WrongMasterKey as exc:
            if self.active_term:  # already serving: seal rather than guess
                self.sealed_reason = str(exc)
            raise
        self._keys = keys
        self.active_term = state.active_term
        self.sealed_reason = None

    async def _initialise(self, conn: Conn) -> None:
        data_key = new_data_key()
        try:
            await conn.execute(
                sa.insert(data_keys).values(
                    term=1,
                    master_key_id=self.master.key_id,
                    wrapped=self.master.wrap(1, data_key),
                    created_at=now(),
                )
            )
            await conn.execute(
                sa.insert(keyring_state).values(id=1, active_term=1, updated_at=now())
            )
        except IntegrityError:
            # Another process initialised the keyring first; use theirs.
            raise BarrierError("the keyring was initialised concurrently; retry") from None
        self._keys = {1: AESGCM(data_key)}
        self.active_term = 1

    async def named_key(self, conn: Conn, name: str) -> bytes:
        """A vault-wide random key (the audit HMAC key), created on first use, kept encrypted.

        Stored like any secret: barrier ciphertext bound to its row, re-encrypted by rotation.
        """
        aad = aad_for(vault_keys.name, "system", name, "key_ct")
        row = (
            await conn.execute(sa.select(vault_keys.c.key_ct).where(vault_keys.c.id == name))
        ).first()
        if row is not None:
            try:
                return await self.decrypt_fresh(conn, row.key_ct, aad)
            except CorruptCiphertext:
                raise BarrierError(f"the stored {name} key failed authentication") from None
        key = os.urandom(KEY_BYTES)
        await conn.execute(
            sa.insert(vault_keys).values(
                id=name, app_id="system", key_ct=self.encrypt(key, aad), created_at=now()
            )
        )
        return key

    def add_term(self, term: int, data_key: bytes) -> None:
        self._keys[term] = AESGCM(data_key)

    @property
    def terms(self) -> frozenset[int]:
        return frozenset(self._keys)

    # -- values ---------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, aad: bytes, *, term: int | None = None) -> bytes:
        use = self.active_term if term is None else term
        key = self._keys.get(use)
        if key is None:
            raise UnknownTerm(f"data key term {use} is not loaded")
        nonce = os.urandom(NONCE_BYTES)
        return _HEADER.pack(VERSION, use) + nonce + key.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        term = self.term_of(blob)
        key = self._keys.get(term)
        if key is None:
            raise UnknownTerm(f"data key term {term} is not loaded")
        start = _HEADER.size
        try:
            return key.decrypt(blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :], aad)
        except InvalidTag:
            raise CorruptCiphertext("stored value failed authentication") from None

    @staticmethod
    def term_of(blob: bytes) -> int:
        if len(blob) < _HEADER.size + NONCE_BYTES + 16:
            raise CorruptCiphertext("stored value is truncated")
        version, term = _HEADER.unpack_from(blob)
        if version != VERSION:
            raise CorruptCiphertext(f"unknown ciphertext version {version}")
        return int(term)

    async def decrypt_fresh(self, conn: Conn, blob: bytes, aad: bytes) -> bytes:
        """Decrypt, reloading the keyring once if another process rotated in a new term.

        A term still unknown after the reload is one of two faults that must not look alike:
        a data key that exists but this master key cannot open (the server is sealed, a
        restart with the current key helps, so callers answer a retryable ``sealed``), or a
        term no data key ever had (the stored value itself is damaged, e.g. a flipped byte
        in its header: :class:`CorruptCiphertext`, which no retry or restart can fix).
        """
        try:
            return self.decrypt(blob, aad)
        except UnknownTerm:
            await self.reload(conn)
            try:
                return self.decrypt(blob, aad)
            except UnknownTerm:
                if not await _term_exists(conn, self.term_of(blob)):
                    raise CorruptCiphertext(
                        "stored value names a data key term that does not exist"
                    ) from None
                raise


#: Terms are stored in a 32-bit signed column; a header naming a larger one is damaged.
_MAX_TERM = 2**31 - 1


async def _term_exists(conn: Conn, term: int) -> bool:
    """Whether any data key (under any master key) has ``term``."""
    if not 0 < term <= _MAX_TERM:
        return False  # out of the column's range: asking the database would be a type error
    found = await conn.execute(sa.select(data_keys.c.term).where(data_keys.c.term == term).limit(1))
    return found.first() is not None

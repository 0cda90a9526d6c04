"""The barrier: the only code that encrypts or decrypts stored secrets."""

from grantvault_server.crypto.barrier import (
    Barrier,
    BarrierError,
    CorruptCiphertext,
    MasterKey,
    WrongMasterKey,
    aad_for,
)

__all__ = ["Barrier", "BarrierError", "CorruptCiphertext", "MasterKey", "WrongMasterKey", "aad_for"]

"""Grantvault Python SDK.

The full client (``App``, ``request``, ``connect``...) is being built; this release ships the
wire contract shared with the vault: error codes, response models, the API key grammar and
request signing.
"""

from grantvault._key_format import is_valid_key
from grantvault._signing import derive_signing_key, sign_request
from grantvault._version import __version__
from grantvault.types import ErrorCode

__all__ = [
    "ErrorCode",
    "__version__",
    "derive_signing_key",
    "is_valid_key",
    "sign_request",
]

"""The ``/sdk/*`` wire protocol, public so that the vault and the SDK share one copy of it.

* :mod:`grantvault.protocol.signing`: request signing (string to sign, headers, key derivation).
* :mod:`grantvault.protocol.key_format`: the API key grammar (mint, check, display prefix).
* :mod:`grantvault.protocol.injection`: where a token answer may place a credential.
* :mod:`grantvault.types`: the error codes with their HTTP statuses, and the response shapes.

The vault (``grantvault_server``) imports these modules and never the SDK's private ones;
the SDK never imports the vault. Changing anything here changes the protocol: the signing
tests check it against vectors computed independently, the end-to-end tests against the
unmodified public ``alter-sdk`` client.
"""

from grantvault.protocol import injection, key_format, signing

__all__ = ["injection", "key_format", "signing"]

"""Authentication of apps on the ``/sdk/*`` protocol: API keys and request signatures."""

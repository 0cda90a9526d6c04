"""Grantvault server: the /sdk protocol, encrypted storage, audit and the `grantvault` CLI."""

from grantvault import __version__

__all__ = ["__version__"]

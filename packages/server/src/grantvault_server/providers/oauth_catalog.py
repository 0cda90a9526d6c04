"""Loading the OAuth provider catalog (``oauth_providers.yaml``) and its wire shape.

The catalog is validated once, on first use, and cached for the life of the process: it
ships inside the package and cannot change under a running server. A broken entry raises a
``ValueError`` that names the entry and the field, so a bad edit is caught by the catalog
test (and at start-up) with a message that says where to look.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from grantvault_server.providers.oauth_schema import OAuthProviderSpec

CATALOG_FILE = "oauth_providers.yaml"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "(entry)"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def parse_oauth_catalog(text: str) -> dict[str, OAuthProviderSpec]:
    """Validate catalog YAML text; raise ``ValueError`` naming the bad entry and field."""
    raw: Any = yaml.safe_load(text)
    if not isinstance(raw, dict) or set(raw) != {"providers"}:
        raise ValueError(f"{CATALOG_FILE} must be a mapping with the single key 'providers'")
    entries = raw["providers"]
    if not isinstance(entries, list):
        raise ValueError(f"{CATALOG_FILE}: 'providers' must be a list of entries")
    catalog: dict[str, OAuthProviderSpec] = {}
    for index, entry in enumerate(entries):
        name = entry.get("id") if isinstance(entry, dict) else None
        label = f"entry {index} ({name!r})" if name else f"entry {index}"
        try:
            spec = OAuthProviderSpec.model_validate(entry)
        except ValidationError as exc:
            raise ValueError(f"{CATALOG_FILE} {label} is invalid: {_describe(exc)}") from None
        if spec.id in catalog:
            raise ValueError(f"{CATALOG_FILE} {label}: duplicate provider id {spec.id!r}")
        catalog[spec.id] = spec
    return catalog


@functools.cache
def load_oauth_catalog() -> Mapping[str, OAuthProviderSpec]:
    """The packaged catalog, read-only, keyed by provider id (validated once per process)."""
    text = resources.files(__package__).joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return MappingProxyType(parse_oauth_catalog(text))


def get_oauth_provider(provider_id: str) -> OAuthProviderSpec | None:
    """The catalog entry for ``provider_id``, or ``None`` when there is none."""
    return load_oauth_catalog().get(provider_id)


def catalog_item(spec: OAuthProviderSpec) -> dict[str, Any]:
    """One provider as listed by ``GET /sdk/oauth/provider-catalog``.

    ``status`` follows the public client's contract: connectable providers are ``"active"``;
    ``beta`` entries keep their status so the route can decide whether to list them.
    """
    required = set(spec.required_scopes)
    defaults = set(spec.default_scopes)
    scopes = dict(spec.available_scopes)
    for scope in [*spec.required_scopes, *spec.default_scopes]:
        scopes.setdefault(scope, "")
    return {
        "id": spec.id,
        "name": spec.display_name,
        "display_name": spec.display_name,
        "category": spec.category,
        "description": spec.description,
        "logo_url": None,
        "supports_refresh": spec.supports_refresh,
        "supports_pkce": spec.pkce != "unsupported",
        "available_scopes": {
            scope: {
                "description": description,
                "required": scope in required,
                "is_default": scope in defaults,
                "requires": [],
            }
            for scope, description in scopes.items()
        },
        "default_scopes": list(spec.default_scopes),
        "required_scopes": list(spec.required_scopes),
        "status": "active" if spec.status == "stable" else spec.status,
    }

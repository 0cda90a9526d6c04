"""Loading and looking up managed-secret templates (validated once, at start-up)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from pydantic import TypeAdapter

from grantvault_server.providers.schema import SecretTemplate

_ADAPTER = TypeAdapter(list[SecretTemplate])


def load_templates(text: str | None = None) -> dict[str, SecretTemplate]:
    """Parse and validate the template catalog; raises on any invalid entry or duplicate slug."""
    if text is None:
        text = resources.files(__package__).joinpath("templates.yaml").read_text()
    raw: Any = yaml.safe_load(text)
    templates = _ADAPTER.validate_python(raw)
    by_slug: dict[str, SecretTemplate] = {}
    for template in templates:
        if template.slug in by_slug:
            raise ValueError(f"duplicate template slug {template.slug!r}")
        by_slug[template.slug] = template
    return by_slug

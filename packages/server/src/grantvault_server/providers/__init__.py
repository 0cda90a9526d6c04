"""Providers as validated data: managed-secret templates and destination host rules."""

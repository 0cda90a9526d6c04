"""Audit: a closed vocabulary of events, written to a per-app hash chain before responses."""

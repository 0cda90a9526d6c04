"""Application services: orchestrate repositories, the barrier, policy and audit.

Plaintext secrets exist only here and in ``crypto``; the API layer calls services and never
touches tables directly.
"""

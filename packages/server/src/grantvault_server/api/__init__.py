"""HTTP routes, split by audience: ``/sdk/*`` for apps (signed), operations endpoints."""

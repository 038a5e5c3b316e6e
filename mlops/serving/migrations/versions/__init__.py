"""Revisions of the request log's schema, oldest first (``0001``, ``0002``, …)."""

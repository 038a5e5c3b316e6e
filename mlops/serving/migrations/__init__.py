"""Alembic migrations of the request log's tables (run by ``request_log.upgrade_schema``)."""

"""Alembic environment of the request log.

Only online, on the connection that :func:`mlops.serving.request_log.upgrade_schema`
passes in ``config.attributes["connection"]`` (inside its transaction). The version table
is ``mlops_request_log_version``, not ``alembic_version``: the same Postgres database may
hold MLflow's own Alembic history.
"""

from __future__ import annotations

from alembic import context

from mlops.serving.request_log import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the request log's migrations run through mlops.serving.request_log.upgrade_schema, "
        "with a connection (offline --sql mode is not supported)"
    )
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()

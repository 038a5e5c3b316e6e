#!/bin/sh
# Create the platform's databases on one PostgreSQL server, owned by $POSTGRES_USER:
#
#   $PREFECT_DB       Prefect server (flow runs, deployments, events)     default prefect
#   $MLFLOW_DB        MLflow tracking and model registry                  default mlflow
#   $REQUEST_LOG_DB   the app's request log, feedback, monitoring runs    default mlops_requests
#   $CATALOG_DB       dataset catalog and feature registry                default mlops_catalog
#
# The postgres image runs it once, from /docker-entrypoint-initdb.d/, when its data
# volume is empty (docker-compose.yml mounts it there). It is idempotent, so it can also
# be run by hand against an existing server (PGHOST, PGPORT, PGPASSWORD as for psql):
#
#   POSTGRES_USER=mlops PGHOST=127.0.0.1 sh infra/postgres/init-databases.sh
#
# Each service then runs its own migrations at start (Prefect, MLflow, the request log's
# Alembic revisions; the catalog creates its tables).
set -eu

user="${POSTGRES_USER:-postgres}"
admin_db="${POSTGRES_DB:-$user}"
case "$user" in
    '' | *[!A-Za-z0-9_]*)
        echo "init-databases: POSTGRES_USER '$user' is not allowed: use letters, digits and _" >&2
        exit 1
        ;;
esac

for db in "${PREFECT_DB:-prefect}" "${MLFLOW_DB:-mlflow}" \
    "${REQUEST_LOG_DB:-mlops_requests}" "${CATALOG_DB:-mlops_catalog}"; do
    case "$db" in
        '' | *[!a-z0-9_]*)
            echo "init-databases: database name '$db' is not allowed: use lower-case" \
                "letters, digits and _ (set PREFECT_DB, MLFLOW_DB, REQUEST_LOG_DB," \
                "CATALOG_DB in .env)" >&2
            exit 1
            ;;
    esac
    exists="$(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$user" --dbname "$admin_db" \
        -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")"
    if [ "$exists" = "1" ]; then
        echo "init-databases: $db exists"
    else
        psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$user" --dbname "$admin_db" \
            -c "CREATE DATABASE \"$db\" OWNER \"$user\""
        echo "init-databases: created $db"
    fi
done

#!/bin/sh
# Runs once, when the postgres container initialises an empty data volume: creates the `prefect`
# and `mlflow` roles, each owning its database of the same name. The passwords come from the
# container's environment (PREFECT_DB_PASSWORD, MLFLOW_DB_PASSWORD, from docker/.env); psql's
# :'name' interpolation quotes them, so no value is ever spliced into SQL text by the shell.
# To re-run it (new passwords), remove the volume: docker compose -f docker/compose.yaml down -v
set -eu

: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD in docker/.env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in docker/.env}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v prefect_password="$PREFECT_DB_PASSWORD" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL

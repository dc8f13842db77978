#!/usr/bin/env bash
# Wait for the database, bring its schema to the latest migration, then run the given command.
#
# The `migrate` service in docker-compose.yml runs this once and exits (no command given); the api,
# workers and `sdft` commands never migrate by themselves, so several of them starting at once never
# race on the schema. Configuration comes from the SDFT_* environment (app.settings), e.g.
# SDFT_DATABASE_URL=postgresql+psycopg://sdft:PASSWORD@postgres:5432/sdft.
set -euo pipefail

# Not an SDFT_* setting: only this script reads it.
WAIT_FOR_DB_SECONDS="${WAIT_FOR_DB_SECONDS:-60}"

# depends_on: service_healthy already orders startup under Compose; this loop covers other
# orchestrators and a database that restarts between its health check and our first connection.
python - "$WAIT_FOR_DB_SECONDS" <<'PY'
import sys
import time

from sqlalchemy import create_engine, text

from app.settings import get_settings

settings = get_settings()
if settings.is_sqlite:  # a file, not a server: only its directory has to exist
    settings.data_dir.mkdir(parents=True, exist_ok=True)
deadline = time.monotonic() + float(sys.argv[1])
engine = create_engine(settings.database_url, pool_pre_ping=True)
attempt = 0
while True:
    attempt += 1
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        break
    except Exception as exc:  # the driver's error types vary (psycopg, sqlite)
        if time.monotonic() >= deadline:
            # Never print the URL: it carries the password.
            print(f"entrypoint: database unreachable after {attempt} attempts: {exc}", file=sys.stderr)
            sys.exit(1)
        print(f"entrypoint: waiting for the database ({exc.__class__.__name__})", file=sys.stderr)
        time.sleep(2)
engine.dispose()
PY

# Through app.bootstrap rather than the `alembic` command: alembic_config() finds the migrations
# next to the installed package, so this works from any working directory and without alembic.ini.
python -c "from app.bootstrap import ensure_database; from app.settings import get_settings; ensure_database(get_settings())"
echo "entrypoint: database schema at head" >&2

if [ "$#" -eq 0 ]; then
    exit 0
fi
exec "$@"

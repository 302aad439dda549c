#!/bin/sh
# Initialises a cluster on first start from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
# (defaults: postgres / no password, trust / the user's name), then runs postgres in the
# foreground as the postgres user, listening on all of the container's addresses.
set -e
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-postgres}" >"$pwfile"
  chown postgres "$pwfile"
  if [ -n "$POSTGRES_PASSWORD" ]; then auth=scram-sha-256; else auth=trust; fi
  as_postgres initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=$auth >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 $auth" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != "postgres" ]; then
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
    as_postgres psql -q -h /var/run/postgresql -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
    as_postgres pg_ctl -D "$PGDATA" -m fast -w -s stop
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA"

#!/bin/sh
# Initialise the cluster on first start (the official image's contract: POSTGRES_PASSWORD, then
# /docker-entrypoint-initdb.d/*.sql once), then run the server in the foreground.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?is not set: it becomes the password of the superuser on first start}"
  password_file=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
  initdb --username=postgres --pwfile="$password_file" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
  rm -f "$password_file"
  # Other containers reach it over the network, always with a password.
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  pg_ctl --wait --options="-c listen_addresses='' -c unix_socket_directories=/tmp" start
  for script in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$script" ] || continue
    echo "running $script"
    psql --host=/tmp --username=postgres --dbname=postgres --no-psqlrc \
      --set=ON_ERROR_STOP=1 --file="$script"
  done
  pg_ctl --wait --mode=fast stop
fi
exec postgres -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"

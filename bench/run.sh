#!/usr/bin/env bash
# One measurement on this machine: a fresh database, a Celery worker and the web server, then
# bench/checkin.py; everything started here is stopped again on exit (by pid).
#
#   bench/run.sh [--quick] [--skip-large] [other checkin.py arguments]
#
# Environment (defaults in brackets):
#   BENCH_DB_URL   [postgres://postgres@127.0.0.1:5432/sambench]  dropped and re-created!
#   BENCH_REDIS_URL [redis://127.0.0.1:6379/12]                   flushed!
#   BENCH_PORT     [8443 with `manage.py serve`, else 8000; the next free port if taken]
#   BENCH_OUT      [var/bench/result-<time>.json]
#   BENCH_EXPLAIN_MS  [unset]  log the plan of every statement slower than this many ms
#                     (auto_explain, set on the bench database only) to PostgreSQL's log
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
[[ -x $PY ]] || { echo "bench/run.sh: $PY missing (run ./scripts/test or ./scripts/demo once)" >&2; exit 1; }

export DATABASE_URL=${BENCH_DB_URL:-postgres://postgres@127.0.0.1:5432/sambench}
export REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/12}
export SAM_DATA_DIR=$ROOT/var/bench
export DJANGO_SETTINGS_MODULE=sam.settings
export SAM_LOG_LEVEL=${SAM_LOG_LEVEL:-WARNING}
export SAM_CELERY_QUEUE=${SAM_CELERY_QUEUE:-sambench}   # never share a queue with other workers
mkdir -p "$SAM_DATA_DIR/log"
LOG=$SAM_DATA_DIR/log
OUT=${BENCH_OUT:-$SAM_DATA_DIR/result-$(date +%Y%m%d-%H%M%S).json}

db_name=$("$PY" -c 'import os,urllib.parse as u; print(u.urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))')
[[ $db_name == sambench* ]] || { echo "bench/run.sh: refusing to drop database '$db_name' (not sambench*)" >&2; exit 1; }
admin_url=${DATABASE_URL%/*}/postgres

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {  # the first free TCP port from $1 on 127.0.0.1
    "$PY" - "$1" <<'PY'
import socket, sys
port = int(sys.argv[1])
while True:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            break
        except OSError:
            port += 1
print(port)
PY
}

echo "bench/run.sh: fresh database $db_name, Redis ${REDIS_URL}" >&2
psql -q "$admin_url" -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" \
    -c "CREATE DATABASE \"$db_name\"" >/dev/null
if [[ -n ${BENCH_EXPLAIN_MS:-} ]]; then
    psql -q "$admin_url" -v ON_ERROR_STOP=1 \
        -c "ALTER DATABASE \"$db_name\" SET session_preload_libraries = 'auto_explain'" \
        -c "ALTER DATABASE \"$db_name\" SET auto_explain.log_min_duration = ${BENCH_EXPLAIN_MS}" \
        -c "ALTER DATABASE \"$db_name\" SET auto_explain.log_analyze = on" \
        -c "ALTER DATABASE \"$db_name\" SET auto_explain.log_nested_statements = on" \
        -c "ALTER DATABASE \"$db_name\" SET log_lock_waits = on" >/dev/null
fi
"$PY" -c 'import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()'
"$PY" manage.py migrate --noinput >"$LOG/migrate.log" 2>&1 || { cat "$LOG/migrate.log" >&2; exit 1; }

"$VENV/bin/celery" -A sam worker --concurrency 2 --pool prefork -l WARNING \
    --without-gossip --without-mingle --hostname "sambench@%h" >"$LOG/celery.log" 2>&1 &
celery_pid=$!
pids+=("$celery_pid")

if [[ -f sam/management/commands/serve.py ]]; then
    port=$(free_port "${BENCH_PORT:-8443}")
    "$PY" manage.py serve --bind "127.0.0.1:$port" --workers 2 >"$LOG/web.log" 2>&1 &
    web_pid=$!
    url=https://127.0.0.1:$port/candlepin
    tls=(--cacert "$SAM_DATA_DIR/tls/sam.crt")
else
    port=$(free_port "${BENCH_PORT:-8000}")
    "$VENV/bin/gunicorn" sam.wsgi:application -b "127.0.0.1:$port" -w 2 -k gthread --threads 4 \
        --timeout 120 >"$LOG/web.log" 2>&1 &
    web_pid=$!
    url=http://127.0.0.1:$port/candlepin
    tls=()
fi
pids+=("$web_pid")

# Wait for the web server (and its certificate) and for the worker to be ready.
for i in $(seq 150); do
    if [[ ${#tls[@]} -eq 0 || -f $SAM_DATA_DIR/tls/sam.crt ]] && "$PY" - "$url" "${tls[@]}" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
url = sys.argv[1]
ctx = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None
urllib.request.urlopen(url + "/status", context=ctx, timeout=2).read()
PY
    then break; fi
    kill -0 "$web_pid" 2>/dev/null || { echo "web server died:" >&2; tail -20 "$LOG/web.log" >&2; exit 1; }
    [[ $i == 150 ]] && { echo "web server not answering on $url" >&2; tail -20 "$LOG/web.log" >&2; exit 1; }
    sleep 0.2
done
for i in $(seq 150); do
    grep -q "ready" "$LOG/celery.log" 2>/dev/null && break
    "$VENV/bin/celery" -A sam inspect ping -d "sambench@$(hostname)" >/dev/null 2>&1 && break
    kill -0 "$celery_pid" 2>/dev/null || { echo "celery worker died:" >&2; tail -20 "$LOG/celery.log" >&2; exit 1; }
    sleep 0.5
done
echo "bench/run.sh: server $url (pid $web_pid), worker pid $celery_pid; results -> $OUT" >&2

"$PY" bench/checkin.py --url "$url" "${tls[@]}" --setup-django --worker-pid "$celery_pid" \
    --output "$OUT" "$@"

#!/usr/bin/env bash
# Make Redis and Postgres reachable at the URLs flashsale is configured with.
#
#   scripts/services.sh         ensure both answer (start private instances if needed)
#   scripts/services.sh stop    stop only the private instances this script started
#
# A service that already answers is used as it is (the fast path: one ping each).
# Otherwise, when its host is local, a private instance is started under .var/ of the
# project root (Redis with AOF; Postgres initialised once with trust auth). System
# services are never started, stopped or reconfigured.
#
# URLs (same defaults as the Python settings):
#   FLASHSALE_REDIS_URL          redis://127.0.0.1:6379/0
#   FLASHSALE_DATABASE_URL       postgresql://postgres@127.0.0.1:5432/flashsale
#   FLASHSALE_TEST_REDIS_URL     redis://127.0.0.1:6379/15
#   FLASHSALE_TEST_DATABASE_URL  postgresql://postgres@127.0.0.1:5432/flashsale_test
# SERVICES_TIMEOUT (seconds, default 30) bounds the wait for a started instance.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VAR="$ROOT/.var"
TIMEOUT="${SERVICES_TIMEOUT:-30}"
ME="services.sh"

REDIS_URL="${FLASHSALE_REDIS_URL:-redis://127.0.0.1:6379/0}"
DATABASE_URL="${FLASHSALE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/flashsale}"
TEST_REDIS_URL="${FLASHSALE_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
TEST_DATABASE_URL="${FLASHSALE_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/flashsale_test}"

say() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$ME" "$*" >&2; exit 1; }

# --- URL parsing -------------------------------------------------------------------
# parse_url URL DEFAULT_PORT -> sets U_HOST U_PORT U_USER U_PASS (no percent-decoding)
parse_url() {
    local url="$1" default_port="$2" rest userinfo hostport
    rest="${url#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    U_USER="" U_PASS=""
    if [[ "$rest" == *@* ]]; then
        userinfo="${rest%@*}"
        hostport="${rest##*@}"
        U_USER="${userinfo%%:*}"
        [[ "$userinfo" == *:* ]] && U_PASS="${userinfo#*:}"
    else
        hostport="$rest"
    fi
    hostport="${hostport%%,*}"             # libpq multi-host lists: first host only
    if [[ "$hostport" == \[* ]]; then      # [::1]:6379
        U_HOST="${hostport#\[}"
        U_HOST="${U_HOST%%\]*}"
        U_PORT="${hostport#*\]}"
        U_PORT="${U_PORT#:}"
    elif [[ "$hostport" == *:* ]]; then
        U_HOST="${hostport%%:*}"
        U_PORT="${hostport#*:}"
    else
        U_HOST="$hostport"
        U_PORT=""
    fi
    U_HOST="${U_HOST:-127.0.0.1}"
    U_PORT="${U_PORT:-$default_port}"
    [[ "$U_PORT" =~ ^[0-9]+$ ]] || die "cannot read a port number in the URL $url."
}

is_local() {
    case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# Bracket IPv6 literals for /dev/tcp and messages.
hp() { if [[ "$1" == *:* ]]; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi; }

# --- probes (fast: they run on every `make test`) ------------------------------------
# Each returns 0 when the service is ready, 2 when it answers but is not ready yet
# (Redis loading its data, Postgres starting or recovering), 1 when nothing answers.
tcp_redis_ping() {  # host port: speaks RESP over bash's /dev/tcp when redis-cli is absent
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 1 line <&3 || exit 1
        [[ "$line" == +PONG* || "$line" == -NOAUTH* ]]' _ "$1" "$2" 2>/dev/null
}

redis_up() {  # host port [password]
    local out
    if command -v redis-cli >/dev/null 2>&1; then
        if [[ -n "${3:-}" ]]; then
            out="$(REDISCLI_AUTH="$3" timeout 3 redis-cli -h "$1" -p "$2" ping 2>/dev/null)" || true
        else
            out="$(timeout 3 redis-cli -h "$1" -p "$2" ping 2>/dev/null)" || true
        fi
        [[ "$out" == PONG* || "$out" == *NOAUTH* ]] && return 0
        [[ "$out" == *LOADING* ]] && return 2     # answering, still loading its AOF
        return 1
    else
        tcp_redis_ping "$1" "$2"
    fi
}

PG_ISREADY=""
find_pg_isready() {
    [[ -n "$PG_ISREADY" ]] && return 0
    PG_ISREADY="$(command -v pg_isready 2>/dev/null || true)"
    if [[ -z "$PG_ISREADY" ]]; then
        local d
        for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
            if [[ -x "$d/pg_isready" ]]; then PG_ISREADY="$d/pg_isready"; break; fi
        done
    fi
    [[ -n "$PG_ISREADY" ]] || PG_ISREADY="none"
}

postgres_up() {  # host port
    find_pg_isready
    if [[ "$PG_ISREADY" != none ]]; then
        local rc=0
        "$PG_ISREADY" -q -h "$1" -p "$2" -t 2 >/dev/null 2>&1 || rc=$?
        case "$rc" in 0) return 0 ;; 1) return 2 ;; *) return 1 ;; esac
    else
        timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
    fi
}

# DEAD_CHECK, when set, names a function that succeeds once the starting process has
# visibly failed, so a failed start is reported at once instead of after the timeout.
DEAD_CHECK=""
wait_until() {  # what host port probe-function [args...]
    local what="$1" host="$2" port="$3"; shift 3
    local t0=$SECONDS deadline=$((SECONDS + TIMEOUT))
    while ! "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        if [[ -n "$DEAD_CHECK" ]] && "$DEAD_CHECK"; then
            return 1
        fi
        sleep 0.2
    done
    say "$what: up at $(hp "$host" "$port") (ready after $((SECONDS - t0))s)"
}

# --- installing missing binaries ---------------------------------------------------
try_apt_install() {  # package -> 0 if installed now
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "$1: not installed; installing it with apt-get ..."
        apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
        return $?
    fi
    return 1
}

# --- Redis -------------------------------------------------------------------------
find_redis_server() {
    local p
    p="$(command -v redis-server 2>/dev/null || true)"
    for p in "$p" /usr/sbin/redis-server /usr/bin/redis-server /usr/local/bin/redis-server; do
        if [[ -n "$p" && -x "$p" ]]; then printf '%s' "$p"; return 0; fi
    done
    return 1
}

# Private files of one instance: the default port uses .var/redis, others get a suffix,
# so the main and the test URL may name different ports without clashing.
redis_paths() {  # port -> R_DIR R_PID R_LOG
    local sfx=""
    [[ "$1" == 6379 ]] || sfx="-$1"
    R_DIR="$VAR/redis$sfx"
    R_PID="$VAR/redis$sfx.pid"
    R_LOG="$VAR/redis$sfx.log"
}

# The daemonized child writes its pidfile only after it listens, and logs "aborting"
# when it cannot (port taken, bad option).
R_LOG_OFFSET=0 R_STARTED=0
redis_start_failed() {
    tail -c +"$((R_LOG_OFFSET + 1))" "$R_LOG" 2>/dev/null | grep -q -i -e aborting -e 'fatal' && return 0
    if [[ -s "$R_PID" ]]; then
        ! kill -0 "$(cat "$R_PID")" 2>/dev/null
    else
        ((SECONDS - R_STARTED > 5))
    fi
}

ensure_redis() {  # url
    parse_url "$1" 6379
    local host="$U_HOST" port="$U_PORT" pass="$U_PASS" bin bind rc=0
    redis_up "$host" "$port" "$pass" || rc=$?
    if ((rc == 0)); then
        say "redis: up at $(hp "$host" "$port") (existing)"
        return 0
    fi
    DEAD_CHECK=""
    if ((rc == 2)); then
        say "redis: $(hp "$host" "$port") answers but is still loading, waiting ..."
        wait_until redis "$host" "$port" redis_up "$host" "$port" "$pass" ||
            die "Redis at $(hp "$host" "$port") was still loading after ${TIMEOUT}s; try again when it is ready."
        return 0
    fi
    is_local "$host" ||
        die "Redis does not answer at $(hp "$host" "$port") and that host is not local, so start it there or point FLASHSALE_REDIS_URL at a running Redis."

    redis_paths "$port"
    DEAD_CHECK=""
    if [[ -s "$R_PID" ]] && kill -0 "$(cat "$R_PID")" 2>/dev/null; then
        say "redis: private instance (pid $(cat "$R_PID")) is running, waiting for it ..."
    else
        if ! bin="$(find_redis_server)"; then
            try_apt_install redis-server ||
                die "redis-server is not installed and could not be installed here, so install it (Debian: apt-get install redis-server) or point FLASHSALE_REDIS_URL at a running Redis."
            # The package may have started its own server on this port.
            if redis_up "$host" "$port" "$pass"; then
                say "redis: up at $(hp "$host" "$port") (existing, from the package)"
                return 0
            fi
            bin="$(find_redis_server)" || die "redis-server is still missing after apt-get install redis-server, so install it by hand."
        fi
        mkdir -p "$R_DIR"
        case "$host" in
            localhost) bind="127.0.0.1 -::1" ;;
            *) bind="$host" ;;
        esac
        local args=(
            --daemonize yes --port "$port" --bind "$bind"
            --dir "$R_DIR" --appendonly yes --appendfsync everysec
            --maxmemory-policy noeviction --save ""
            --pidfile "$R_PID" --logfile "$R_LOG"
        )
        [[ -n "$pass" ]] && args+=(--requirepass "$pass")
        say "redis: not answering at $(hp "$host" "$port"); starting a private instance (data ${R_DIR#"$ROOT"/}, log ${R_LOG#"$ROOT"/}) ..."
        touch "$R_LOG"
        R_LOG_OFFSET="$(wc -c <"$R_LOG")"
        R_STARTED=$SECONDS
        rm -f "$R_PID"
        "$bin" "${args[@]}" || die "redis-server failed to start; see $R_LOG."
        DEAD_CHECK=redis_start_failed
    fi
    wait_until redis "$host" "$port" redis_up "$host" "$port" "$pass" || {
        tail -n 5 "$R_LOG" >&2 2>/dev/null || true
        die "Redis did not come up at $(hp "$host" "$port") (waited at most ${TIMEOUT}s); its log is $R_LOG."
    }
}

# --- Postgres ----------------------------------------------------------------------
PG_BIN=""
find_pg_bin() {  # [major] -> PG_BIN: directory holding initdb and pg_ctl
    local want="${1:-}" d a b
    if [[ -n "$want" && -x "/usr/lib/postgresql/$want/bin/pg_ctl" ]]; then
        PG_BIN="/usr/lib/postgresql/$want/bin"; return 0
    fi
    a="$(command -v initdb 2>/dev/null || true)"
    b="$(command -v pg_ctl 2>/dev/null || true)"
    if [[ -n "$a" && -n "$b" ]]; then
        # Both on PATH: prefer pg_ctl's real directory (they are often symlinks).
        for d in "$(dirname "$(readlink -f "$b")")" "$(dirname "$b")"; do
            if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then PG_BIN="$d"; return 0; fi
        done
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then PG_BIN="$d"; return 0; fi
    done
    return 1
}

# Run a Postgres server binary as the data directory's owner: Postgres refuses root.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

ensure_pg_user() {
    [[ "$(id -u)" == 0 ]] || return 0
    command -v runuser >/dev/null 2>&1 ||
        die "runuser (util-linux) is missing, so Postgres cannot be run as a non-root user; install util-linux or run this script as a non-root user."
    if ! id -u postgres >/dev/null 2>&1; then
        say "postgres: creating the system user 'postgres' to run the private instance"
        useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
            --shell /bin/sh postgres
    fi
}

# Where a private instance keeps its files. The default port uses .var/pg, others a
# suffix. When the postgres user cannot reach .var (a parent directory is closed to
# it), everything moves to /tmp/flashsale-pg-<hash of the project path>.
pg_paths() {  # port -> P_DATA P_SOCK P_LOG P_FALLBACK
    local sfx="" hash
    [[ "$1" == 5432 ]] || sfx="-$1"
    hash="$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
    P_FALLBACK="/tmp/flashsale-pg-$hash$sfx"
    if [[ -d "$P_FALLBACK/data" ]]; then
        P_DATA="$P_FALLBACK/data" P_SOCK="$P_FALLBACK/sock" P_LOG="$P_FALLBACK/pg.log"
    else
        P_DATA="$VAR/pg$sfx" P_SOCK="$VAR/pgsock" P_LOG="$VAR/pg$sfx.log"
    fi
}

prepare_pg_dirs() {  # port: create dirs, own them by postgres, fall back to /tmp if needed
    local port="$1" owner
    mkdir -p "$VAR"
    if [[ "$P_DATA" == "$VAR"/* ]]; then
        if [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$VAR" 2>/dev/null; then
            P_DATA="$P_FALLBACK/data" P_SOCK="$P_FALLBACK/sock" P_LOG="$P_FALLBACK/pg.log"
            say "postgres: user 'postgres' cannot reach $VAR (a parent directory is closed to it); using $P_FALLBACK instead"
        fi
    fi
    # A Unix socket path must fit in 107 bytes.
    if ((${#P_SOCK} + 20 > 107)); then
        P_SOCK="$P_FALLBACK/sock"
    fi
    if [[ "$P_DATA" == "$P_FALLBACK"/* ]]; then
        mkdir -p "$P_FALLBACK"
        chmod 755 "$P_FALLBACK"
    fi
    mkdir -p "$P_DATA" "$P_SOCK"
    touch "$P_LOG"
    chmod 700 "$P_DATA"
    if [[ "$(id -u)" == 0 ]]; then
        owner="postgres:$(id -gn postgres)"
        chown "$owner" "$P_DATA" "$P_SOCK" "$P_LOG"
        [[ "$P_SOCK" == "$P_FALLBACK"/* ]] && chown "$owner" "$P_FALLBACK"
    fi
    return 0
}

pg_running() {  # data dir: is a postmaster alive for it?
    [[ -f "$1/postmaster.pid" ]] || return 1
    local pid
    pid="$(head -n 1 "$1/postmaster.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

ensure_postgres() {  # url
    parse_url "$1" 5432
    local host="$U_HOST" port="$U_PORT" user="${U_USER:-postgres}" pass="$U_PASS" listen rc=0
    postgres_up "$host" "$port" || rc=$?
    if ((rc == 0)); then
        say "postgres: up at $(hp "$host" "$port") (existing)"
        return 0
    fi
    DEAD_CHECK=""
    if ((rc == 2)); then
        say "postgres: $(hp "$host" "$port") answers but is not accepting connections yet, waiting ..."
        wait_until postgres "$host" "$port" postgres_up "$host" "$port" ||
            die "Postgres at $(hp "$host" "$port") still refused connections after ${TIMEOUT}s; check that server's log."
        return 0
    fi
    is_local "$host" ||
        die "Postgres does not answer at $(hp "$host" "$port") and that host is not local, so start it there or point FLASHSALE_DATABASE_URL at a running Postgres."

    pg_paths "$port"
    if pg_running "$P_DATA"; then
        say "postgres: private instance in $P_DATA is running, waiting for it ..."
    else
        local major=""
        [[ -f "$P_DATA/PG_VERSION" ]] && major="$(cat "$P_DATA/PG_VERSION")"
        if ! find_pg_bin "$major"; then
            try_apt_install postgresql ||
                die "the Postgres server (initdb, pg_ctl) is not installed and could not be installed here, so install it (Debian: apt-get install postgresql) or point FLASHSALE_DATABASE_URL at a running Postgres."
            if postgres_up "$host" "$port"; then
                say "postgres: up at $(hp "$host" "$port") (existing, from the package)"
                return 0
            fi
            find_pg_bin "$major" || die "initdb and pg_ctl are still missing after apt-get install postgresql, so install the Postgres server by hand."
        fi
        ensure_pg_user
        prepare_pg_dirs "$port"
        if [[ ! -f "$P_DATA/PG_VERSION" ]]; then
            say "postgres: initialising a private cluster in $P_DATA ($PG_BIN) ..."
            as_pg "$PG_BIN/initdb" -D "$P_DATA" -U postgres --auth=trust \
                --no-locale --encoding=UTF8 >"$P_LOG.initdb" 2>&1 || {
                tail -n 20 "$P_LOG.initdb" >&2
                die "initdb failed; see $P_LOG.initdb."
            }
        fi
        case "$host" in
            localhost) listen="localhost" ;;
            *) listen="$host" ;;
        esac
        say "postgres: not answering at $(hp "$host" "$port"); starting a private instance (data $P_DATA, log $P_LOG) ..."
        as_pg "$PG_BIN/pg_ctl" -D "$P_DATA" -l "$P_LOG" \
            -o "-p $port -k '$P_SOCK' -c listen_addresses=$listen" \
            -w -t "$TIMEOUT" start >/dev/null || {
            tail -n 10 "$P_LOG" >&2 || true
            die "pg_ctl could not start Postgres on port $port; see $P_LOG."
        }
    fi
    DEAD_CHECK=""
    wait_until postgres "$host" "$port" postgres_up "$host" "$port" || {
        tail -n 10 "$P_LOG" >&2 || true
        die "Postgres did not come up at $(hp "$host" "$port") (waited at most ${TIMEOUT}s); its log is $P_LOG."
    }
    # initdb made only the role 'postgres'; a URL naming another role gets it too.
    if [[ "$user" != postgres ]] && command -v psql >/dev/null 2>&1; then
        local q="DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN
                 CREATE ROLE \"$user\" LOGIN SUPERUSER${pass:+ PASSWORD '$pass'}; END IF; END\$\$;"
        psql -q -h "$host" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$q" >/dev/null ||
            die "could not create the role $user in the private Postgres, so create it by hand."
    fi
}

# --- stop ----------------------------------------------------------------------------
stop_private() {
    local stopped=0 f pid d i hash
    for f in "$VAR"/redis*.pid; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server; then
            kill -TERM "$pid"
            for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                say "redis: private instance (pid $pid) did not stop within 10s" >&2
            else
                say "redis: stopped private instance (pid $pid, ${f#"$ROOT"/})"
                stopped=1
            fi
        fi
        rm -f "$f"
    done
    hash="$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
    for d in "$VAR"/pg "$VAR"/pg-* /tmp/flashsale-pg-"$hash"/data /tmp/flashsale-pg-"$hash"-*/data; do
        [[ -d "$d" ]] || continue
        pg_running "$d" || continue
        find_pg_bin "$(cat "$d/PG_VERSION" 2>/dev/null || true)" ||
            die "cannot find pg_ctl to stop the private Postgres in $d."
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 30 stop >/dev/null
        say "postgres: stopped private instance ($d)"
        stopped=1
    done
    ((stopped)) || say "no private instance is running (system services are left alone)"
}

# --- main ----------------------------------------------------------------------------
main() {
    case "${1:-start}" in
        start | up | "") ;;
        stop | down) stop_private; return 0 ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; return 0 ;;
        *) die "unknown command '$1'; use no argument (start) or 'stop'." ;;
    esac

    local url key seen=" "
    for url in "$REDIS_URL" "$TEST_REDIS_URL"; do
        parse_url "$url" 6379
        key="$U_HOST:$U_PORT"
        [[ "$seen" == *" r:$key "* ]] && continue
        seen+="r:$key "
        ensure_redis "$url"
    done
    for url in "$DATABASE_URL" "$TEST_DATABASE_URL"; do
        parse_url "$url" 5432
        key="$U_HOST:$U_PORT"
        [[ "$seen" == *" p:$key "* ]] && continue
        seen+="p:$key "
        ensure_postgres "$url"
    done
}

main "$@"

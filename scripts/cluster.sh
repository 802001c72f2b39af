#!/usr/bin/env bash
# A local Redis Cluster for development and tests: 3 masters and 3 replicas on free ports,
# from the same redis-server `make services` finds, kept under .var/cluster/.
#
#   bash scripts/cluster.sh          start it (or reuse a running one); prints its URL
#   bash scripts/cluster.sh stop     stop it and remove its files
#   bash scripts/cluster.sh url      print the URL of a running one (exit 1 if none)
#   bash scripts/cluster.sh node P   start node P again after it died (it rejoins from its
#                                    nodes.conf; failover tests use it)
#
# The URL names one node; clients discover the others (CLUSTER SLOTS).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.var/cluster"
PORTS_FILE="$DIR/ports"

die() { echo "make cluster: $*" >&2; exit 1; }

find_bin() {  # name -> path
    local p
    p="$(command -v "$1" 2>/dev/null || true)"
    for p in "$p" "/usr/sbin/$1" "/usr/bin/$1" "/usr/local/bin/$1"; do
        if [[ -n "$p" && -x "$p" ]]; then printf '%s' "$p"; return 0; fi
    done
    return 1
}

alive() {  # every node answers and the cluster says ok
    [[ -f "$PORTS_FILE" ]] || return 1
    local port
    for port in $(cat "$PORTS_FILE"); do
        "$CLI" -p "$port" ping >/dev/null 2>&1 || return 1
    done
    "$CLI" -p "$(head -n1 "$PORTS_FILE" | cut -d' ' -f1)" cluster info 2>/dev/null \
        | grep -q '^cluster_state:ok'
}

stop() {
    if [[ -d "$DIR" ]]; then
        local pidfile
        for pidfile in "$DIR"/*/redis.pid; do
            [[ -f "$pidfile" ]] || continue
            local pid
            pid="$(cat "$pidfile")"
            if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
                    | grep -q redis-server; then
                kill "$pid"
            fi
        done
        sleep 0.5
        rm -rf "$DIR"
    fi
}

url() { echo "redis://127.0.0.1:$(cut -d' ' -f1 "$PORTS_FILE")/0"; }

start_node() {  # port
    mkdir -p "$DIR/$1"
    "$SERVER" --port "$1" --bind 127.0.0.1 --dir "$DIR/$1" --daemonize yes \
        --pidfile "$DIR/$1/redis.pid" --logfile "$DIR/$1/redis.log" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --appendonly yes --appendfsync everysec --save "" \
        || die "redis-server did not start on port $1; see $DIR/$1/redis.log."
}

SERVER="$(find_bin redis-server)" || die "redis-server is not installed (Debian: apt-get install redis-server)."
CLI="$(find_bin redis-cli)" || die "redis-cli is not installed (Debian: apt-get install redis-tools)."

case "${1:-start}" in
    stop) stop; exit 0 ;;
    url) alive || exit 1; url; exit 0 ;;
    node)
        [[ -n "${2:-}" && -d "$DIR/${2:-}" ]] || die "no node '${2:-}' under $DIR."
        start_node "$2"; exit 0 ;;
    start) ;;
    *) die "unknown command '$1' (start, stop, url, node PORT)." ;;
esac

if alive; then url; exit 0; fi
stop
mkdir -p "$DIR"
# Six ports that are free, each with its cluster bus port (port + 10000) free as well.
PORTS="$(python3 - <<'EOF'
import random
import socket


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


ports = []
while len(ports) < 6:
    port = random.randrange(20000, 40000)
    if port not in ports and free(port) and free(port + 10000):
        ports.append(port)
print(" ".join(map(str, ports)))
EOF
)"
echo "$PORTS" >"$PORTS_FILE"
for port in $PORTS; do
    start_node "$port"
done
for port in $PORTS; do
    for _ in $(seq 50); do
        "$CLI" -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
done
# shellcheck disable=SC2046
"$CLI" --cluster create $(for p in $PORTS; do printf '127.0.0.1:%s ' "$p"; done) \
    --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 \
    || die "redis-cli --cluster create failed; see $DIR/create.log."
for _ in $(seq 100); do
    alive && break
    sleep 0.1
done
alive || die "the cluster did not reach cluster_state:ok; see $DIR/*/redis.log."
# Every replica attached and in sync, so a failover has a replica to promote.
synced() {
    local port n=0
    for port in $PORTS; do
        "$CLI" -p "$port" info replication 2>/dev/null | grep -q '^master_link_status:up' \
            && n=$((n + 1))
    done
    [[ "$n" == 3 ]]
}
for _ in $(seq 200); do
    synced && break
    sleep 0.1
done
synced || die "the replicas did not sync with their masters; see $DIR/*/redis.log."
url

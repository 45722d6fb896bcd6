#!/usr/bin/env bash
# The main job on a built-in default, as root: build a throwaway copy of the seed topology in
# network namespaces (tests/lab/lab.sh), run maglevd on both frontends with config/maglevd.toml,
# send real HTTP requests from the client through the VIP, print which backend served them and
# maglevd's counters, then remove everything it created.
#
#   tests/lab/demo.sh [REQUESTS]        (default 600 requests, each a new TCP connection)
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS="${1:-600}"
[[ "$REQUESTS" =~ ^[0-9]+$ ]] && ((REQUESTS > 0 && REQUESTS <= 100000)) || { echo "usage: $0 [REQUESTS 1..100000]" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "demo.sh: run as root (it builds network namespaces)" >&2; exit 1; }

export LAB_PREFIX="${LAB_PREFIX:-mlvdemo}"
LAB=tests/lab/lab.sh
DIR="/tmp/${LAB_PREFIX}-lab"
BIN=target/release/maglevd
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    "$LAB" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

tests/setup.sh
echo "== building maglevd (release)"
cargo build --release --quiet
echo "== building the lab (router with ECMP, fe1/fe2, be1..be3 running nginx)"
"$LAB" up

for fe in fe1 fe2; do
    ip netns exec "${LAB_PREFIX}-$fe" "$BIN" run -c config/maglevd.toml >"$DIR/maglevd-$fe.log" 2>&1 &
    PIDS+=("$!")
done
echo "== maglevd started on fe1 and fe2 (logs: $DIR/maglevd-fe*.log); waiting for ARP resolution of the backends"
for fe in fe1 fe2; do
    for _ in $(seq 100); do
        "$LAB" exec "$fe" curl -sf -m 1 http://127.0.0.1:9100/healthz >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$LAB" exec "$fe" curl -sf -m 1 http://127.0.0.1:9100/healthz >/dev/null \
        || { echo "maglevd on $fe is not ready:"; cat "$DIR/maglevd-$fe.log"; exit 1; }
done

echo "== $REQUESTS HTTP requests from the client to http://10.201.0.1/ (a new connection each)"
"$LAB" exec client curl -s -m 60 -H 'Connection: close' "http://10.201.0.1/?[1-$REQUESTS]" >"$DIR/answers"
echo "   answered by:"
sort "$DIR/answers" | uniq -c | sed 's/^/     /'
served=$(wc -l <"$DIR/answers")
[[ "$served" -eq "$REQUESTS" ]] || { echo "only $served of $REQUESTS requests were answered"; exit 1; }

echo "== 3 s of wrk (keep-alive, 32 connections) through the VIP"
"$LAB" exec client wrk -t2 -c32 -d3s http://10.201.0.1/ | grep -E "Requests/sec|requests in"

echo "== maglevd counters (non-zero)"
for fe in fe1 fe2; do
    echo "   $fe:"
    "$LAB" exec "$fe" curl -s -m 2 http://127.0.0.1:9100/metrics \
        | grep -v '^#' | awk '$2 != 0' | sed 's/^/     /'
done
echo "== replies went backend → router directly: frames from the VIP seen on fe1/fe2 net1 would be a bug;"
echo "   net1 TX packets: fe1 $("$LAB" exec fe1 cat /sys/class/net/net1/statistics/tx_packets)," \
    "fe2 $("$LAB" exec fe2 cat /sys/class/net/net1/statistics/tx_packets) (ARP only)"
echo "== done; removing the lab"

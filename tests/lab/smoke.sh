#!/usr/bin/env bash
# Smoke test of the lab with the kernel baseline (no maglevd): builds the lab,
# checks addressing, ARP, ECMP, DSR reply path, /big integrity, a 2 s wrk, then
# tears it down. Exits non-zero on the first failed check.
#   tests/lab/smoke.sh            (LAB_PREFIX honoured; default mlv)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
L="$HERE/lab.sh"
P="${LAB_PREFIX:-mlv}"
VIP=10.201.0.1
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }
cnt() { "$L" exec "$1" cat "/sys/class/net/$2/statistics/$3"; }

trap '"$L" down >/dev/null 2>&1 || true' EXIT
"$L" up

for b in 1 2 3; do
    got="$("$L" exec client curl -sS -m 3 "http://10.158.200.25$b/")"
    [[ "$got" == "be$b" ]] || fail "client -> 10.158.200.25$b answered '$got'"
done
ok "client reaches be1/be2/be3 real IPs through the router"

"$L" exec router ping -c1 -W1 10.158.100.2 >/dev/null
"$L" exec router ping -c1 -W1 10.158.100.3 >/dev/null
n="$("$L" exec router ip neigh show dev vlan100)"
grep -q '10.158.100.2 lladdr c2:b0:57:49:47:f1' <<<"$n" || fail "router neigh for fe1: $n"
grep -q '10.158.100.3 lladdr c2:b0:57:49:47:e1' <<<"$n" || fail "router neigh for fe2: $n"
ok "router resolves 10.158.100.2/.3 to fe1/fe2 net1 MACs"

if "$L" exec router arping -q -c2 -w2 -I vlan100 "$VIP"; then fail "someone answers ARP for the VIP on vlan100"; fi
if "$L" exec router arping -q -c2 -w2 -I vlan200 "$VIP"; then fail "someone answers ARP for the VIP on vlan200"; fi
ok "nobody answers ARP for $VIP on vlan100 or vlan200"

if "$L" exec client curl -sS -m 2 "http://$VIP/" >/dev/null 2>&1; then fail "VIP answers without a forwarder"; fi
ok "VIP does not answer without a forwarder"

"$L" kernel-forward on >/dev/null
declare -A seen=()
b1="$(cnt fe1 net1 tx_packets)" b2="$(cnt fe2 net1 tx_packets)"
r1="$(cnt fe1 net2 tx_packets)" r2="$(cnt fe2 net2 tx_packets)"
for ((i = 0; i < 30; i++)); do
    got="$("$L" exec client curl -sS -m 3 "http://$VIP/")"
    seen[$got]=$((${seen[$got]:-0} + 1))
done
a1="$(cnt fe1 net1 tx_packets)" a2="$(cnt fe2 net1 tx_packets)"
s1="$(cnt fe1 net2 tx_packets)" s2="$(cnt fe2 net2 tx_packets)"
dist=""
for k in "${!seen[@]}"; do dist+="$k=${seen[$k]} "; done
[[ -n "${seen[be1]:-}" && -n "${seen[be2]:-}" ]] || fail "ECMP did not use both frontends: $dist"
ok "30 requests through the VIP: $dist(fe net2 tx +$((s1 - r1)) / +$((s2 - r2)) packets)"
# Only ARP may leave a frontend's net1; 30 connections of replies would be > 150 packets.
((a1 - b1 <= 4 && a2 - b2 <= 4)) || fail "replies crossed a frontend: net1 tx +$((a1 - b1)) / +$((a2 - b2))"
ok "replies bypass the frontends (fe1/fe2 net1 tx +$((a1 - b1)) / +$((a2 - b2)) packets)"

want="$(cat "/tmp/$P-lab/big.sha256")"
got="$("$L" exec client curl -sS -m 60 "http://$VIP/big" | sha256sum | cut -d' ' -f1)"
[[ "$got" == "$want" ]] || fail "/big sha256 $got != $want"
ok "/big (100 MiB) through the VIP: sha256 $got matches"

rate="$("$L" exec client timeout 15 wrk -t1 -c32 -d2s "http://$VIP/" | awk '/Requests\/sec/ {print $2}')"
[[ -n "$rate" ]] || fail "wrk gave no rate"
ok "wrk -t1 -c32 -d2s through the VIP (kernel-forward): $rate req/s"

"$L" kernel-forward off >/dev/null
if "$L" exec client curl -sS -m 2 "http://$VIP/" >/dev/null 2>&1; then fail "VIP still answers after kernel-forward off"; fi
ok "kernel-forward off: VIP no longer answers"

trap - EXIT
"$L" down >/dev/null
"$L" down >/dev/null
left="$(ip netns list | grep -c "^$P-" || true)"
[[ "$left" == 0 ]] || fail "$left $P-* namespaces left"
ok "down (twice): no $P-* namespaces left"

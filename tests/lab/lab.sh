#!/usr/bin/env bash
# maglevd network-namespace lab: a copy of the seed topology (router with ECMP
# -> two frontend pods -> three DSR backend pods; macvlan in bridge mode over
# VLANs 100/200 on two worker nodes behind one switch), built entirely inside
# network namespaces.
#
#   lab.sh up                      build (cleans up a previous lab first)
#   lab.sh down                    destroy (namespaces + processes in them); idempotent
#   lab.sh exec NS CMD...          run CMD in lab namespace NS (short name)
#   lab.sh kernel-forward on|off   kernel forwarding on the frontends (baseline mode)
#   lab.sh bgp on|off              the router learns the VIP by BGP from BIRD on fe1/fe2
#   lab.sh birdc NS CMD...         query the BIRD of NS (router, fe1, fe2)
#   lab.sh info                    addresses, MACs, routes, namespaces
#   lab.sh ns NS                   print the full namespace name of NS
#
# Environment:
#   LAB_PREFIX  (default mlv) prefixes every namespace, the switch's links and
#               the lab dir /tmp/$LAB_PREFIX-lab. Nothing is created or changed
#               in the root namespace: every link is created inside a lab namespace.
#   LAB_VLAN    auto (default) | 8021q | split. 8021q = tagged trunks, 802.1Q
#               subinterfaces and a VLAN-filtering bridge, as in the seed; needs
#               CONFIG_VLAN_8021Q and CONFIG_BRIDGE_VLAN_FILTERING and fails loudly
#               without them. split = one bridge per VLAN in the switch and untagged
#               access links named vlan100/vlan200 on each node. auto = 8021q when
#               the kernel has it, else split with a loud warning.
# See tests/lab/README.md.
set -euo pipefail

P="${LAB_PREFIX:-mlv}"
if ! [[ "$P" =~ ^[A-Za-z][A-Za-z0-9_]{0,7}$ ]]; then
    echo "lab.sh: LAB_PREFIX '$P' invalid: want [A-Za-z][A-Za-z0-9_]{0,7} (link names are limited to 15 chars)" >&2
    exit 2
fi
LAB_VLAN="${LAB_VLAN:-auto}"
LAB_DIR="/tmp/${P}-lab"
SHORT_NAMES=(client router sw w1 w2 fe1 fe2 be1 be2 be3)

# --- addressing (mirrors the seed) -------------------------------------------
VIP=10.201.0.1
VIP_RANGE=10.201.0.0/16   # the router accepts BGP routes for /32s in here only
NET100=10.158.100
NET200=10.158.200
RT100="${NET100}.254"
RT200="${NET200}.254"
CLIENT_IP=192.168.100.1
CLIENT_GW=192.168.100.254
#        net1 ip        net1 mac           net2 ip        net2 mac
FE1=("${NET100}.2" c2:b0:57:49:47:f1 "${NET200}.2" c2:b0:57:49:47:f2)
FE2=("${NET100}.3" c2:b0:57:49:47:e1 "${NET200}.3" c2:b0:57:49:47:e2)
#        net1 ip          net1 mac          node
BE1=("${NET200}.251" c2:b0:57:49:47:a1 w1)
BE2=("${NET200}.252" c2:b0:57:49:47:a2 w2)
BE3=("${NET200}.253" c2:b0:57:49:47:a3 w2)
# Node-side link MACs (deterministic, locally administered): 02:6c:62:<node>:<vlan>:00,
# node 00=router 01=w1 02=w2, vlan 64=100 c8=200 (00 = the trunk in 8021q mode).
declare -A NODE_ID=([router]=00 [w1]=01 [w2]=02)
declare -A SW_TAG=([router]=rt [w1]=w1 [w2]=w2)
BIG_BYTES=104857600                       # 100 MiB
BIG_KEY=6d61676c65766c61622d626967000000  # AES-128-CTR keystream of this key = /big

die() { echo "lab.sh: $*" >&2; exit 1; }
ns() { echo "${P}-$1"; }
nsx() { local n; n="$(ns "$1")"; shift; ip netns exec "$n" "$@"; }
ipn() { local n; n="$(ns "$1")"; shift; ip -n "$n" "$@"; }
ns_exists() { [[ -e "/run/netns/$1" ]]; }

valid_short() {
    local s
    for s in "${SHORT_NAMES[@]}"; do [[ "$1" == "$s" ]] && return 0; done
    return 1
}

# --- prerequisites -------------------------------------------------------------
probe_fail() { ip netns del "$(ns probe)" 2>/dev/null || true; die "$1"; }

check_prereqs() {
    local missing=() c probe out no8021q=""
    for c in ip bridge sysctl nginx openssl sha256sum head stat; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    ((${#missing[@]} == 0)) \
        || die "missing required command(s): ${missing[*]} (apt-get install iproute2 procps nginx-light openssl coreutils)"
    [[ $EUID -eq 0 ]] || die "must run as root (network namespaces)"

    # Kernel features, probed in a throw-away namespace so nothing touches the host.
    probe="$(ns probe)"
    ip netns del "$probe" 2>/dev/null || true
    out="$(ip netns add "$probe" 2>&1)" || die "network namespace support unavailable: ip netns add failed: $out"
    out="$(ip -n "$probe" link add p0 type veth peer name p1 2>&1)" \
        || probe_fail "veth unavailable (CONFIG_VETH): $out"
    out="$(ip -n "$probe" link add link p0 name mv0 type macvlan mode bridge 2>&1)" \
        || probe_fail "macvlan (mode bridge) unavailable (CONFIG_MACVLAN): $out"
    out="$(ip -n "$probe" link add br0 type bridge 2>&1)" \
        || probe_fail "Linux bridge unavailable (CONFIG_BRIDGE): $out"
    if ! out="$(ip -n "$probe" link add link p0 name v100 type vlan id 100 2>&1)"; then
        no8021q="802.1Q VLAN devices (CONFIG_VLAN_8021Q: '${out//$'\n'/ }')"
    fi
    if ! out="$(ip -n "$probe" link add br1 type bridge vlan_filtering 1 2>&1)"; then
        no8021q="${no8021q:+$no8021q and }VLAN-filtering bridges (CONFIG_BRIDGE_VLAN_FILTERING: '${out//$'\n'/ }')"
    fi
    ip netns del "$probe"

    case "$LAB_VLAN" in
        8021q) [[ -z "$no8021q" ]] || die "LAB_VLAN=8021q but this kernel lacks $no8021q" ;;
        split) ;;
        auto)
            if [[ -z "$no8021q" ]]; then
                LAB_VLAN="8021q"
            else
                LAB_VLAN="split"
                echo "lab.sh: WARNING: this kernel lacks $no8021q." >&2
                echo "lab.sh: WARNING: VLANs 100/200 are built as separate L2 segments (LAB_VLAN=split): one bridge" >&2
                echo "lab.sh: WARNING: per VLAN in the switch, untagged access links vlan100/vlan200 on each node, no" >&2
                echo "lab.sh: WARNING: tagged trunk. Pods still get macvlan (bridge) children of vlan100/vlan200." >&2
                echo "lab.sh: WARNING: Set LAB_VLAN=8021q to require real 802.1Q tagging (fails on this kernel)." >&2
            fi
            ;;
        *) die "LAB_VLAN must be auto, 8021q or split (got '$LAB_VLAN')" ;;
    esac
}

# --- building blocks ------------------------------------------------------------
# sysctl in a namespace. Every namespace gets ip_forward and rp_filter explicitly
# (new namespaces inherit host defaults otherwise; docs/lab.md pitfall 2).
nsysctl() { local n="$1"; shift; nsx "$n" sysctl -q -w "$@" >/dev/null; }

base_sysctls() { # ns ip_forward rp_filter
    nsysctl "$1" \
        net.ipv4.ip_forward="$2" \
        net.ipv4.conf.all.rp_filter="$3" net.ipv4.conf.default.rp_filter="$3" \
        net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ipn "$1" link set lo up
}

# The physical switch.
build_switch() {
    ip netns add "$(ns sw)"
    base_sysctls sw 0 0
    # br_netfilter is built in: keep bridged IPv4 out of netfilter (pitfall 1).
    nsysctl sw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
        net.bridge.bridge-nf-call-arptables=0
    local nf=(nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0) vid
    if [[ "$LAB_VLAN" == 8021q ]]; then
        # One VLAN-aware bridge; no implicit VLAN 1 on ports.
        ipn sw link add "${P}-br" type bridge vlan_filtering 1 vlan_default_pvid 0 "${nf[@]}"
        ipn sw link set "${P}-br" up
    else
        for vid in 100 200; do
            ipn sw link add "${P}-b${vid}" type bridge "${nf[@]}"
            ipn sw link set "${P}-b${vid}" up
        done
    fi
}

# Connect a node (w1, w2, router) to the switch and give it interfaces vlan100/vlan200.
# 8021q: veth trunk <P>-<tag> (sw, tagged 100+200) <-> enp4s0 (node) + 802.1Q
#        subinterfaces vlan100/vlan200 on enp4s0 (the netplan of the seed).
# split: veth <P>-<tag>.<vid> (port of bridge <P>-b<vid>) <-> vlan<vid> (node).
connect_node() { # node
    local n="$1" tag="${SW_TAG[$1]}" id="${NODE_ID[$1]}" sw port vid
    sw="$(ns sw)"
    if [[ "$LAB_VLAN" == 8021q ]]; then
        port="${P}-${tag}"
        ip -n "$sw" link add "$port" type veth peer name enp4s0 netns "$(ns "$n")" address "02:6c:62:${id}:00:00"
        ip -n "$sw" link set "$port" master "${P}-br"
        bridge -n "$sw" vlan add dev "$port" vid 100
        bridge -n "$sw" vlan add dev "$port" vid 200
        ip -n "$sw" link set "$port" up
        ipn "$n" link set enp4s0 up
        for vid in 100 200; do
            ipn "$n" link add link enp4s0 name "vlan${vid}" type vlan id "$vid"
            ipn "$n" link set "vlan${vid}" up
        done
    else
        for vid in 100 200; do
            port="${P}-${tag}.${vid}"
            ip -n "$sw" link add "$port" type veth peer name "vlan${vid}" netns "$(ns "$n")" \
                address "02:6c:62:${id}:$(printf %02x "$vid"):00"
            ip -n "$sw" link set "$port" master "${P}-b${vid}"
            ip -n "$sw" link set "$port" up
            ipn "$n" link set "vlan${vid}" up
        done
    fi
}

# Like Multus + macvlan CNI: create a macvlan (mode bridge) child of the node's
# VLAN interface in the node namespace, move it into the pod, rename it.
pod_if() { # node parent pod ifname ip/len mac
    local node="$1" parent="$2" pod="$3" ifn="$4" addr="$5" mac="$6" tmp
    tmp="${pod}-${ifn}"
    ipn "$node" link add link "$parent" name "$tmp" address "$mac" type macvlan mode bridge
    ipn "$node" link set "$tmp" netns "$(ns "$pod")"
    ipn "$pod" link set "$tmp" name "$ifn"
    ipn "$pod" addr add "$addr" dev "$ifn"
    ipn "$pod" link set "$ifn" up
}

frontend() { # name node net1-ip net1-mac net2-ip net2-mac
    local f="$1" node="$2"
    ip netns add "$(ns "$f")"
    # No VIP, no forwarding: maglevd (AF_PACKET on net1/net2) does the forwarding.
    base_sysctls "$f" 0 0
    pod_if "$node" vlan100 "$f" net1 "$3/24" "$4"
    pod_if "$node" vlan200 "$f" net2 "$5/24" "$6"
    nsysctl "$f" net.ipv4.conf.net1.rp_filter=0 net.ipv4.conf.net2.rp_filter=0
    ipn "$f" route add default via "$RT100" dev net1
}

backend() { # name ip mac node
    local b="$1" rip="$2" mac="$3" node="$4"
    ip netns add "$(ns "$b")"
    base_sysctls "$b" 0 0
    # VIP on lo, never answered or announced by ARP (pitfall 3).
    nsysctl "$b" net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
        net.ipv4.conf.default.arp_ignore=1 net.ipv4.conf.default.arp_announce=2
    ipn "$b" addr add "$VIP/32" dev lo
    pod_if "$node" vlan200 "$b" net1 "$rip/24" "$mac"
    nsysctl "$b" net.ipv4.conf.net1.arp_ignore=1 net.ipv4.conf.net1.arp_announce=2 \
        net.ipv4.conf.net1.rp_filter=0 net.ipv4.conf.lo.rp_filter=0
    # Replies go straight to the router (DSR), never back through a frontend.
    ipn "$b" route add default via "$RT200" dev net1
}

make_big() {
    mkdir -p "$LAB_DIR"
    if [[ -s "$LAB_DIR/big" && -s "$LAB_DIR/big.sha256" ]] \
        && [[ "$(stat -c %s "$LAB_DIR/big")" == "$BIG_BYTES" ]]; then
        return 0
    fi
    # Deterministic pseudo-random bytes: AES-128-CTR keystream of a fixed key.
    # openssl dies of SIGPIPE once head has enough; that is expected.
    (
        set +o pipefail
        openssl enc -aes-128-ctr -nosalt -K "$BIG_KEY" -iv 00000000000000000000000000000000 \
            -in /dev/zero 2>/dev/null | head -c "$BIG_BYTES" >"$LAB_DIR/big.tmp"
    )
    [[ "$(stat -c %s "$LAB_DIR/big.tmp")" == "$BIG_BYTES" ]] || die "could not generate $LAB_DIR/big"
    mv "$LAB_DIR/big.tmp" "$LAB_DIR/big"
    sha256sum "$LAB_DIR/big" | cut -d' ' -f1 >"$LAB_DIR/big.sha256"
}

start_nginx() { # backend ip
    local be="$1" rip="$2" d="$LAB_DIR/$1" i
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
# generated by tests/lab/lab.sh for lab namespace $(ns "$be")
daemon on;
user root;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type text/plain;
    server {
        listen $VIP:80 backlog=4096;
        listen $rip:80 backlog=4096;
        location = / { return 200 "$be\\n"; }
        location = /big { default_type application/octet-stream; alias $LAB_DIR/big; }
    }
}
EOF
    nsx "$be" nginx -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" \
        || die "nginx failed to start in $(ns "$be") (see $d/error.log)"
    for ((i = 0; i < 100; i++)); do
        [[ -s "$d/nginx.pid" ]] && return 0
        sleep 0.02
    done
    die "nginx in $(ns "$be") did not write $d/nginx.pid"
}

# --- subcommands ---------------------------------------------------------------
# True if one of the pids still runs (a zombie waiting for init to reap it does not count).
any_alive() {
    local pid st
    for pid in "$@"; do
        st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
        if [[ -n "$st" && "$st" != Z ]]; then return 0; fi
    done
    return 1
}

cmd_down() {
    local s n pid pids=() i
    # nginx first via its pid file, then anything else still running in our namespaces
    # (a process inside a deleted namespace would keep it and its links alive).
    for s in be1 be2 be3; do
        if [[ -s "$LAB_DIR/$s/nginx.pid" ]]; then
            pid="$(cat "$LAB_DIR/$s/nginx.pid")"
            # only if that pid is still an nginx (never a recycled pid)
            if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == nginx ]]; then
                kill -TERM "$pid" 2>/dev/null || true
                pids+=("$pid")
            fi
        fi
    done
    for s in "${SHORT_NAMES[@]}" probe; do
        n="$(ns "$s")"
        ns_exists "$n" || continue
        while read -r pid; do
            if [[ "$pid" =~ ^[0-9]+$ && "$pid" != "$$" ]]; then pids+=("$pid"); fi
        done < <(ip netns pids "$n" 2>/dev/null || true)
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            any_alive "${pids[@]}" || break
            sleep 0.02
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    # Deleting a namespace deletes its links; veth peers in other namespaces go with them.
    for s in fe1 fe2 be1 be2 be3 w1 w2 sw router client probe; do
        n="$(ns "$s")"
        if ns_exists "$n"; then ip netns del "$n"; fi
    done
    # The lab dir holds only what up and bgp wrote (nginx dirs, /big, its sha256, BIRD's files).
    if [[ -d "$LAB_DIR" ]]; then
        rm -f "$LAB_DIR/big" "$LAB_DIR/big.tmp" "$LAB_DIR/big.sha256" "$LAB_DIR/vlan-mode"
        rm -rf "$LAB_DIR/be1" "$LAB_DIR/be2" "$LAB_DIR/be3" "$LAB_DIR/bird"
        rmdir "$LAB_DIR" 2>/dev/null || true
    fi
    if [[ "${1:-}" != quiet ]]; then echo "lab $P: down"; fi
}

cmd_up() {
    local t0 t1 s
    t0="$(date +%s%N)"
    check_prereqs
    cmd_down quiet
    make_big
    echo "$LAB_VLAN" >"$LAB_DIR/vlan-mode"

    build_switch
    for s in w1 w2 router client; do ip netns add "$(ns "$s")"; done

    # worker nodes: no addresses, no forwarding, just vlan100/vlan200 (netplan in the seed)
    for s in w1 w2; do
        base_sysctls "$s" 0 0
        connect_node "$s"
    done

    # router: VLAN gateways, ECMP over the frontends with L4 hashing, link to the client
    base_sysctls router 1 0
    connect_node router
    nsysctl router net.ipv4.fib_multipath_hash_policy=1 \
        net.ipv4.conf.vlan100.rp_filter=0 net.ipv4.conf.vlan200.rp_filter=0
    ipn router addr add "$RT100/24" dev vlan100
    ipn router addr add "$RT200/24" dev vlan200
    ipn router link add eth1 address 02:6c:62:00:01:fe type veth \
        peer name eth0 netns "$(ns client)" address 02:6c:62:10:01:01
    ipn router addr add "$CLIENT_GW/24" dev eth1
    ipn router link set eth1 up
    nsysctl router net.ipv4.conf.eth1.rp_filter=0
    ipn router route add "$VIP/32" \
        nexthop via "${FE1[0]}" dev vlan100 weight 1 \
        nexthop via "${FE2[0]}" dev vlan100 weight 1

    # client (pitfall 8: connection-per-request load needs these)
    base_sysctls client 0 0
    nsysctl client net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
    ipn client addr add "$CLIENT_IP/24" dev eth0
    ipn client link set eth0 up
    ipn client route add default via "$CLIENT_GW" dev eth0

    # pods
    frontend fe1 w1 "${FE1[@]}"
    frontend fe2 w2 "${FE2[@]}"
    backend be1 "${BE1[@]}"
    backend be2 "${BE2[@]}"
    backend be3 "${BE3[@]}"
    start_nginx be1 "${BE1[0]}"
    start_nginx be2 "${BE2[0]}"
    start_nginx be3 "${BE3[0]}"

    t1="$(date +%s%N)"
    echo "lab $P: up in $(((t1 - t0) / 1000000)) ms (vlan mode $LAB_VLAN, lab dir $LAB_DIR, /big sha256 $(cat "$LAB_DIR/big.sha256"))"
}

cmd_kernel_forward() {
    local mode="${1:-}" pair f via
    [[ "$mode" == on || "$mode" == off ]] || die "usage: lab.sh kernel-forward on|off"
    ns_exists "$(ns fe1)" || die "lab $P is not up"
    for pair in "fe1:${BE1[0]}" "fe2:${BE2[0]}"; do
        f="${pair%%:*}"
        via="${pair#*:}"
        if [[ "$mode" == on ]]; then
            nsysctl "$f" net.ipv4.ip_forward=1
            ipn "$f" route replace "$VIP/32" via "$via" dev net2
        else
            nsysctl "$f" net.ipv4.ip_forward=0
            ipn "$f" route del "$VIP/32" 2>/dev/null || true
        fi
    done
    echo "lab $P: kernel-forward $mode (fe1 -> be1 ${BE1[0]}, fe2 -> be2 ${BE2[0]})"
}

# --- BGP mode ------------------------------------------------------------------
# `bgp on`: BIRD in the router (AS 65000, a config generated here) and in fe1/fe2 (AS 65001, the
# shipped config/bird.conf unchanged); the router's VIP route then comes from BGP (one multipath
# route over the frontends that announce it) instead of the static ECMP route. Each BIRD runs in
# the foreground (-f, logging to stderr), backgrounded, with its control socket, pid file and log
# in $LAB_DIR/bird/.
BIRD_DIR="$LAB_DIR/bird"
BIRD_NS=(router fe1 fe2)
FE_BIRD_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/config/bird.conf"

bird_sock() { echo "$BIRD_DIR/$1.ctl"; }

# The router's side: explicit neighbours fe1 and fe2 (the router connects too, so a session comes
# up as soon as a frontend's BIRD listens), only /32s inside 10.201.0.0/16 accepted from them,
# exported into the main table as one route with a next hop per frontend.
write_router_bird_conf() {
    cat >"$BIRD_DIR/router.conf" <<EOF
# generated by tests/lab/lab.sh (bgp on) for lab namespace $(ns router)
router id $RT100;
log stderr all;

protocol device {
}

# BGP routes into the main table; equal paths from several frontends are merged into one route
# with several next hops (ECMP; net.ipv4.fib_multipath_hash_policy=1 hashes on L4).
protocol kernel {
    merge paths yes;
    ipv4 {
        import none;
        export where source = RTS_BGP;
    };
}

template bgp frontend {
    local $RT100 as 65000;
    # Lab timings: connect 1 s after start and retry every second (defaults 5 s and 120 s), wait
    # 1 s after an error (default 60 s), so a session comes up about a second after both ends
    # run, and again soon after a frontend comes back. The hold time is the frontend's
    # (config/bird.conf): a session uses the smaller of the two, and this side proposes none
    # smaller (default 240 s).
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 5;
    graceful restart off;
    ipv4 {
        import where net ~ [ $VIP_RANGE{32,32} ];
        export none;
    };
}

protocol bgp fe1 from frontend {
    neighbor ${FE1[0]} as 65001;
}

protocol bgp fe2 from frontend {
    neighbor ${FE2[0]} as 65001;
}
EOF
}

# Start BIRD in namespace $1 with config $2; wait (bounded) until its control socket answers.
start_bird() {
    local s="$1" conf="$2" sock i out
    sock="$(bird_sock "$s")"
    out="$(bird -p -c "$conf" 2>&1)" || die "BIRD config $conf does not parse: $out"
    rm -f "$sock" "$BIRD_DIR/$s.pid"
    # Its own session and no inherited descriptor: it outlives this script and never holds a
    # caller's pipe open. A plain command (not nsx), so no shell stays behind waiting for it.
    ip netns exec "$(ns "$s")" setsid bird -f -c "$conf" -s "$sock" -P "$BIRD_DIR/$s.pid" \
        </dev/null >>"$BIRD_DIR/$s.log" 2>&1 &
    for ((i = 0; i < 250; i++)); do
        if birdc -s "$sock" show status >/dev/null 2>&1; then return 0; fi
        sleep 0.02
    done
    die "BIRD in $(ns "$s") did not answer on $sock within 5 s (see $BIRD_DIR/$s.log)"
}

# Stop the BIRD of namespace $1 (SIGTERM: it withdraws what it exported, deletes the kernel routes
# it added, and exits); bounded, then SIGKILL.
stop_bird() {
    local s="$1" pid i
    if [[ -s "$BIRD_DIR/$s.pid" ]]; then
        pid="$(cat "$BIRD_DIR/$s.pid")"
        # only if that pid is still a bird (never a recycled pid)
        if [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == bird ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 250; i++)); do
                any_alive "$pid" || break
                sleep 0.02
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$BIRD_DIR/$s.pid" "$(bird_sock "$s")"
}

# True when the router's sessions to both frontends are established.
sessions_up() {
    local out
    out="$(birdc -s "$(bird_sock router)" show protocols 2>/dev/null)" || return 1
    [[ "$(grep -cE '^fe[12] +BGP .* Established' <<<"$out")" == 2 ]]
}

cmd_bgp() {
    local mode="${1:-}" s t0 t1 i
    [[ "$mode" == on || "$mode" == off ]] || die "usage: lab.sh bgp on|off"
    ns_exists "$(ns router)" || die "lab $P is not up"
    if [[ "$mode" == on ]]; then
        for s in bird birdc; do
            command -v "$s" >/dev/null 2>&1 || die "$s not found (apt-get install bird2)"
        done
        [[ -r "$FE_BIRD_CONF" ]] || die "cannot read $FE_BIRD_CONF"
        for s in "${BIRD_NS[@]}"; do stop_bird "$s"; done
        mkdir -p "$BIRD_DIR"
        write_router_bird_conf
        t0="$(date +%s%N)"
        start_bird router "$BIRD_DIR/router.conf"
        start_bird fe1 "$FE_BIRD_CONF"
        start_bird fe2 "$FE_BIRD_CONF"
        for ((i = 0; i < 500; i++)); do
            sessions_up && break
            sleep 0.02
        done
        sessions_up || die "BGP sessions router-fe1/fe2 not established within 10 s (logs in $BIRD_DIR):
$(birdc -s "$(bird_sock router)" show protocols 2>&1)"
        t1="$(date +%s%N)"
        # The static route goes only now: BIRD's routes (proto bird, metric 32) live beside it
        # (proto boot, metric 0) until then, so the VIP is never unrouted.
        ipn router route del "$VIP/32" proto boot 2>/dev/null || true
        echo "lab $P: bgp on: sessions router-fe1/fe2 established $(((t1 - t0) / 1000000)) ms after the router's BIRD started; $VIP now routed by BGP only"
    else
        # The router's BIRD first (it deletes its route), and the static route at once after it.
        stop_bird router
        ipn router route replace "$VIP/32" \
            nexthop via "${FE1[0]}" dev vlan100 weight 1 \
            nexthop via "${FE2[0]}" dev vlan100 weight 1
        stop_bird fe1
        stop_bird fe2
        echo "lab $P: bgp off: BIRD stopped in router, fe1 and fe2; static ECMP route for $VIP back"
    fi
}

cmd_info() {
    local s n
    echo "lab prefix: $P   lab dir: $LAB_DIR   VIP: $VIP:80   vlan mode: $(cat "$LAB_DIR/vlan-mode" 2>/dev/null || echo '?')"
    if [[ -s "$LAB_DIR/big.sha256" ]]; then
        echo "/big: $BIG_BYTES bytes, sha256 $(cat "$LAB_DIR/big.sha256")"
    fi
    for s in "${SHORT_NAMES[@]}"; do
        n="$(ns "$s")"
        if ! ns_exists "$n"; then
            echo "== $s ($n): absent"
            continue
        fi
        echo "== $s ($n)  ip_forward=$(nsx "$s" sysctl -n net.ipv4.ip_forward)"
        ip -n "$n" -br link show | awk '{printf "   link  %-16s %-8s %s\n", $1, $2, $3}'
        ip -n "$n" -br -4 addr show | awk 'NF >= 3 {a=$3; for (i = 4; i <= NF; i++) a = a " " $i; printf "   addr  %-16s %s\n", $1, a}'
        ip -n "$n" -4 -o route show | sed -e 's/\\\t/ /g; s/  */ /g; s/^/   route /'
        if [[ "$s" == be* && -s "$LAB_DIR/$s/nginx.pid" ]]; then
            echo "   nginx pid $(cat "$LAB_DIR/$s/nginx.pid"), conf $LAB_DIR/$s/nginx.conf"
        fi
        if [[ -s "$BIRD_DIR/$s.pid" ]]; then
            echo "   bird pid $(cat "$BIRD_DIR/$s.pid"), socket $(bird_sock "$s"), log $BIRD_DIR/$s.log"
        fi
    done
}

usage() {
    cat >&2 <<EOF
usage: lab.sh up | down | info | exec NS CMD... | kernel-forward on|off | bgp on|off | birdc NS CMD... | ns NS
  NS is one of: ${SHORT_NAMES[*]}   (namespace ${P}-NS; LAB_PREFIX=$P)
EOF
    exit 2
}

main() {
    local cmd="${1:-}" n
    if [[ $# -gt 0 ]]; then shift; fi
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        info) cmd_info ;;
        kernel-forward) cmd_kernel_forward "$@" ;;
        bgp) cmd_bgp "$@" ;;
        birdc)
            [[ $# -ge 1 ]] || usage
            [[ " ${BIRD_NS[*]} " == *" $1 "* ]] || die "no BIRD in '$1' (one of: ${BIRD_NS[*]})"
            n="$(bird_sock "$1")"
            [[ -S "$n" ]] || die "no BIRD runs in $(ns "$1") (lab.sh bgp on first)"
            shift
            exec birdc -s "$n" "$@"
            ;;
        exec)
            [[ $# -ge 2 ]] || usage
            valid_short "$1" || die "unknown namespace '$1' (one of: ${SHORT_NAMES[*]})"
            n="$(ns "$1")"
            ns_exists "$n" || die "namespace $n does not exist (run lab.sh up first)"
            shift
            exec ip netns exec "$n" "$@"
            ;;
        ns)
            if [[ $# -ne 1 ]] || ! valid_short "$1"; then usage; fi
            ns "$1"
            ;;
        *) usage ;;
    esac
}

main "$@"

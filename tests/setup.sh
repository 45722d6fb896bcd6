#!/usr/bin/env bash
# Install what the tests need on a fresh machine (Debian): the namespace lab's tools and servers,
# and the Rust components for the lint checks. Idempotent; needs root for apt-get.
set -euo pipefail
# util-linux (setpriv, findmnt) and libcap2-bin (setcap, capsh): tests/privileges.rs.
# podman, runc and debootstrap: the container image, built by docker/build-local.sh and run by
# tests/container.rs (runc, not crun: crun fails on this machine's cgroup layout).
# bird2 (bird, birdc): the lab's BGP mode (tests/lab/lab.sh bgp) and tests/bgp_e2e.rs.
# iperf3, wrk and nginx (with coreutils' timeout, util-linux's taskset, procps' kill):
# `maglevd bench live --traffic tcp|http` and tests/bench_live.rs.
pkgs=(iproute2 procps nginx-light curl wrk iperf3 tcpdump ethtool openssl coreutils iputils-ping arping util-linux libcap2-bin systemd strace python3-venv podman runc debootstrap bird2)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nginx-light and nginx both provide the nginx binary.
if command -v nginx >/dev/null 2>&1; then
    missing=("${missing[@]/nginx-light/}")
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "tests/setup.sh: missing packages ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "tests/setup.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# Lint components (present with a default rustup profile; added if not).
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
# A real Prometheus text-format parser for tests/http_endpoint.rs: the Python prometheus-client
# package (its `prometheus_client.parser`) in a venv, from PyPI.
venv="${MAGLEVD_TEST_VENV:-/tmp/maglevd-test-venv}"
if ! "$venv/bin/python3" -c 'import prometheus_client.parser' 2>/dev/null; then
    echo "tests/setup.sh: installing the Python prometheus-client parser into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'prometheus-client>=0.20,<1'
fi
# /dev/net/tun as distributions ship it: mode 0666 (Debian's udev rule 50-udev-default.rules sets
# it; the TUNSETIFF that creates a device still needs CAP_NET_ADMIN). This VM has no udev and
# leaves it 0600, which no unprivileged maglevd ([announce], as the unit, the container and
# docker/validate.sh run it) could open.
if [[ -c /dev/net/tun && "$(stat -c %a /dev/net/tun)" != 666 ]]; then
    echo "tests/setup.sh: chmod 0666 /dev/net/tun (as udev sets it on Debian)" >&2
    chmod 0666 /dev/net/tun
fi

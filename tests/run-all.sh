#!/usr/bin/env bash
# Run every test of maglevd: unit, fixture, property, integration and the network-namespace
# end-to-end tests (these need root; they fail, never skip, without it). Installs the test
# dependencies first (tests/setup.sh).
#
# Twice: in the debug profile, so that integer overflow checks (and debug assertions) are on for
# every test, the namespace tests included (the real datapath under real traffic); then in
# release, the build that ships, where the end-to-end tests push real traffic through the
# optimized forwarder. The container image test (tests/container.rs) runs in the release pass
# only (ignored in debug): the image ships the release binary. Measured on the 2-core machine:
# debug build from scratch ≈ 100 s, debug run ≈ 75 s; release build ≈ 330 s (thin LTO), release
# run ≈ 60 s, plus ≈ 20 s for the container test (≈ 35 s more the first time: debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --all-targets "$@"
cargo test --doc
cargo test --release --all-targets "$@"

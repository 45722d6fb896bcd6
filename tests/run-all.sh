#!/usr/bin/env bash
# Run every test of maglevd: unit, fixture, property, integration and the network-namespace
# end-to-end tests (these need root; they fail, never skip, without it). Installs the test
# dependencies first (tests/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
# Release mode: the end-to-end tests push real traffic through the forwarder.
cargo test --release --all-targets "$@"
cargo test --release --doc

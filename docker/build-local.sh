#!/usr/bin/env bash
# Build the maglevd image with Podman, without any image registry, from docker/Dockerfile:
#
#   1. the release binary, built by cargo on this machine (or --binary PATH);
#   2. the Dockerfile's BUILD_IMAGE (the `tools` stage that assembles the runtime root): a Debian
#      root made by `debootstrap --variant=minbase` of this machine's suite, with libcap2-bin,
#      imported into Podman. Its tarball is cached under $MAGLEVD_IMAGE_CACHE (default
#      /var/cache/maglevd-image), keyed by suite, variant and package list, and the imported image
#      is reused while it exists; --refresh-base makes a new one (e.g. for Debian's updates);
#   3. `podman build` with MAGLEVD_BINARY=context (the binary from a throwaway build context) and
#      the default RUNTIME_IMAGE, scratch: the image holds the binary, the libraries it links
#      (taken from that Debian root, whose glibc must not be older than the one cargo linked
#      against: same suite as this machine) and nothing else.
#
# Prints the image's size and the time of each step.
#
#   docker/build-local.sh [--binary PATH] [--tag NAME] [--refresh-base]
#
# Needs root, podman, runc and debootstrap (tests/setup.sh installs them). The containers of the
# build run with runc and explicit rlimits: crun fails on this machine's cgroup layout, and Podman's
# default RLIMIT_NOFILE (1048576) is above this sandbox's hard limit.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }
BINARY=""
TAG="localhost/maglevd:$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
REFRESH=""
while (($#)); do
    case "$1" in
        --binary) BINARY="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --refresh-base) REFRESH=1; shift ;;
        *) usage ;;
    esac
done

die() { echo "build-local.sh: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (podman's image store and debootstrap)"
for c in podman runc debootstrap; do
    command -v "$c" >/dev/null || die "$c is missing: apt-get install podman runc debootstrap (tests/setup.sh)"
done
PODMAN=(podman --cgroup-manager=cgroupfs)
RUNTIME_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
t_all=$SECONDS
step() { echo "== $*"; t_step=$SECONDS; }
took() { echo "   ($((SECONDS - t_step)) s)"; }

# 1. The binary.
if [[ -z "$BINARY" ]]; then
    step "cargo build --release --locked"
    cargo build --release --locked
    BINARY="${CARGO_TARGET_DIR:-target}/release/maglevd"
    took
fi
[[ -x "$BINARY" ]] || die "no executable at $BINARY"

# 2. The Debian root for the tools stage, of this machine's suite (the binary's glibc).
# shellcheck source=/dev/null
. /etc/os-release
SUITE="${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}"
VARIANT=minbase
INCLUDE=libcap2-bin
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
key="$(printf '%s\n' "$SUITE" "$VARIANT" "$INCLUDE" "$(uname -m)" | sha256sum | cut -c1-12)"
BASE="localhost/maglevd-build-base:$SUITE-$key"
CACHE="${MAGLEVD_IMAGE_CACHE:-/var/cache/maglevd-image}"
tarball="$CACHE/build-base-$SUITE-$VARIANT-$key.tar.gz"
if [[ -n "$REFRESH" ]]; then
    rm -f "$tarball"
    "${PODMAN[@]}" rmi -f "$BASE" >/dev/null 2>&1 || true
fi
if ! "${PODMAN[@]}" image exists "$BASE"; then
    mkdir -p "$CACHE"
    if [[ ! -s "$tarball" ]]; then
        step "debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE (cached as $tarball)"
        root="$(mktemp -d /var/tmp/maglevd-base.XXXXXX)"
        trap 'rm -rf "$root"' EXIT
        debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" \
            >"$root.log" 2>&1 || { tail -20 "$root.log"; die "debootstrap failed (log: $root.log)"; }
        rm -f "$root.log"
        # Nothing the image build needs: apt's lists and caches, docs, man pages.
        rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
            "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar --numeric-owner --xattrs -C "$root" -czf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
        trap - EXIT
        took
    fi
    step "podman import $tarball as $BASE"
    "${PODMAN[@]}" import --quiet "$tarball" "$BASE" >/dev/null
    took
fi

# 3. The image, from a context with just what the Dockerfile reads.
step "podman build -f docker/Dockerfile -t $TAG (BUILD_IMAGE=$BASE, MAGLEVD_BINARY=context)"
ctx="$(mktemp -d /var/tmp/maglevd-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$BINARY" "$ctx/target/release/maglevd"
install -D -m 0644 config/maglevd.toml "$ctx/config/maglevd.toml"
install -D -m 0755 docker/rootfs.sh "$ctx/docker/rootfs.sh"
old="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
dangling() { "${PODMAN[@]}" images --all --quiet --no-trunc --filter dangling=true | sort -u; }
dangling_before="$(dangling)"
# --no-cache: Buildah's layer cache (Podman 4.3) keys a RUN by its text and parent layer, not by
# what its --mount binds, so the tools stage would keep the previous binary. The stages take seconds.
"${PODMAN[@]}" build "${RUNTIME_FLAGS[@]}" --no-cache --network none --pull=never \
    --build-arg BUILD_IMAGE="$BASE" --build-arg MAGLEVD_BINARY=context \
    -f docker/Dockerfile -t "$TAG" "$ctx" >"$ctx.log" 2>&1 || { cat "$ctx.log"; rm -f "$ctx.log"; die "podman build failed"; }
grep '^rootfs.sh:' "$ctx.log" | sed 's/^/   /'
rm -f "$ctx.log"
took
new="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG")"
# The stage images this build left (the tools and binary stages: nothing refers to them), and the
# image this tag named before, unless something else still uses it.
mapfile -t left < <(comm -13 <(echo "$dangling_before") <(dangling))
if [[ -n "$old" && "$old" != "$new" ]]; then
    left+=("$old")
fi
for id in "${left[@]}"; do
    "${PODMAN[@]}" rmi "$id" >/dev/null 2>&1 || true
done

size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")"
bin_size="$(stat -c %s "$BINARY")"
echo "image $TAG: $new"
echo "image size: $size bytes ($((size / 1000000)) MB; the binary is $bin_size bytes)"
echo "build-local.sh: done in $((SECONDS - t_all)) s"

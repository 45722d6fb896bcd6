#!/bin/sh
# The two halves of docker/Dockerfile's runtime root (see the Dockerfile's header for why):
#
#   rootfs.sh stage BINARY   in the `tools` stage (a Debian image, normal shell and tools): puts
#                            into /toolbox/rootfs what the image will hold — BINARY as
#                            /usr/local/bin/maglevd, the shared libraries it links and their
#                            loader (exactly what `ldd` resolves in this image, which is the one it
#                            was built against), /etc/passwd and /etc/group (root, nonroot 65532),
#                            /etc/os-release and the dpkg records of the packages those libraries
#                            come from (in /var/lib/dpkg/status.d/, as distroless images have them,
#                            so that image scanners know which glibc is inside) — and into
#                            /toolbox/{ld.so,lib,bin} the few programs `install` needs, with their
#                            own libraries and loader.
#   rootfs.sh install        in the runtime stage, which may have no shell and no library at all
#                            (FROM scratch): run by the toolbox's loader, with every program called
#                            through it. Copies /toolbox/rootfs into / (files the base already has
#                            are kept), gives the binary its file capabilities (in this layer, the
#                            one that holds the binary: COPY would lose them), checks them, and
#                            removes setuid/setgid bits from anything the base brought.
set -eu

TB=/toolbox
CAPS=cap_net_raw,cap_net_admin=ep
BIN=/usr/local/bin/maglevd

stage() {
    bin="$1"
    if ! command -v setcap >/dev/null 2>&1; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libcap2-bin
        rm -rf /var/lib/apt/lists/*
    fi
    root="$TB/rootfs"
    mkdir -p "$TB/bin" "$TB/lib" "$root/etc" "$root/var/lib/dpkg/status.d"
    install -D -m 0755 "$bin" "$root$BIN"
    "$root$BIN" --version
    # ldd prints "name => /path (addr)" for each library and "/path (addr)" for the loader.
    libs() { ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'; }
    # Library paths keep this image's layout: its top-level /lib* symlinks (merged /usr) and each
    # symlink on the way to a library are recreated, the files themselves copied. On a base that
    # has these paths already, `install` keeps the base's (cp -n).
    for top in /lib*; do
        if [ -L "$top" ]; then cp -P "$top" "$root$top"; fi
    done
    for lib in $(libs "$bin"); do
        p="$lib"
        while :; do
            mkdir -p "$root$(readlink -f "$(dirname "$p")")"
            if [ ! -L "$p" ]; then
                install -m 0755 "$p" "$root$p"
                break
            fi
            cp -P "$p" "$root$p"
            target="$(readlink "$p")"
            case "$target" in
                /*) p="$target" ;;
                *) p="$(dirname "$p")/$target" ;;
            esac
        done
        pkg="$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)"
        pkg="${pkg%%:*}"
        if [ -n "$pkg" ]; then
            dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$pkg"
        fi
    done
    cp -L /etc/os-release "$root/etc/os-release"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/os-release" "$root"/var/lib/dpkg/status.d/*

    # The toolbox: the programs `install` runs, their libraries, and their loader.
    for p in sh cp chmod find setcap getcap; do
        cp -L "$(command -v "$p")" "$TB/bin/$p"
        for lib in $(libs "$TB/bin/$p"); do cp -L "$lib" "$TB/lib/"; done
    done
    cp -L "$(ldd /bin/sh | awk '$1 ~ /^\// { print $1 }')" "$TB/ld.so"
    cp "$0" "$TB/rootfs.sh"
    echo "rootfs.sh: staged $(find "$root" -type f | wc -l) files, $(du -sk "$root" | cut -f1) KiB"
}

install_root() {
    t() { "$TB/ld.so" --library-path "$TB/lib" "$@"; }
    t "$TB/bin/cp" -an "$TB/rootfs/." /
    t "$TB/bin/setcap" "$CAPS" "$BIN"
    got="$(t "$TB/bin/getcap" "$BIN")"
    [ "$got" = "$BIN cap_net_admin,cap_net_raw=ep" ] || { echo "rootfs.sh: getcap says '$got'" >&2; exit 1; }
    for f in $(t "$TB/bin/find" / -xdev -path "$TB" -prune -o -type f -perm /6000 -print); do
        t "$TB/bin/chmod" ug-s "$f"
    done
    left="$(t "$TB/bin/find" / -xdev -path "$TB" -prune -o -type f -perm /6000 -print)"
    [ -z "$left" ] || { echo "rootfs.sh: setuid/setgid files left: $left" >&2; exit 1; }
    echo "rootfs.sh: $got"
}

case "${1:-}" in
    stage) stage "$2" ;;
    install) install_root ;;
    *)
        echo "usage: rootfs.sh stage BINARY | rootfs.sh install" >&2
        exit 2
        ;;
esac

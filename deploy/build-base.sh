#!/bin/sh
# Build a base image for nightcrew's Dockerfile without a container registry: debootstrap a
# Debian bookworm root filesystem with Python and git, and `docker import` it.
#
#   deploy/build-base.sh [--force] [TAG]     (root needed for debootstrap)
#
# Then: docker build --build-arg BASE=TAG -t nightcrew .
# Does nothing if TAG (default nightcrew-base:bookworm) exists, unless --force.
# NIGHTCREW_DEBIAN_MIRROR overrides the Debian mirror (default http://deb.debian.org/debian).
# The host's CA bundle is copied in: behind a TLS-inspecting proxy, the build reaches PyPI
# only if the image trusts what the host trusts.
set -eu

force=0
tag=nightcrew-base:bookworm
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "build-base.sh: unknown option $arg" >&2; exit 2 ;;
        *) tag=$arg ;;
    esac
done
mirror=${NIGHTCREW_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-base.sh: $tag exists (use --force to rebuild)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-base.sh: debootstrap needs root; run it with sudo" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "build-base.sh: debootstrap is missing: apt-get install -y debootstrap" >&2
    exit 1
}

work=$(mktemp -d /var/tmp/nightcrew-base.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
rootfs=$work/rootfs
echo "build-base.sh: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin \
    "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/log/"*.log
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

echo "build-base.sh: importing as $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --message "nightcrew base (debootstrap bookworm)" \
    - "$tag" >/dev/null
echo "build-base.sh: built $tag"

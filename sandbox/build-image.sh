#!/bin/sh
# Build the default sandbox image without a container registry: debootstrap a Debian
# bookworm root filesystem with the packages in packages.txt, add the `agent` user, and
# `docker import` it with the same config as the Dockerfile.
#
#   sandbox/build-image.sh [--force] [TAG]     (root needed for debootstrap)
#
# Does nothing if TAG (default nightcrew-sandbox:latest) exists and was built from this
# Dockerfile and packages.txt (its nightcrew.recipe label: sha256 of the two files, as
# executor/sandbox/recipe.py computes it); rebuilds it when it was built from anything else
# (an older package list, another project's image). --force rebuilds anyway.
# NIGHTCREW_DEBIAN_MIRROR overrides the Debian mirror (default http://deb.debian.org/debian).
set -eu

force=0
tag=nightcrew-sandbox:latest
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "build-image.sh: unknown option $arg" >&2; exit 2 ;;
        *) tag=$arg ;;
    esac
done
mirror=${NIGHTCREW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
recipe=$(cat "$here/Dockerfile" "$here/packages.txt" | sha256sum | cut -c1-64)

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    built_from=$(docker image inspect --format '{{index .Config.Labels "nightcrew.recipe"}}' "$tag" 2>/dev/null || true)
    if [ "$built_from" = "$recipe" ]; then
        echo "build-image.sh: $tag exists and is built from this recipe (use --force to rebuild)"
        exit 0
    fi
    echo "build-image.sh: $tag was built from another Dockerfile or package list" \
        "(${built_from:-no nightcrew.recipe label}); rebuilding"
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-image.sh: debootstrap needs root; run it with sudo" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "build-image.sh: debootstrap is missing: apt-get install -y debootstrap" >&2
    exit 1
}

work=$(mktemp -d /var/tmp/nightcrew-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
rootfs=$work/rootfs
packages=$(grep -v '^#' "$here/packages.txt" | tr '\n' ',' | sed 's/,*$//')

echo "build-image.sh: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# The user, as the Dockerfile's useradd makes it (no chroot: nothing runs inside).
echo 'agent:x:1000:1000::/home/agent:/bin/bash' >>"$rootfs/etc/passwd"
echo 'agent:x:1000:' >>"$rootfs/etc/group"
echo 'agent:*:19000:0:99999:7:::' >>"$rootfs/etc/shadow"
mkdir -p "$rootfs/home/agent" "$rootfs/workspace"
cp -a "$rootfs/etc/skel/." "$rootfs/home/agent/" 2>/dev/null || true
chown -R 1000:1000 "$rootfs/home/agent" "$rootfs/workspace"
chmod 700 "$rootfs/home/agent"

# What the engine provides at run time, and caches a container has no use for.
rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin \
    "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/log/"*.log
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

echo "build-image.sh: importing as $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV HOME=/home/agent' \
    --change 'USER agent' \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["sleep", "infinity"]' \
    --change "LABEL nightcrew.recipe=$recipe" \
    --message "nightcrew sandbox (debootstrap bookworm)" \
    - "$tag" >/dev/null
echo "build-image.sh: built $tag"

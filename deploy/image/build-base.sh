#!/usr/bin/env bash
# The images' base, made from Debian's packages alone (no registry image):
# mmdebstrap builds a bookworm root filesystem with apt, and the engine
# imports it as $BASE_IMAGE. The Dockerfile takes any Debian 12 base instead
# (--build-arg BASE=debian:bookworm-slim where a registry can be reached).
#
#   deploy/image/build-base.sh DOCKER_COMMAND...   e.g. deploy/image/build-base.sh docker
#
# Skipped when the engine already has the image made from this same recipe
# (its label oomtrace.base-recipe is this file's hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${BASE_IMAGE:-oomtrace-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
docker=("$@")
((${#docker[@]})) || docker=(docker)

recipe=$(sha256sum "$here/build-base.sh" | cut -c1-16)
have=$("${docker[@]}" image inspect -f '{{index .Config.Labels "oomtrace.base-recipe"}}' "$image" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    echo "build-base: mmdebstrap is missing (apt-get install mmdebstrap)" >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# variant apt: Essential packages and apt, nothing else; the Dockerfile adds
# what each image needs. Check-Valid-Until: a pinned snapshot mirror's Release
# files may be past their date; the signatures are still checked.
mmdebstrap --quiet --variant=apt \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$tmp/rootfs.tar" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
"${docker[@]}" import \
    --change "LABEL oomtrace.base-recipe=$recipe" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tmp/rootfs.tar" "$image" >/dev/null
echo "build-base: $image from Debian bookworm ($mirror)" >&2

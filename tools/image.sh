#!/usr/bin/env bash
# `make image`: the agent and collector images, built from Debian's packages
# and PyPI only, on the engine tools/engine.sh keeps.
#   oomtrace-agent:$VERSION, oomtrace-collector:$VERSION (VERSION from pyproject.toml)
# The base image (deploy/image/build-base.sh) is made once per recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
docker=(/usr/bin/docker -H unix:///run/docker.sock)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
base=${BASE_IMAGE:-oomtrace-base:bookworm}
# Wheels of oomtrace and its pinned dependencies, by this machine's pip (its
# index, proxy and certificates), for Debian 12's Python 3.11 in the images.
rm -rf build/wheels
/usr/bin/python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir build/wheels \
    --constraint deploy/image/requirements.txt .
tools/engine.sh start
BASE_IMAGE=$base deploy/image/build-base.sh "${docker[@]}"
for target in agent collector; do
    start=$(date +%s)
    # The classic builder, with the host's network for apt and pip: the
    # engine runs without a bridge (tools/engine.sh).
    DOCKER_BUILDKIT=0 "${docker[@]}" build --quiet --network host \
        --build-arg "BASE=$base" --target "$target" \
        --label "org.opencontainers.image.version=$version" \
        -f deploy/image/Dockerfile -t "oomtrace-$target:$version" . >/dev/null
    size=$("${docker[@]}" image inspect -f '{{.Size}}' "oomtrace-$target:$version")
    echo "image: oomtrace-$target:$version ($((size >> 20)) MiB, $(($(date +%s) - start)) s)" >&2
done

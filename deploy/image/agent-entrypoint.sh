#!/bin/sh
# Chooses the kernel headers BCC compiles against, then runs oomtrace.
# The node's own (its /lib/modules/$(uname -r)/build, mounted from the host
# with /usr/src, which that link usually points into) win; a node without
# them gets the image's Debian headers through BCC_KERNEL_SOURCE. Nothing is
# written to the node's /lib/modules.
set -eu
build="/lib/modules/$(uname -r)/build"
if [ -z "${BCC_KERNEL_SOURCE:-}" ] && [ ! -e "$build/include/generated/autoconf.h" ] \
    && [ ! -e "$build/Makefile" ]; then
    BCC_KERNEL_SOURCE=/opt/oomtrace/kernel-headers
    export BCC_KERNEL_SOURCE
    echo "oomtrace: the node has no kernel headers at $build; using the image's" \
        "($(cat /opt/oomtrace/kernel-headers/.debian-package))" >&2
fi
exec oomtrace "$@"

#!/bin/sh
# BCC looks for headers at /lib/modules/$(uname -r)/build. The node's own
# (mounted from the host) win; otherwise link the image's Debian headers.
set -e
build="/lib/modules/$(uname -r)/build"
if [ ! -e "$build/Makefile" ]; then
    headers=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$headers" ]; then
        mkdir -p "/lib/modules/$(uname -r)"
        ln -sfn "$headers" "$build"
        ln -sfn "${headers%-amd64}-common" "/lib/modules/$(uname -r)/source"
    fi
fi
exec oomtrace "$@"

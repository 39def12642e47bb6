#!/bin/sh
# Installs the Debian dependencies (if missing) and builds blip2d in place.
# Extra arguments go to ./configure.
set -eu
cd "$(dirname "$0")/.."
missing=0
for m in libuv vips jansson libpcre2-8 openblas libedit; do
  pkg-config --exists "$m" 2>/dev/null || missing=1
done
command -v autoreconf >/dev/null 2>&1 || missing=1
[ -f /usr/include/oneapi/dnnl/dnnl.h ] || missing=1
pkg-config --exists msgpack-c 2>/dev/null || pkg-config --exists msgpack 2>/dev/null || missing=1
[ "$missing" -eq 0 ] || sh scripts/install-deps.sh
[ -x configure ] || sh ./autogen.sh
[ -f Makefile ] || ./configure "$@"
make -j"$(nproc)"

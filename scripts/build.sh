#!/bin/sh
# Installs the Debian dependencies (if missing) and builds blip2d in place.
# Extra arguments go to ./configure.
set -eu
cd "$(dirname "$0")/.."
missing=0
for m in libuv vips jansson libpcre2-8 openblas libedit hiredis libmicrohttpd libtiff-4; do
  pkg-config --exists "$m" 2>/dev/null || missing=1
done
for c in autoreconf redis-server chromium node curl; do
  command -v "$c" >/dev/null 2>&1 || missing=1
done
[ -d tests/http/node_modules ] || missing=1  # npm ci, from install-deps.sh
[ -f /usr/include/oneapi/dnnl/dnnl.h ] || missing=1
pkg-config --exists msgpack-c 2>/dev/null || pkg-config --exists msgpack 2>/dev/null || missing=1
[ "$missing" -eq 0 ] || sh scripts/install-deps.sh
[ -x configure ] || sh ./autogen.sh
[ -f Makefile ] || ./configure "$@"
make -j"$(nproc)"

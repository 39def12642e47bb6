#!/bin/sh
# Installs the Debian 12 packages blip2d needs to build and to run its tests
# (clang and libclang-rt-14-dev: the libFuzzer targets in tests/fuzz/;
# libsimde-dev: tests/test_wkernels_avx512emu runs the AVX-512 kernels with
# their intrinsics emulated, on CPUs without AVX-512; libhiredis-dev: the
# Redis Streams job queue; redis-server: its tests start their own server;
# libedit-dev: line editing and history in blip2ctl chat; python3-numpy,
# -venv, -pip, -setuptools, -wheel: the Python package python/ and its
# offline installation test; libmicrohttpd-dev: blip2d --http; curl,
# python3-prometheus-client, nodejs, npm, chromium: the --http tests;
# libdnnl-dev: oneDNN, the many-row matrix products).
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Node.js and npm: Debian's, unless the machine already has both (a
# nodejs package that bundles npm conflicts with Debian's npm package)
NODE_PKGS=
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || NODE_PKGS="nodejs npm"
$SUDO apt-get install -y -q --no-install-recommends \
  build-essential autoconf automake libtool pkg-config \
  libuv1-dev libmsgpack-dev libopenblas-dev libvips-dev libtiff-dev libjpeg-dev libjansson-dev \
  libpcre2-dev libsentencepiece-dev libsystemd-dev libhiredis-dev libedit-dev \
  libmicrohttpd-dev libdnnl-dev \
  python3 python3-msgpack valgrind redis-server \
  python3-numpy python3-venv python3-pip python3-setuptools python3-wheel \
  curl python3-prometheus-client chromium $NODE_PKGS \
  clang libclang-rt-14-dev libsimde-dev
# the real HTTP clients of tests/test_http_node.py (the openai package,
# playwright-core), pinned by tests/http/package-lock.json
(cd "$(dirname "$0")/../tests/http" && npm ci --no-audit --no-fund)

#!/bin/sh
# Installs the Debian 12 packages blip2d needs to build and to run its tests
# (clang and libclang-rt-14-dev: the libFuzzer targets in tests/fuzz/;
# libsimde-dev: tests/test_wkernels_avx512emu runs the AVX-512 kernels with
# their intrinsics emulated, on CPUs without AVX-512; libhiredis-dev: the
# Redis Streams job queue; redis-server: its tests start their own server;
# libedit-dev: line editing and history in blip2ctl chat; libdnnl-dev: oneDNN,
# the many-row matrix products).
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  build-essential autoconf automake libtool pkg-config \
  libuv1-dev libmsgpack-dev libopenblas-dev libvips-dev libjansson-dev \
  libpcre2-dev libsentencepiece-dev libsystemd-dev libhiredis-dev libedit-dev libdnnl-dev \
  python3 python3-msgpack valgrind redis-server \
  clang libclang-rt-14-dev libsimde-dev

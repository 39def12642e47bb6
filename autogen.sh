#!/bin/sh
# autogen.sh - makes ./configure in a git checkout (release tarballs made
# with `make dist` already contain it).  Needs autoconf, automake, libtool
# and pkg-config (scripts/install-deps.sh installs them).  Then:
#     ./configure && make
set -e
cd "$(dirname "$0")"
autoreconf -fi
echo "autogen.sh: done; now run ./configure (./configure --help lists the options)"

#!/bin/sh
# test_python_install.sh - the Python package installs offline, as
# docs/python.md says: into a virtual environment that sees Debian's
# packages (python3 -m venv --system-site-packages), with
# `pip install --no-build-isolation --no-index` (no download: setuptools and
# msgpack are the system's), then `import blip2` from elsewhere finds the
# installed copy with its version, and pip uninstalls it.  The source folder
# is copied first (setuptools writes build files next to the sources; the
# source tree may be read-only under make distcheck).  TAP output.
set -u
SRC=${PYTHON_SRCDIR:-python}
. "$(dirname "$0")/lib.sh"

if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "1..0 # SKIP python3-venv is not installed"; exit 0
fi
if ! "$PY" -m pip --version >/dev/null 2>&1 || ! "$PY" -c 'import setuptools, wheel' 2>/dev/null; then
  echo "1..0 # SKIP python3-pip, python3-setuptools or python3-wheel is not installed"; exit 0
fi
tmpdir b2pyinst
status() { # status EXIT NAME DETAIL: a check that passes when EXIT is 0
  _rc=$1; shift
  if [ "$_rc" -eq 0 ]; then report 1 "$@"; else report 0 "$@"; fi
}
cp -R "$SRC" "$T/src" && chmod -R u+w "$T/src"
rm -rf "$T/src/build" "$T/src"/*.egg-info

"$PY" -m venv --system-site-packages "$T/venv" >"$T/log" 2>&1
status $? "python3 -m venv --system-site-packages" "$(cat "$T/log")"
VPY=$T/venv/bin/python

PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip install --no-build-isolation --no-index \
  "$T/src" >"$T/log" 2>&1
status $? "pip install --no-build-isolation --no-index ./python (offline)" "$(tail -20 "$T/log")"

out=$(cd "$T" && "$VPY" -c 'import blip2, sys; print(blip2.__version__, blip2.__file__); print(blip2.Client.__name__, blip2.AsyncClient.__name__, blip2.BusyError.code)' 2>&1)
case $out in
  "0.1.0 $T/venv/"*"/site-packages/blip2/__init__.py"*"Client AsyncClient busy") r=1 ;;
  *) r=0 ;;
esac
report $r "import blip2 finds the installed package (0.1.0, in the venv)" "$out"

out=$("$VPY" -m pip show blip2 2>&1)
case $out in *"Version: 0.1.0"*"Requires: msgpack"*) r=1 ;; *) r=0 ;; esac
report $r "pip show blip2: version 0.1.0, requires msgpack" "$out"

"$VPY" -m pip uninstall -y blip2 >"$T/log" 2>&1
r=$?
[ $r -eq 0 ] && [ ! -e "$(ls -d "$T"/venv/lib/python3*/site-packages)/blip2" ]
status $? "pip uninstall -y blip2 removes it" "$(cat "$T/log")"

echo "1..$n"
[ $failed -eq 0 ]

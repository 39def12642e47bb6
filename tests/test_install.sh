#!/bin/sh
# test_install.sh - `make install DESTDIR=...` puts every file in its place,
# and `make uninstall` takes them all away again.
# Runs make in the build tree (BLIP2_TOP_BUILDDIR) into a scratch DESTDIR;
# the directories are the configured ones (B2I_*, set by Makefile.am), so
# it holds for any --prefix and --with-*dir.  TAP output.
set -u
BLD=${BLIP2_TOP_BUILDDIR:-.}
MAKE_CMD=${BLIP2_MAKE:-make}
if [ -z "${B2I_bindir:-}" ]; then
  echo "1..0 # SKIP run it through make check (the installation directories come from there)"
  exit 0
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/b2inst.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
D=$T/dest

n=0; failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; failed=$((failed + 1)); }

# A make of its own: the calling make's jobserver descriptors are not ours.
unset MAKEFLAGS MFLAGS MAKELEVEL
if $MAKE_CMD -C "$BLD" install DESTDIR="$D" >"$T/log" 2>&1; then
  ok "make install DESTDIR=..."
else
  not_ok "make install DESTDIR=..." "$(tail -c 3000 "$T/log")"
  echo "1..$n"
  exit 1
fi

# want KIND PATH WHAT: PATH (below DESTDIR) is an executable (x), a
# non-empty file (f) or a symbolic link (l)
want() {
  p=$D$2
  case $1 in
    x) [ -f "$p" ] && [ -x "$p" ] ;;
    f) [ -f "$p" ] && [ -s "$p" ] ;;
    l) [ -L "$p" ] ;;
  esac
  if [ $? -eq 0 ]; then ok "$3: $2"
  else not_ok "$3: $2 missing" "installed: $(cd "$D" && find . ! -type d | sort | tr '\n' ' ')"; fi
}
want x "$B2I_sbindir/blip2d" "daemon in sbindir"
want x "$B2I_bindir/blip2ctl" "client in bindir"
want x "$B2I_bindir/blip2-infer" "offline tool in bindir"
want x "$B2I_bindir/blip2-convert" "converter in bindir, beside blip2ctl"
want x "$B2I_bindir/blip2-queue" "queue tool in bindir, beside blip2ctl"
want x "$B2I_libdir/libblip2client.so.0.0.0" "shared library"
want l "$B2I_libdir/libblip2client.so.0" "library, soname link"
want l "$B2I_libdir/libblip2client.so" "library, development link"
want f "$B2I_includedir/blip2client.h" "header"
want f "$B2I_pkgconfigdir/blip2client.pc" "pkg-config file"
want f "$B2I_mandir/man8/blip2d.8" "man page"
want f "$B2I_mandir/man1/blip2ctl.1" "man page"
want f "$B2I_mandir/man1/blip2-infer.1" "man page"
want f "$B2I_mandir/man3/libblip2client.3" "man page of the library"
want f "$B2I_mandir/man3/blip2c_connect.3" "man blip2c_connect finds the library's page"
want f "$B2I_mandir/man1/blip2-convert.1" "man page"
want f "$B2I_docdir/blip2d.env.example" "example environment file"
for d in systemdsystemunitdir systemduserunitdir sysusersdir tmpfilesdir bashcompletiondir; do
  eval "v=\$B2I_$d"
  if [ "$v" = no ]; then
    n=$((n + 1)); echo "ok $n - # SKIP $d: configured not to install"; continue
  fi
  case $d in
    systemdsystemunitdir) want f "$v/blip2d.service" "system unit"; want f "$v/blip2d.socket" "system unit"
      want f "$v/blip2d-worker.service" "system unit" ;;
    systemduserunitdir) want f "$v/blip2d.service" "user unit"; want f "$v/blip2d.socket" "user unit" ;;
    sysusersdir) want f "$v/blip2.conf" "sysusers.d snippet" ;;
    tmpfilesdir) want f "$v/blip2.conf" "tmpfiles.d snippet" ;;
    bashcompletiondir) want f "$v/blip2ctl" "bash completion"; want f "$v/blip2d" "bash completion"; want f "$v/blip2-infer" "bash completion" ;;
  esac
done

# the installed files are the finished ones
if [ "$B2I_systemdsystemunitdir" != no ]; then
  u=$D$B2I_systemdsystemunitdir/blip2d.service
  if grep -q "^ExecStart=$B2I_sbindir/blip2d " "$u" && ! grep -q '@[a-zA-Z_]*@' "$u"; then
    ok "installed blip2d.service runs $B2I_sbindir/blip2d"
  else
    not_ok "installed blip2d.service runs $B2I_sbindir/blip2d" "$(grep -n 'ExecStart\|@' "$u")"
  fi
fi
if ! grep -q '@[a-zA-Z_]*@' "$D$B2I_mandir/man8/blip2d.8" "$D$B2I_mandir/man1/blip2ctl.1" \
     "$D$B2I_mandir/man1/blip2-infer.1" "$D$B2I_mandir/man1/blip2-convert.1"; then
  ok "man pages: every @VARIABLE@ substituted"
else
  not_ok "man pages: every @VARIABLE@ substituted" "$(grep -n '@[a-zA-Z_]*@' "$D$B2I_mandir"/man*/blip2*)"
fi
# blip2ctl is a thin client: it links libblip2client, never the model
# library's dependencies (convert runs blip2-convert, which does)
if command -v objdump >/dev/null 2>&1; then
  need=$(objdump -p "$D$B2I_bindir/blip2ctl" | awk '$1 == "NEEDED" {print $2}' | tr '\n' ' ')
  case $need in
    *vips*|*openblas*|*blas*|*pcre2*|*sentencepiece*|*stdc++*) not_ok "blip2ctl links only the client library" "NEEDED: $need" ;;
    *blip2client*) ok "blip2ctl links only the client library (NEEDED: $need)" ;;
    *) not_ok "blip2ctl links only the client library" "NEEDED: $need" ;;
  esac
  need=$(objdump -p "$D$B2I_bindir/blip2-convert" | awk '$1 == "NEEDED" {print $2}' | tr '\n' ' ')
  case $need in
    *vips*) ok "blip2-convert links the model library's dependencies" ;;
    *) not_ok "blip2-convert links the model library's dependencies" "NEEDED: $need" ;;
  esac
fi
# the installed blip2ctl finds blip2-convert beside itself
msg=$(env -u BLIP2_CONVERT LD_LIBRARY_PATH="$D$B2I_libdir" "$D$B2I_bindir/blip2ctl" convert \
      "$D/no-such-folder" "$D/x.gguf" 2>&1)
st=$?
case "$st:$msg" in
  "2:blip2ctl convert: $D/no-such-folder: not a Hugging Face model folder"*) ok "installed blip2ctl convert runs the installed blip2-convert" ;;
  *) not_ok "installed blip2ctl convert runs the installed blip2-convert" "exit $st: $msg" ;;
esac
# and blip2-queue for the queue commands
msg=$(env -u BLIP2_QUEUE_TOOL LD_LIBRARY_PATH="$D$B2I_libdir" "$D$B2I_bindir/blip2ctl" queue-status \
      --queue "unix:$D/no-such-redis.sock" 2>&1)
st=$?
case "$st:$msg" in
  "3:blip2ctl queue-status: cannot connect to unix:$D/no-such-redis.sock"*) ok "installed blip2ctl queue-status runs the installed blip2-queue" ;;
  *) not_ok "installed blip2ctl queue-status runs the installed blip2-queue" "exit $st: $msg" ;;
esac
# only the public header and the shared library: no internal headers, no
# static archive
extra=$(cd "$D" && find . \( -name '*.h' ! -name blip2client.h \) -o -name '*.a' | head -5)
if [ -z "$extra" ]; then ok "no internal headers or static libraries installed"
else not_ok "no internal headers or static libraries installed" "$extra"; fi
if command -v pkg-config >/dev/null 2>&1; then
  v=$(PKG_CONFIG_PATH=$D$B2I_pkgconfigdir pkg-config --modversion blip2client 2>&1)
  case $v in
    [0-9]*) ok "pkg-config reads the installed blip2client.pc ($v)" ;;
    *) not_ok "pkg-config reads the installed blip2client.pc" "$v" ;;
  esac
fi

# and `make uninstall` leaves no file behind
if $MAKE_CMD -C "$BLD" uninstall DESTDIR="$D" >"$T/log" 2>&1; then
  left=$(cd "$D" && find . ! -type d | head -20)
  if [ -z "$left" ]; then ok "make uninstall removes every file"
  else not_ok "make uninstall removes every file" "left: $left"; fi
else
  not_ok "make uninstall" "$(tail -c 2000 "$T/log")"
fi

echo "1..$n"
[ $failed -eq 0 ]

#!/bin/sh
# test_units.sh - the systemd units, sysusers.d and tmpfiles.d snippets:
#   systemd-analyze verify (system and user units) says nothing;
#   systemd-analyze security --offline rates blip2d.service 0.5 or lower;
#   the system unit bounds memory and tasks (MemoryHigh= below MemoryMax=,
#   TasksMax=);
#   every system call blip2d makes while serving a caption (strace) is
#   allowed by the unit's SystemCallFilter=, except the few whose failure
#   is known to be harmless;
#   systemd-sysusers and systemd-tmpfiles accept the snippets (root only:
#   they are applied to a scratch root directory).
# The units are the generated ones of the build tree, with ExecStart=
# pointed at the freshly built daemon (verify wants an existing binary).
# Skips, with the reason, where systemd-analyze is absent.  TAP output.
set -u
SRC=${BLIP2_TOP_SRCDIR:-.}
BLD=${BLIP2_TOP_BUILDDIR:-.}
SBINDIR=${B2I_sbindir:-/usr/local/sbin}
DAEMON=${BLIP2D:-$BLD/daemon/blip2d}
CTL=${BLIP2CTL:-$BLD/ctl/blip2ctl}
GOLDEN=${GOLDEN_DIR:-$SRC/tests/golden}

n=0; failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; failed=$((failed + 1)); }
skip() { n=$((n + 1)); echo "ok $n - # SKIP $1"; }
check() { # check NAME COMMAND...: ok when the command succeeds
  name=$1; shift
  if "$@" >"$T/out" 2>&1; then ok "$name"; else not_ok "$name" "$(head -c 2000 "$T/out")"; fi
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "1..0 # SKIP systemd-analyze not found (Debian: apt-get install systemd)"
  exit 0
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/b2units.XXXXXX") || exit 1
DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

mkdir -p "$T/system" "$T/user" "$T/xdg"
chmod 700 "$T/xdg"
for f in "$BLD/systemd/blip2d.service" "$BLD/systemd/user/blip2d.service"; do
  [ -f "$f" ] || { echo "1..0 # SKIP $f not built (make check builds it)"; exit 0; }
done
# ExecStart= names the installed daemon; point it at the built one
point() { sed -e "s|^ExecStart=$SBINDIR/blip2d |ExecStart=$DAEMON |" "$1" >"$2"; }
point "$BLD/systemd/blip2d.service" "$T/system/blip2d.service"
point "$BLD/systemd/user/blip2d.service" "$T/user/blip2d.service"
[ -f "$BLD/systemd/blip2d-worker.service" ] && point "$BLD/systemd/blip2d-worker.service" "$T/system/blip2d-worker.service"
cp "$SRC/systemd/blip2d.socket" "$T/system/blip2d.socket"
cp "$SRC/systemd/user/blip2d.socket" "$T/user/blip2d.socket"

# ---- the generated units carry the configured path, nothing unsubstituted
if grep -q "^ExecStart=$SBINDIR/blip2d --model \${BLIP2_MODEL} \$BLIP2_OPTS\$" "$BLD/systemd/blip2d.service" &&
   grep -q "^ExecStart=$SBINDIR/blip2d " "$BLD/systemd/user/blip2d.service" &&
   ! grep -q '@[a-zA-Z_]*@' "$BLD/systemd/blip2d.service" "$BLD/systemd/user/blip2d.service"; then
  ok "generated units: ExecStart=$SBINDIR/blip2d, no @VARIABLE@ left"
else
  not_ok "generated units: ExecStart=$SBINDIR/blip2d, no @VARIABLE@ left" "$(grep -n 'ExecStart\|@' "$BLD/systemd/blip2d.service")"
fi

# ---- systemd-analyze verify: exit 0 and not a word
verify() { # verify NAME [--user] DIR: units in DIR
  name=$1; shift
  if [ "$1" = --user ]; then mode=--user; shift; else mode=--system; fi
  units="./blip2d.socket ./blip2d.service"
  [ -f "$1/blip2d-worker.service" ] && units="$units ./blip2d-worker.service"
  (cd "$1" && XDG_RUNTIME_DIR=$T/xdg systemd-analyze $mode verify --man=no $units) >"$T/out" 2>&1
  st=$?
  if [ $st -eq 0 ] && [ ! -s "$T/out" ]; then ok "$name"
  else not_ok "$name" "exit status $st" "$(head -c 2000 "$T/out")"; fi
}
verify "systemd-analyze verify: system units clean" "$T/system"
verify "systemd-analyze verify: user units clean" --user "$T/user"

# ---- systemd-analyze security: exposure <= 0.5 (what it was when the
# sandbox was reviewed: docs/security.md)
systemd-analyze security --offline=true "$T/system/blip2d.service" >"$T/sec" 2>&1
level=$(sed -n 's/.*Overall exposure level for blip2d.service: \([0-9][0-9.]*\).*/\1/p' "$T/sec")
if [ -z "$level" ]; then
  not_ok "systemd-analyze security: an exposure level" "$(tail -c 1500 "$T/sec")"
elif awk -v l="$level" 'BEGIN { exit !(l <= 0.5) }'; then
  ok "systemd-analyze security --offline: exposure $level <= 0.5 ($(grep -o 'Overall.*' "$T/sec" | sed 's/.*: //'))"
else
  not_ok "systemd-analyze security --offline: exposure $level <= 0.5" "$(grep '✗' "$T/sec")"
fi

# ---- memory and tasks are bounded: MemoryHigh= < MemoryMax= (percentages
# of RAM), TasksMax= a number
U=$T/system/blip2d.service
high=$(sed -n 's/^MemoryHigh=\([0-9][0-9]*\)%$/\1/p' "$U")
max=$(sed -n 's/^MemoryMax=\([0-9][0-9]*\)%$/\1/p' "$U")
tasks=$(sed -n 's/^TasksMax=\([0-9][0-9]*\)$/\1/p' "$U")
if [ -n "$high" ] && [ -n "$max" ] && [ -n "$tasks" ] && [ "$high" -lt "$max" ] && [ "$max" -le 90 ] && [ "$tasks" -ge 64 ]; then
  ok "system unit: MemoryHigh=$high% < MemoryMax=$max% <= 90%, TasksMax=$tasks"
else
  not_ok "system unit: MemoryHigh= < MemoryMax= <= 90%, TasksMax= set" "$(grep -n 'Memory\|Tasks' "$U")"
fi

# ---- the system call filter lets through what the daemon does -------------
# Allowed set: the unit's SystemCallFilter= lines applied in order (the
# first is an allow list; "~" removes, later plain lines add back), groups
# expanded with `systemd-analyze syscall-filter`.
# mbind (OpenBLAS's buffers) and set_mempolicy (libnuma's probe, loaded with
# libvips' HEIF module) get EPERM (SystemCallErrorNumber=) and are ignored
# by their callers.
harmless="mbind set_mempolicy"
img=$GOLDEN/images/camera.png
if ! command -v strace >/dev/null 2>&1; then
  skip "system call filter: strace not found (Debian: apt-get install strace)"
elif ! command -v python3 >/dev/null 2>&1; then
  skip "system call filter: python3 not found"
elif [ ! -x "$DAEMON" ] || [ ! -x "$CTL" ] || [ ! -f "$img" ]; then
  skip "system call filter: daemon, blip2ctl or $img missing"
elif ! strace -f -qq -o /dev/null true 2>/dev/null; then
  skip "system call filter: strace cannot trace here (ptrace not permitted)"
else
  S=$T/blip2.sock
  strace -f -qq -o "$T/trace" "$DAEMON" --model "$GOLDEN/opt-tiny" --socket "$S" -t 2 -q 2>"$T/daemon.err" &
  SPID=$!
  i=0
  while [ ! -S "$S" ] && [ $i -lt 600 ] && kill -0 "$SPID" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  # signals go to the daemon itself (strace's first line is its execve)
  DPID=$(sed -n '1s/^\([0-9][0-9]*\) .*/\1/p' "$T/trace")
  "$CTL" --socket "$S" caption "$img" >"$T/cap1" 2>&1 &&
    "$CTL" --socket "$S" --num-beams 2 ask "$img" what is it >>"$T/cap1" 2>&1 &&
    "$CTL" --socket "$S" status >>"$T/cap1" 2>&1 &&
    "$CTL" --socket "$S" --do-sample --seed 1 caption - <"$img" >>"$T/cap1" 2>&1
  st=$?
  kill -HUP "$DPID" 2>/dev/null # a reload too: wait until the weights are mapped again
  i=0
  while [ "$(grep -c 'opt-tiny/model.safetensors' "$T/trace")" -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  sleep 0.5
  "$CTL" --socket "$S" caption "$img" >>"$T/cap1" 2>&1 || st=1
  kill "$DPID" 2>/dev/null
  wait "$SPID"
  DPID=
  if [ $st -ne 0 ]; then
    not_ok "system call filter: the traced daemon served the requests" "$(head -c 1500 "$T/cap1")" "$(head -c 1500 "$T/daemon.err")"
  else
    sed -n 's/^[0-9]* \([a-z_0-9]*\)(.*/\1/p; s/^[0-9]* <\.\.\. \([a-z_0-9]*\) resumed>.*/\1/p' "$T/trace" | sort -u >"$T/used"
    grep '^SystemCallFilter=' "$T/system/blip2d.service" | sed 's/^SystemCallFilter=//' >"$T/filters"
    systemd-analyze syscall-filter >"$T/groups" 2>&1
    python3 - "$T/used" "$T/filters" "$T/groups" "$harmless" >"$T/out" 2>&1 <<'EOF'
import sys
used = set(open(sys.argv[1]).read().split())
groups, cur = {}, None
for line in open(sys.argv[3]):
    s = line.strip()
    if not s or s.startswith("#"):
        continue
    if not line[0].isspace() and s.startswith("@"):
        cur = groups.setdefault(s, [])
    elif cur is not None:
        cur.append(s)
def expand(name, seen=()):
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        sys.exit("unknown group " + name)
    out = set()
    for m in groups[name]:
        if m not in seen:
            out |= expand(m, seen + (name,))
    return out
allowed = set()
for spec in open(sys.argv[2]).read().splitlines():
    deny = spec.startswith("~")
    names = set()
    for w in spec.lstrip("~").split():
        names |= expand(w)
    allowed = allowed - names if deny else allowed | names
missing = sorted(used - allowed - set(sys.argv[4].split()))
print("%d distinct system calls; outside the filter and not known harmless: %s"
      % (len(used), " ".join(missing) or "none"))
sys.exit(1 if missing else 0)
EOF
    if [ $? -eq 0 ]; then ok "system call filter: $(cat "$T/out")"
    else not_ok "system call filter lets through every system call blip2d makes" "$(cat "$T/out")"; fi
    # MemoryDenyWriteExecute=: the only writable+executable memory comes
    # from the two JITs blip2d can do without: PCRE2's (the tokenizer
    # falls back to the interpreter) and oneDNN's (a refused primitive
    # leaves the product to OpenBLAS and our kernels).  Checked below by
    # running with W+X denied.
    wx=$(grep -c 'mmap(.*PROT_WRITE|PROT_EXEC.*MAP_ANONYMOUS' "$T/trace")
    mp=$(grep -c 'mprotect(.*PROT_EXEC' "$T/trace")
    echo "# W+X seen without the unit: $wx mmap(RWX) (PCRE2, oneDNN), $mp mprotect(+X) (oneDNN)"
  fi
fi

# ---- MemoryDenyWriteExecute=, enforced: the JITs are refused, nothing else
# changes (prctl PR_SET_MDWE, Linux 6.3+, denies what the unit's filter does)
INFER=${BLIP2_INFER:-$BLD/model/blip2-infer}
mdwe_run() {
  python3 -c 'import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])' "$@"
}
if ! command -v python3 >/dev/null 2>&1 || [ ! -x "$INFER" ]; then
  skip "MemoryDenyWriteExecute= enforced: no python3 or blip2-infer"
else
  want=$(BLIP2_MATMUL=own "$INFER" --model "$GOLDEN/opt-tiny" --image "$GOLDEN/images/chelsea.png" 2>&1)
  # (an ASan build: libdnnl leaks what it allocated for a kernel it then
  # could not map executable; that is oneDNN's, so leaks are not reported here)
  got=$(ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" BLIP2_MATMUL=onednn mdwe_run "$INFER" --model "$GOLDEN/opt-tiny" --image "$GOLDEN/images/chelsea.png" -v 2>"$T/mdwe.err")
  st=$?
  if [ $st -eq 77 ]; then
    skip "MemoryDenyWriteExecute= enforced: this kernel has no PR_SET_MDWE"
  elif [ $st -eq 0 ] && [ "$got" = "$want" ] && grep -q 'refused' "$T/mdwe.err"; then
    ok "MemoryDenyWriteExecute= enforced: oneDNN's primitives refused, the same caption ($got)"
  else
    not_ok "MemoryDenyWriteExecute= enforced: blip2-infer still works" "exit $st, got '$got', want '$want'; $(tail -3 "$T/mdwe.err")"
  fi
fi

# ---- sysusers.d and tmpfiles.d, applied to a scratch root ------------------
if [ "$(id -u)" -ne 0 ]; then
  skip "sysusers.d/tmpfiles.d: not root (they chown in a scratch root)"
elif ! command -v systemd-sysusers >/dev/null 2>&1 || ! command -v systemd-tmpfiles >/dev/null 2>&1; then
  skip "sysusers.d/tmpfiles.d: systemd-sysusers or systemd-tmpfiles not found"
else
  R=$T/root
  mkdir -p "$R/etc" "$R/usr/lib/sysusers.d" "$R/usr/lib/tmpfiles.d"
  cp "$SRC/systemd/sysusers.d/blip2.conf" "$R/usr/lib/sysusers.d/"
  cp "$SRC/systemd/tmpfiles.d/blip2.conf" "$R/usr/lib/tmpfiles.d/"
  if systemd-sysusers --root="$R" >"$T/out" 2>&1 && grep -q '^blip2:x:[0-9]*:[0-9]*:' "$R/etc/passwd" &&
     grep -q '^blip2:x:' "$R/etc/group" && ! grep -q 'ignoring\|Failed' "$T/out"; then
    ok "sysusers.d/blip2.conf creates the user and group blip2"
  else
    not_ok "sysusers.d/blip2.conf creates the user and group blip2" "$(cat "$T/out")"
  fi
  gid=$(sed -n 's/^blip2:x:\([0-9]*\):.*/\1/p' "$R/etc/group")
  if systemd-tmpfiles --root="$R" --create >"$T/out" 2>&1 &&
     [ "$(stat -c '%a %u %g' "$R/run/blip2" 2>/dev/null)" = "750 0 $gid" ] && [ -d "$R/var/lib/blip2" ]; then
    ok "tmpfiles.d/blip2.conf: /run/blip2 0750 root:blip2, /var/lib/blip2"
  else
    not_ok "tmpfiles.d/blip2.conf: /run/blip2 0750 root:blip2, /var/lib/blip2" "$(cat "$T/out")" \
      "$(stat -c '%a %u %g %n' "$R/run/blip2" "$R/var/lib/blip2" 2>&1)"
  fi
fi

echo "1..$n"
[ $failed -eq 0 ]

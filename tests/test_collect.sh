#!/bin/sh
# test_collect.sh - `blip2ctl caption` over a photo collection (ctl_batch.c)
# against a real blip2d on the tiny model: --recursive over nested folders
# with a non-image, unreadable files, a hidden folder and a symlink loop;
# every image captioned once with the same text and ids as single-file
# captioning and the golden greedy ids; error lines and exit status 1;
# --files-from (stdin, newline and NUL); -j 1 = -j 8; --resume after a
# partial output with a cut last line; SIGINT mid-run leaves only whole
# lines and --resume completes the run; a daemon that dies gives exit 4.
# TAP output.
set -u
. "$(dirname "$0")/lib.sh"
case $CTL in /*) ;; *) CTL=$(pwd)/$CTL ;; esac
tmpdir b2collect
start() { # start SOCKET: a daemon on SOCKET; its pid in $DPID
  "$DAEMON" --model "$GOLDEN/opt-tiny" --socket "$1" -t 1 -q 2>>"$T/daemon.err" &
  DPID=$!
  PIDS="$PIDS $DPID"
  wait_socket "$1" 600
}
# wait_lines FILE N: until FILE has N lines (at most 120 s)
wait_lines() {
  i=0
  while [ "$(cat "$1" 2>/dev/null | wc -l)" -lt "$2" ] && [ $i -lt 2400 ]; do
    sleep 0.05; i=$((i + 1))
  done
}
S=$T/blip2.sock
start "$S"
C="$CTL --socket $S"

# the collection: nested folders, a non-image, an unreadable file (a dangling
# symlink, and a mode-000 file when not root), a hidden folder, a loop
P=$T/photos
mkdir -p "$P/sub/deeper" "$P/.thumbs" "$P/other"
cp "$GOLDEN/images/astronaut.png" "$GOLDEN/images/rocket.jpg" "$P/"
cp "$GOLDEN/images/camera.png" "$P/sub/"
cp "$GOLDEN/images/chelsea.png" "$GOLDEN/images/coffee.png" "$P/sub/deeper/"
cp "$GOLDEN/images/chelsea.png" "$P/.thumbs/"
cp "$GOLDEN/images/coffee_rgba.png" "$P/other/"
# what else lies in a photo folder: no images by their first bytes, skipped
echo "not a picture" >"$P/notes.txt"
printf '<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>\n' >"$P/sub/IMG_0001.xmp"
printf '\0\0\0\024ftypqt  \0\0\0\0qt  ' >"$P/sub/IMG_0002.MOV"
printf '<?xml version="1.0"?><plist/>\n' >"$P/sub/IMG_0003.AAE"
NSKIP=4
ln -s "$T/gone.png" "$P/sub/dangling.png"
ln -s .. "$P/sub/loop"
NIMG=6; NERR=1
cp "$GOLDEN/images/camera.png" "$P/other/secret.png"
chmod 000 "$P/other/secret.png"
if [ -r "$P/other/secret.png" ]; then rm -f "$P/other/secret.png"; else NERR=2; fi

# single-file captions, one by one, as the reference
: >"$T/single.jsonl"
for f in astronaut.png rocket.jpg sub/camera.png sub/deeper/chelsea.png sub/deeper/coffee.png \
         other/coffee_rgba.png; do
  $C --json caption "$P/$f" >>"$T/single.jsonl" 2>>"$T/single.err"
done
$C caption "$P/sub/camera.png" >"$T/one.txt" 2>&1; st=$?
$PY - "$T/single.jsonl" "$T/one.txt" "$GOLDEN/manifest.json" <<'EOF'
import json, os, sys
single = [json.loads(l) for l in open(sys.argv[1])]
assert len(single) == 6, single
one = open(sys.argv[2]).read()
cam = [o for o in single if o["image"].endswith("camera.png")][0]
assert one == cam["text"] + "\n", (one, cam["text"])
m = json.load(open(sys.argv[3]))
golden = {os.path.basename(c["file"]): c["generate"]["greedy"]["ids"] for c in m["cases"]}
for o in single:
    name = os.path.basename(o["image"]).replace(".", "_")
    want = golden["opt-tiny__%s__caption.safetensors" % name]
    assert o["ids"][0] == want, (o["image"], o["ids"][0], want)
EOF
report $(($? == 0 && st == 0)) "single-file caption unchanged (plain text line) and = the golden greedy ids" "status $st: $(head -c 300 "$T/one.txt")"

# check OUT [SINGLE]: every image once with the single-file text and ids,
# the error lines, nothing hidden or through the loop
cat >"$T/check.py" <<'EOF'
import json, sys
out, single, nimg, nerr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
raw = open(out, "rb").read()
assert raw.endswith(b"\n"), "last line not whole"
lines = [json.loads(l) for l in raw.decode().splitlines()]
ref = {o["image"]: o for o in (json.loads(l) for l in open(single))}
paths = [o["path"] for o in lines]
assert len(paths) == len(set(paths)), "a path twice: %r" % paths
ok = [o for o in lines if "error" not in o]
err = {o["path"].rsplit("/", 1)[1]: o["error"] for o in lines if "error" in o}
assert len(ok) == nimg, ("images", sorted(o["path"] for o in ok))
for o in ok:
    r = ref[o["path"]]
    assert o["text"] == r["text"] and o["ids"] == r["ids"][0], (o, r)
    assert o["finish"] == r["finish"][0] and isinstance(o["ms"], (int, float)), o
    assert list(o)[:6] == ["path", "text", "ids", "finish", "ms", "cached"], list(o)
assert ".thumbs" not in out and not any("/loop/" in p or ".thumbs" in p for p in paths), paths
assert len(err) == nerr, err
assert not any(p.endswith((".txt", ".xmp", ".MOV", ".AAE")) for p in paths), "a non-image has a line"
assert err["dangling.png"]["code"] == "unreadable", err
if nerr == 2:
    assert err["secret.png"]["code"] == "unreadable", err
EOF
$C caption --recursive "$P" >"$T/full.jsonl" 2>"$T/err"; st=$?
$PY "$T/check.py" "$T/full.jsonl" "$T/single.jsonl" $NIMG $NERR 2>"$T/py.err"
report $(($? == 0 && st == 1)) "--recursive: each image once, same text+ids as single-file, error lines, exit 1" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"
grep -q 'dangling.png' "$T/err" && ! grep -q 'notes.txt' "$T/err"
report $((1 - $?)) "... failures also reported on stderr, skipped non-images not" "$(head -c 300 "$T/err")"
$C -v caption --recursive "$P" >/dev/null 2>"$T/err"
grep -q "; $NSKIP skipped (not images)" "$T/err"
report $((1 - $?)) "... the summary counts the $NSKIP non-images as skipped" "$(grep captioned "$T/err")"

# --files-from - (newline, then NUL), and a list file
(cd "$T" && find photos \( -type f -o -type l \) ! -path '*/.thumbs/*' ! -name loop | sort) >"$T/list"
sed "s|^|$T/|" "$T/list" >"$T/abslist"
$C caption --files-from - <"$T/abslist" >"$T/ff.jsonl" 2>"$T/err"; st=$?
$PY "$T/check.py" "$T/ff.jsonl" "$T/single.jsonl" $NIMG $NERR 2>"$T/py.err"
report $(($? == 0 && st == 1)) "--files-from - (newline-separated)" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"
tr '\n' '\0' <"$T/abslist" | $C caption --files-from - -0 >"$T/ff0.jsonl" 2>"$T/err"; st=$?
$PY "$T/check.py" "$T/ff0.jsonl" "$T/single.jsonl" $NIMG $NERR 2>"$T/py.err"
report $(($? == 0 && st == 1)) "--files-from - --null (NUL-separated)" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"
(cd "$T" && $C caption --files-from list --jsonl >"$T/rel.jsonl" 2>"$T/err"); st=$?
[ $st -eq 1 ] && [ "$(wc -l <"$T/rel.jsonl")" -eq $((NIMG + NERR)) ] && grep -q '"path":"photos/sub/camera.png"' "$T/rel.jsonl"
report $((1 - $?)) "--files-from FILE: paths written as listed" "status $st; $(head -c 300 "$T/rel.jsonl")"

# -j 1 and -j 8 give the same lines (order aside)
$C caption -r -j 1 "$P" >"$T/j1.jsonl" 2>/dev/null
$C caption -r -j 8 "$P" >"$T/j8.jsonl" 2>/dev/null
$PY - "$T/j1.jsonl" "$T/j8.jsonl" <<'EOF'
import json, sys
def load(f):
    return sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in ("ms", "cached")},
                             sort_keys=True) for l in open(f))
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a == b and len(a) > 6, (a, b)
EOF
report $((1 - $?)) "-j 1 and -j 8: the same results" ""

# --resume after a partial output whose last line was cut short
grep -v '"error"' "$T/full.jsonl" | head -2 >"$T/part.jsonl"
grep -v '"error"' "$T/full.jsonl" | sed -n 3p | head -c 40 >>"$T/part.jsonl"
$C caption -r "$P" --resume "$T/part.jsonl" >"$T/rest.jsonl" 2>"$T/err"; st=$?
$PY - "$T/part.jsonl" "$T/rest.jsonl" $NIMG $NERR <<'EOF'
import json, sys
part = open(sys.argv[1]).read().splitlines()[:2]
rest = [json.loads(l) for l in open(sys.argv[2])]
done = {json.loads(l)["path"] for l in part}
assert not done & {o["path"] for o in rest}, "done paths redone"
assert len(rest) == int(sys.argv[3]) + int(sys.argv[4]) - 2, len(rest)
EOF
report $(($? == 0 && st == 1)) "--resume: only the rest is done (cut last line = not done)" "status $st; $(head -c 300 "$T/err")"
$C caption -r "$P" -o "$T/part.jsonl" --resume "$T/part.jsonl" >"$T/stdout" 2>"$T/err"; st=$?
$PY "$T/check.py" "$T/part.jsonl" "$T/single.jsonl" $NIMG $NERR 2>"$T/py.err"
ok=$?; [ -s "$T/stdout" ] && ok=1
report $((ok == 0 && st == 1)) "-o FILE --resume FILE: the cut line removed, the union = a full run" "status $st; $(cat "$T/py.err" | head -c 600)"
$C caption -r "$P" -o "$T/part.jsonl" --resume "$T/part.jsonl" 2>"$T/err"; st=$?
$PY "$T/check.py" "$T/part.jsonl" "$T/single.jsonl" $NIMG $NERR 2>"$T/py.err"
report $(($? == 0 && st == 0)) "... a third run finds the files done (and the failures final): nothing to do, exit 0" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"

# SIGINT mid-run: whole lines only, exit 130, and --resume finishes the job
mkdir "$T/many"
for i in $(seq 1 40); do
  for f in astronaut camera chelsea coffee coffee_rgba; do
    { cat "$GOLDEN/images/$f.png"; printf 'copy %d' "$i"; } >"$T/many/${f}_$i.png"
  done
done
$C caption -r "$T/many" -o "$T/int.jsonl" 2>"$T/err" &
cpid=$!
wait_lines "$T/int.jsonl" 20
kill -INT $cpid
wait $cpid; st=$?
$PY - "$T/int.jsonl" <<'EOF' 2>"$T/py.err"
import json, sys
raw = open(sys.argv[1], "rb").read()
assert raw.endswith(b"\n")
lines = [json.loads(l) for l in raw.decode().splitlines()]
assert 20 <= len(lines) < 200, len(lines)
assert all("text" in o for o in lines)
EOF
report $(($? == 0 && st == 130)) "SIGINT mid-run: exit 130, every line whole" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"
cmd=$(grep -A1 'to continue, run:' "$T/err" | tail -1 | sed 's/^ *//')
case $cmd in "blip2ctl --socket $S -r -o $T/int.jsonl caption $T/many --resume $T/int.jsonl") ok=1 ;; *) ok=0 ;; esac
report $ok "... and prints the exact command to continue (with --resume FILE)" "$(head -c 400 "$T/err")"
eval "\"\$CTL\"${cmd#blip2ctl}" 2>"$T/err"; st=$?
$PY - "$T/int.jsonl" <<'EOF' 2>"$T/py.err"
import json, sys
paths = [json.loads(l)["path"] for l in open(sys.argv[1])]
assert len(paths) == 200 and len(set(paths)) == 200, (len(paths), len(set(paths)))
EOF
report $(($? == 0 && st == 0)) "... --resume completes it: 200 paths, each once" "status $st; $(cat "$T/py.err" "$T/err" | head -c 600)"

# a folder of photos with their usual clutter and the run's own output in
# it: exit 0, the output file never captioned, not even on the second run
mkdir "$T/trip"
cp "$GOLDEN/images/astronaut.png" "$GOLDEN/images/rocket.jpg" "$T/trip/"
cp "$P/notes.txt" "$P/sub/IMG_0001.xmp" "$P/sub/IMG_0002.MOV" "$T/trip/"
(cd "$T/trip" && $C caption -r . -o caps.jsonl --resume caps.jsonl) 2>"$T/err"; st=$?
[ $st -eq 0 ] && [ "$(wc -l <"$T/trip/caps.jsonl")" -eq 2 ] && ! grep -q 'caps.jsonl\|"error"' "$T/trip/caps.jsonl"
report $((1 - $?)) "photos + non-images + the -o/--resume file in the folder: 2 lines, exit 0" "status $st; $(head -c 400 "$T/trip/caps.jsonl") $(head -c 300 "$T/err")"
(cd "$T/trip" && $C caption -r . -o caps.jsonl --resume caps.jsonl) 2>"$T/err"; st=$?
[ $st -eq 0 ] && [ "$(wc -l <"$T/trip/caps.jsonl")" -eq 2 ]
report $((1 - $?)) "... run again: nothing to do, still exit 0" "status $st; $(head -c 300 "$T/err")"
# --include / --exclude (case ignored; a glob with / matches the path)
$C caption -r "$P" --include '*.PNG' --exclude 'coffee*' >"$T/inc.jsonl" 2>"$T/err"; st=$?
$PY - "$T/inc.jsonl" <<'EOF' 2>"$T/py.err"
import json, sys
paths = sorted(json.loads(l)["path"].rsplit("/", 1)[1] for l in open(sys.argv[1]))
paths = [p for p in paths if p != "secret.png"]   # there when not root
assert paths == ["astronaut.png", "camera.png", "chelsea.png", "dangling.png"], paths
EOF
report $(($? == 0)) "--include '*.PNG' --exclude 'coffee*'" "status $st; $(cat "$T/py.err" "$T/err" | head -c 400)"
$C caption -r "$P" --exclude '*/sub/*' --exclude '*.png' >"$T/exc.jsonl" 2>"$T/err"; st=$?
[ $st -eq 0 ] && [ "$(wc -l <"$T/exc.jsonl")" -eq 1 ] && grep -q 'rocket.jpg' "$T/exc.jsonl"
report $((1 - $?)) "--exclude with a path glob" "status $st; $(head -c 300 "$T/exc.jsonl")"

# usage errors (exit 2)
$C caption --jsonl - </dev/null >/dev/null 2>"$T/err"; st=$?
report $((st == 2)) "'-' with a collection: usage error" "status $st"
$C caption -0 "$P/astronaut.png" >/dev/null 2>"$T/err"; st=$?
report $((st == 2)) "--null without --files-from: usage error" "status $st"
$C caption --files-from "$T/nonexistent" >/dev/null 2>"$T/err"; st=$?
report $((st == 2)) "--files-from a missing file: exit 2" "status $st"
$C caption -r "$P" --resume "$T" >/dev/null 2>"$T/err"; st=$?
report $((st == 2)) "--resume a directory: exit 2" "status $st; $(head -c 200 "$T/err")"
$C --jsonl ask "$P/astronaut.png" what >/dev/null 2>"$T/err"; st=$?
report $((st == 2)) "--jsonl with ask: usage error" "status $st"

# the daemon dies mid-run: exit 4, whole lines
S2=$T/b2.sock
start "$S2"
D2=$DPID
$CTL --socket "$S2" caption -r "$T/many" -o "$T/lost.jsonl" 2>"$T/err" &
cpid=$!
wait_lines "$T/lost.jsonl" 5
kill -9 $D2
wait $cpid; st=$?
$PY -c 'import json,sys; r=open(sys.argv[1],"rb").read(); assert r.endswith(b"\n"); [json.loads(l) for l in r.decode().splitlines()]' "$T/lost.jsonl"
report $(($? == 0 && st == 4)) "daemon killed mid-run: exit 4, every line whole" "status $st; $(head -c 300 "$T/err")"

echo "1..$n"
[ $failed -eq 0 ]

#!/bin/sh
# test_convert.sh - blip2ctl convert: each golden model packed to each type
# and run through blip2-infer; an interrupted conversion (SIGKILL before a
# tensor, through the BLIP2_CONVERT_TEST_KILL_AFTER hook) leaves no file at the
# output name and an older file there untouched, SIGINT cancels cleanly;
# blip2d serves a .gguf directly (--mlock) with the caption blip2-infer
# gives from the folder; a Flan-T5 folder goes through blip2d's weights
# cache (converted, then mapped) with the caption blip2-infer gives from
# the folder; bad arguments are refused.  TAP.
BLIP2CTL=${BLIP2CTL:-./ctl/blip2ctl}
BLIP2_INFER=${BLIP2_INFER:-./model/blip2-infer}
GOLDEN_DIR=${GOLDEN_DIR:-tests/golden}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/test_convert.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0
t() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi; }

for model in opt-tiny opt-tiny-sharded t5-tiny; do
    for type in f32 f16 bf16 q8_0 q4_0; do
        out="$tmp/$model-$type.gguf"
        "$BLIP2CTL" convert "$GOLDEN_DIR/$model" "$out" --type "$type" >"$tmp/log" 2>&1
        t $? "convert $model --type $type"
        grep -q "tensors (.* f32, .* f16, .* bf16, .* q8_0), .* MiB in .* s" "$tmp/log"
        t $? "$model $type: summary line"
        [ -s "$out" ] && [ "$(head -c 4 "$out")" = GGUF ]
        t $? "$model $type: a GGUF file"
        ls -a "$tmp" | grep -q '\.tmp-' 
        [ $? -ne 0 ]; t $? "$model $type: no temporary file left"
        "$BLIP2_INFER" --model "$out" --image "$GOLDEN_DIR/images/chelsea.png" --max-new-tokens 3 >"$tmp/cap" 2>"$tmp/err"
        t $? "$model $type: blip2-infer captions with it"
        if [ "$type" = q8_0 ] || [ "$type" = q4_0 ]; then
            # issue 14: the fallback to f16 is said, not only counted (the
            # q4_0 count is printed only when there are any)
            f16=$(sed -n 's/.*tensors ([0-9]* f32, \([0-9]*\) f16, .*/\1/p' "$tmp/log")
            if [ "$type" = q8_0 ]; then q8=$(sed -n 's/.*f16, [0-9]* bf16, \([0-9]*\) q8_0).*/\1/p' "$tmp/log")
            else q8=$(sed -n 's/.* q8_0, \([0-9]*\) q4_0).*/\1/p' "$tmp/log"); q8=${q8:-0}; fi
            if [ "${f16:-0}" -gt 0 ]; then
                grep -q "warning: $f16 of $((f16 + q8)) matrices are f16, not $type: their rows are not a multiple of 32" "$tmp/log"
            else
                ! grep -q warning "$tmp/log"
            fi
            t $? "$model $type: a warning says how many matrices fell back to f16 ($f16 of $((f16 + q8)))"
            if [ "${q8:-1}" -eq 0 ]; then grep -q "in effect an f16 file" "$tmp/log"; t $? "$model $type: ... and that the file is in effect f16"; fi
        fi
    done
done
# from the build tree, without $BLIP2_CONVERT: blip2ctl finds model/blip2-convert
case $BLIP2CTL in */ctl/blip2ctl)
    env -u BLIP2_CONVERT "$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$tmp/bt.gguf" >"$tmp/log" 2>&1
    t $? "blip2ctl convert in the build tree finds model/blip2-convert ($(tail -1 "$tmp/log"))" ;;
esac
# blip2d serves a .gguf file directly (mapped, --mlock) with the same
# caption blip2-infer gives from the folder
BLIP2D=${BLIP2D:-./daemon/blip2d}
img="$GOLDEN_DIR/images/chelsea.png"
# daemon_caption BLIP2D-ARGS...: starts blip2d on $tmp/d.sock (log in
# $tmp/dlog, pid in dpid), waits for its socket (30 s at most, or until it
# exits) and sets got to its caption of $img
daemon_caption() {
    rm -f "$tmp/d.sock"
    "$BLIP2D" "$@" --socket "$tmp/d.sock" 2>"$tmp/dlog" &
    dpid=$!
    i=0
    while [ ! -S "$tmp/d.sock" ] && [ $i -lt 300 ] && kill -0 $dpid 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    got=$("$BLIP2CTL" --socket "$tmp/d.sock" --no-stream caption "$img" 2>&1 | sed "s/^ *//")
}
want=$("$BLIP2_INFER" --model "$GOLDEN_DIR/opt-tiny" --image "$img" | sed "s/^ *//")
daemon_caption --model "$tmp/opt-tiny-f32.gguf" --mlock --no-weights-cache
[ -n "$want" ] && [ "$got" = "$want" ]; t $? "blip2d on the f32 .gguf captions as blip2-infer on the folder"
grep -q "weights mapped from $tmp/opt-tiny-f32.gguf (.* MiB, locked)" "$tmp/dlog"
t $? "blip2d says it mapped and locked the file"
kill $dpid 2>/dev/null; wait $dpid 2>/dev/null

# Flan-T5: the f32 file captions exactly as the folder; blip2d converts the
# folder into its weights cache and maps that file
want=$("$BLIP2_INFER" --model "$GOLDEN_DIR/t5-tiny" --image "$img" | sed "s/^ *//")
got=$("$BLIP2_INFER" --model "$tmp/t5-tiny-f32.gguf" --image "$img" 2>&1 | sed "s/^ *//")
[ -n "$want" ] && [ "$got" = "$want" ]; t $? "t5-tiny: blip2-infer on the f32 .gguf captions as on the folder ('$got')"
daemon_caption --model "$GOLDEN_DIR/t5-tiny" --weights-cache "$tmp/wcache"
[ -n "$want" ] && [ "$got" = "$want" ]; t $? "blip2d on the t5-tiny folder (weights cache) captions as blip2-infer"
grep -q "weights mapped from $tmp/wcache/t5-tiny-[0-9a-f]*-f32.gguf" "$tmp/dlog"
t $? "blip2d converted the t5-tiny folder into its weights cache and mapped that file"
kill $dpid 2>/dev/null; wait $dpid 2>/dev/null

# not a terminal: plain progress lines
grep -q "blip2ctl convert: 100% (" "$tmp/log"; t $? "plain progress lines without a terminal"

# interrupted: killed before tensor 5; no output file, an old one untouched
out="$tmp/killed.gguf"
BLIP2_CONVERT_TEST_KILL_AFTER=5 "$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$out" --type f16 >/dev/null 2>&1
st=$?
[ $st -ne 0 ] && [ ! -e "$out" ]; t $? "SIGKILLed conversion (status $st) leaves no $out"
echo old >"$out"
BLIP2_CONVERT_TEST_KILL_AFTER=50 "$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$out" --type q8_0 >/dev/null 2>&1
[ "$(cat "$out")" = old ]; t $? "SIGKILLed conversion leaves the previous file untouched"
rm -f "$tmp"/.killed.gguf.tmp-*

# SIGINT mid-way: canceled, the temporary file removed, no output
out="$tmp/int.gguf"
BLIP2_CONVERT_TEST_KILL_AFTER=7 BLIP2_CONVERT_TEST_KILL_SIGNAL=INT "$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$out" >/dev/null 2>"$tmp/err"
st=$?
[ $st -eq 130 ] && [ ! -e "$out" ] && ! ls -a "$tmp" | grep -q '^\.int\.gguf\.tmp-' && grep -q canceled "$tmp/err"
t $? "SIGINT cancels (status $st), removes the temporary file, leaves no $out"

# bad input
"$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$tmp/x.gguf" --type q5_1 >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "q5_1" "$tmp/err"; t $? "unknown --type refused (exit 2)"
"$BLIP2CTL" convert "$tmp/nowhere" "$tmp/x.gguf" >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && [ ! -e "$tmp/x.gguf" ]; t $? "missing source refused: $(cat "$tmp/err")"
"$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" "$tmp/no/such/dir/x.gguf" >/dev/null 2>"$tmp/err"
[ $? -eq 2 ]; t $? "unwritable output refused: $(cat "$tmp/err")"
"$BLIP2CTL" convert "$GOLDEN_DIR/opt-tiny" >/dev/null 2>&1
[ $? -eq 2 ]; t $? "convert without OUTPUT is a usage error"
"$BLIP2_INFER" --model "$tmp/killed.gguf" --image "$GOLDEN_DIR/images/chelsea.png" >/dev/null 2>"$tmp/err"
[ $? -ne 0 ] && grep -q "killed.gguf" "$tmp/err"; t $? "a non-GGUF file is refused by name: $(cat "$tmp/err")"
echo "1..$n"

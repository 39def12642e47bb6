#!/bin/sh
# test_infer_errors.sh - blip2-infer on bad input: each case must exit with
# the documented status and a one-line message that names the problem, and
# never crash (a signal gives status >= 128).  Also checks --json and
# --dump-tensors on a good run.  TAP output.
set -u
INFER=${BLIP2_INFER:-model/blip2-infer}
G=${GOLDEN_DIR:-tests/golden}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
n=0; failed=0

# expect STATUS PATTERN NAME -- command...
expect() {
  want=$1; pat=$2; name=$3; shift 4
  "$@" >"$T/out" 2>"$T/err"; got=$?
  n=$((n + 1))
  lines=$(wc -l <"$T/err")
  if [ "$got" -eq "$want" ] && { [ -z "$pat" ] || grep -q -- "$pat" "$T/err"; } && { [ "$want" -ne 1 ] || [ "$lines" -le 1 ]; }; then
    echo "ok $n - $name"
  else
    echo "not ok $n - $name (status $got, want $want; stderr: $(head -c 300 "$T/err"))"
    failed=$((failed + 1))
  fi
}

# safetensors file with one F32 tensor NAME of shape SHAPE (JSON list) and COUNT floats of zeros
mkst() {
  out=$1; name=$2; shape=$3; count=$4
  hdr="{\"$name\":{\"dtype\":\"F32\",\"shape\":$shape,\"data_offsets\":[0,$((count * 4))]}}"
  while [ $(( ${#hdr} % 8 )) -ne 0 ]; do hdr="$hdr "; done
  len=${#hdr}
  printf "$(printf '\\%03o\\%03o\\%03o\\%03o\\000\\000\\000\\000' $((len & 255)) $(((len >> 8) & 255)) $(((len >> 16) & 255)) $(((len >> 24) & 255)))" >"$out"
  printf '%s' "$hdr" >>"$out"
  head -c $((count * 4)) /dev/zero >>"$out"
}

M=$G/opt-tiny
IMG=$G/images/chelsea.png

expect 2 "model is required" "no --model is a usage error" -- "$INFER" --image "$IMG"
expect 2 "give --image" "no input is a usage error" -- "$INFER" --model "$M"
expect 2 "not an integer" "bad --max-new-tokens" -- "$INFER" --model "$M" --image "$IMG" --max-new-tokens x
expect 2 "unrecognized option\|invalid option" "unknown option" -- "$INFER" --model "$M" --frobnicate
expect 2 "is not f32, bf16, int8 or auto" "bad --precision" -- "$INFER" --model "$M" --image "$IMG" --precision int4
expect 1 "precision 'int4' is not f32, bf16, int8 or auto" "bad BLIP2_PRECISION: the load fails saying why" -- env BLIP2_PRECISION=int4 "$INFER" --model "$M" --image "$IMG"
expect 1 "no such model file or folder" "missing model folder" -- "$INFER" --model "$T/nope" --image "$IMG"
expect 2 "cannot open .*nope.png: No such file or directory" "missing image file: exit 2 with the reason (as blip2ctl)" -- "$INFER" --model "$M" --image "$T/nope.png"
printf 'this is not an image\n' >"$T/text.png"
expect 2 "text.png: .*image" "a text file is not an image" -- "$INFER" --model "$M" --image "$T/text.png"
: >"$T/empty.jpg"
expect 2 "empty.jpg: .*" "an empty file is not an image" -- "$INFER" --model "$M" --image "$T/empty.jpg"
head -c 2000 "$IMG" >"$T/trunc.png"
expect 2 "trunc.png: " "a truncated PNG" -- "$INFER" --model "$M" --image "$T/trunc.png"
mkst "$T/wrongname.safetensors" other "[1,3,224,224]" 150528
expect 2 "no tensor 'pixel_values'" "pixel values file without pixel_values" -- "$INFER" --model "$M" --pixel-values "$T/wrongname.safetensors"
mkst "$T/small.safetensors" pixel_values "[1,3,2,2]" 12
expect 2 "must have shape" "mis-shaped pixel_values" -- "$INFER" --model "$M" --pixel-values "$T/small.safetensors"
head -c 1000 "$G/images/chelsea.pixels.safetensors" >"$T/cut.safetensors"
expect 2 "cut.safetensors" "truncated pixel values file" -- "$INFER" --model "$M" --pixel-values "$T/cut.safetensors"

mkdir "$T/model"
cp "$M"/*.json "$M"/merges.txt "$T/model/"
head -c 5000000 "$M/model.safetensors" >"$T/model/model.safetensors"
expect 1 "beyond end of file (truncated?)" "truncated weights" -- "$INFER" --model "$T/model" --image "$IMG"
rm "$T/model/model.safetensors"
expect 1 "no model.safetensors" "weights missing" -- "$INFER" --model "$T/model" --image "$IMG"
mkst "$T/model/model.safetensors" query_tokens "[1,8,48]" 384
expect 1 "missing tensor" "a checkpoint without most tensors" -- "$INFER" --model "$T/model" --image "$IMG"
mkst "$T/model/model.safetensors" vision_model.embeddings.patch_embedding.weight "[40,3,14,13]" 21840
expect 1 "has shape (40, 3, 14, 13), expected (40, 3, 14, 14)" "a mis-shaped tensor" -- "$INFER" --model "$T/model" --image "$IMG"
printf '{"model_type": "blip-2", "vision_config": {"hidden_size": "wide"}}' >"$T/model/config.json"
expect 1 "hidden_size" "a malformed config.json" -- "$INFER" --model "$T/model" --image "$IMG"
printf '{"model_type": ' >"$T/model/config.json"
expect 1 "config.json" "a truncated config.json" -- "$INFER" --model "$T/model" --image "$IMG"

long=$(awk 'BEGIN { for (i = 0; i < 2100; i++) printf "cat "; }')
expect 2 "prompt too long" "a prompt longer than the model accepts" -- "$INFER" --model "$M" --image "$IMG" --prompt "$long"
expect 2 "max_new_tokens" "more new tokens than positions" -- "$INFER" --model "$M" --image "$IMG" --max-new-tokens 5000

# a good run: --json and --dump-tensors
"$INFER" --model "$M" --pixel-values "$G/images/chelsea.pixels.safetensors" --json \
  --dump-tensors "$T/dump.safetensors" >"$T/json" 2>"$T/err"
n=$((n + 1))
if grep -q '^{"text": *"TERProf feed.*"ids": *\[2, *28107, *42133' "$T/json"; then
  echo "ok $n - --json prints the text (without the leading space, as blip2ctl) and the reference ids"
else
  echo "not ok $n - --json output: $(cat "$T/json" "$T/err")"; failed=$((failed + 1))
fi
n=$((n + 1))
missing=""
for t in pixel_values vision_last_hidden_state vision_pooler_output qformer_last_hidden_state language_model_inputs logits_last; do
  head -c 4096 "$T/dump.safetensors" | grep -q "\"$t\"" || missing="$missing $t"
done
if [ -z "$missing" ]; then echo "ok $n - --dump-tensors writes every stage"; else echo "not ok $n - dump lacks:$missing"; failed=$((failed + 1)); fi

# issue 14: blip2-infer behaves like blip2ctl
expect 0 "" "one image" -- "$INFER" --model "$M" --image "$IMG"
first=$(head -c 1 "$T/out")
n=$((n + 1))
if [ -s "$T/out" ] && [ "$first" != " " ]; then echo "ok $n - the caption has no leading space"
else echo "not ok $n - output: '$(cat "$T/out")'"; failed=$((failed + 1)); fi
cp "$T/out" "$T/one.txt"
"$INFER" --model "$M" --image - <"$IMG" >"$T/out" 2>"$T/err"; st=$?
n=$((n + 1))
if [ $st -eq 0 ] && cmp -s "$T/out" "$T/one.txt"; then echo "ok $n - --image - reads the image from standard input"
else echo "not ok $n - --image -: status $st: $(cat "$T/out" "$T/err")"; failed=$((failed + 1)); fi
expect 2 "empty" "--image - with nothing on stdin" -- "$INFER" --model "$M" --image - </dev/null
"$INFER" --model "$M" --image "$T/text.png" --image "$IMG" --image "$T/nope.png" --json >"$T/out" 2>"$T/err"; st=$?
n=$((n + 1))
if [ $st -eq 2 ] && python3 - "$T/out" "$T/one.txt" <<'EOF'
import json, sys
l = [json.loads(x) for x in open(sys.argv[1])]
one = open(sys.argv[2]).read().strip()
assert len(l) == 3, l
assert l[0]["image"].endswith("text.png") and l[0]["error"]["code"] == "bad_image", l[0]
assert l[1]["text"] == one and l[1]["image"].endswith("chelsea.png"), l[1]
assert l[2]["error"]["code"] == "unreadable" and "No such file" in l[2]["error"]["message"], l[2]
EOF
then echo "ok $n - a batch with bad images: each input its line (the good one captioned), exit 2"
else echo "not ok $n - batch: status $st: $(cat "$T/out" "$T/err" | head -c 600)"; failed=$((failed + 1)); fi
"$INFER" --model "$M" --image "$IMG" --image "$T/text.png" >"$T/out" 2>"$T/err"; st=$?
n=$((n + 1))
if [ $st -eq 2 ] && [ "$(cat "$T/out")" = "$IMG: $(cat "$T/one.txt")" ] && grep -q "text.png" "$T/err"; then
  echo "ok $n - several images as text: 'IMAGE: caption' lines, the failure on stderr"
else echo "not ok $n - text batch: status $st: $(cat "$T/out" "$T/err" | head -c 600)"; failed=$((failed + 1)); fi
expect 0 "" "--threads 1" -- "$INFER" --model "$M" --image "$IMG" --threads 1
n=$((n + 1))
if cmp -s "$T/out" "$T/one.txt"; then echo "ok $n - --threads 1: the same caption"
else echo "not ok $n - --threads 1: $(cat "$T/out")"; failed=$((failed + 1)); fi
expect 0 "" "-V" -- "$INFER" -V
grep -q '^blip2-infer [0-9]' "$T/out" || { echo "not ok $n - -V prints the version"; failed=$((failed + 1)); }
expect 2 "give images with --image FILE" "a bare image argument: the hint" -- "$INFER" --model "$M" "$IMG"
expect 1 "not a BLIP-2 model folder" "a folder that is no checkpoint" -- "$INFER" --model "$G" --image "$IMG"
expect 2 "above the limit" "--max-pixels below the image's size" -- "$INFER" --model "$M" --image "$IMG" --max-pixels 1000
expect 0 "" "--max-pixels above it" -- "$INFER" --model "$M" --image "$IMG" --max-pixels 100000000

# Flan-T5: t5-tiny captions and answers from the image file (the golden
# greedy ids: [decoder_start 0] + new tokens + eos 1)
T5=$G/t5-tiny
n=$((n + 1))
if "$INFER" --model "$T5" --image "$IMG" --json >"$T/t5json" 2>"$T/err" &&
   grep -q '^{"text": *"personaj walnut", *"ids": *\[0, *18469, *22962, *1\]' "$T/t5json"; then
  echo "ok $n - t5-tiny caption: the reference text and ids"
else
  echo "not ok $n - t5-tiny caption: $(cat "$T/t5json" "$T/err")"; failed=$((failed + 1))
fi
n=$((n + 1))
if "$INFER" --model "$T5" --image "$IMG" --prompt "Question: how many cats are there? Answer:" --num-beams 3 \
     --max-new-tokens 12 --json >"$T/t5json" 2>"$T/err" &&
   grep -q '^{"text": *"crab totodat", *"ids": *\[0, *21189, *26388, *1\]' "$T/t5json"; then
  echo "ok $n - t5-tiny question, beam search: the reference text and ids"
else
  echo "not ok $n - t5-tiny question: $(cat "$T/t5json" "$T/err")"; failed=$((failed + 1))
fi
mkdir "$T/t5model"
cp "$T5"/*.json "$T/t5model/"
ln -s "$(cd "$T5" && pwd)/model.safetensors" "$T/t5model/model.safetensors"
expect 1 "spiece.model" "a T5 checkpoint without spiece.model" -- "$INFER" --model "$T/t5model" --image "$IMG"
printf 'not a sentencepiece model' >"$T/t5model/spiece.model"
expect 1 "spiece.model" "a corrupt spiece.model" -- "$INFER" --model "$T/t5model" --image "$IMG"

echo "1..$n"
[ "$failed" -eq 0 ]

#!/usr/bin/python3
# test_features_ctl.py - `blip2ctl features` against a real blip2d on the
# golden opt-tiny model: --out writes a safetensors file with the golden
# files' names, read back here and compared with tests/golden/features/
# (1e-4 image / Q-Former tensors, 5e-4 logits); --json; --output; the
# usage errors and the frame limit.  Goes through libblip2client, so it
# also covers blip2c_features_get.  TAP output.
import functools, json, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, ok, finish, start, stop, maxdiff

TMP = b2test.tmpdir("b2fctl.")
proc, sock = start(tmp=TMP, sock=os.path.join(TMP, "d.sock"), bail="blip2d did not start")
ctl = functools.partial(b2test.ctl, sock, timeout=120)
read_st = functools.partial(b2test.read_st, check=True)  # checks the layout of every file

try:
    gold = read_st(os.path.join(G, "features", "opt-tiny__image_qformer_features.safetensors"))
    cases = {"chelsea.png": ("opt-tiny__chelsea_png__caption", 0), "rocket.jpg": ("opt-tiny__rocket_jpg__caption", 1)}
    for img, (case, row) in cases.items():
        out = os.path.join(TMP, img + ".safetensors")
        rc, so, se = ctl("features", os.path.join(G, "images", img), "--out", out)
        if not ok(rc == 0 and os.path.exists(out), "features %s --out: exit 0 (%s)" % (img, se.strip())):
            continue
        got = read_st(out)
        b2test.check_image_file(got, gold, row, img)
        c = read_st(os.path.join(G, "cases", case + ".safetensors"))
        d = maxdiff(got["language_model_inputs"][2], c["language_model_inputs"][2])
        ok(d <= 1e-4, "%s: language_model_inputs max abs err %.3g" % (img, d))

    # text alone, golden names and dtypes (input_ids / attention_mask int64)
    for key, text in (("text_a", "A photo of"), ("text_b", "Hello world")):
        out = os.path.join(TMP, key + ".safetensors")
        rc, so, se = ctl("features", "--text", text, "--out", out)
        if not ok(rc == 0, "features --text '%s' --out: exit 0 (%s)" % (text, se.strip())):
            continue
        got, g = read_st(out), read_st(os.path.join(G, "features", "opt-tiny__%s.safetensors" % key))
        ok(sorted(got) == sorted(g), "%s: the same tensor names as the golden file (%s)" % (key, sorted(got)))
        ok(got["input_ids"][0] == "I64" and list(got["input_ids"][2]) == list(g["input_ids"][2]) and
           list(got["attention_mask"][2]) == list(g["attention_mask"][2]), "%s: input_ids and attention_mask" % key)
        d = maxdiff(got["logits"][2], g["logits"][2])
        ok(got["logits"][1] == g["logits"][1] and d <= 5e-4, "%s: logits max abs err %.3g <= 5e-4" % (key, d))

    # --json with --output, image and text together
    rc, so, se = ctl("features", os.path.join(G, "images", "chelsea.png"), "--text", "Hello world",
                     "--output", "image_pooler_output", "--output", "logits_last", "--json")
    try:
        j = json.loads(so)
    except ValueError:
        j = {}
    ok(rc == 0 and sorted(j.get("tensors", {})) == ["image_pooler_output", "input_ids", "logits_last"],
       "--json --output: the chosen outputs and input_ids (%s)" % se.strip())
    if j.get("tensors"):
        t = j["tensors"]["image_pooler_output"]
        ok(t["dtype"] == "float32" and t["shape"] == [1, 40] and maxdiff(t["data"], gold["image_pooler_output"][2]) <= 1e-4,
           "--json: image_pooler_output values")
        ok(j["cached"] is True, "--json: chelsea.png came from the daemon's cache the second time")
        g = read_st(os.path.join(G, "features", "opt-tiny__text_b.safetensors"))
        ok(maxdiff(j["tensors"]["logits_last"]["data"], g["logits"][2], 2 * 50272) <= 5e-4,
           "--json: logits_last is the golden last row")
    rc, so, se = ctl("features", os.path.join(G, "images", "rocket.jpg"), "--output", "qformer_pooler_output")
    ok(rc == 0 and so.split() == ["qformer_pooler_output", "float32", "(1,", "48)"], "summary line without --json/--out")

    # errors
    rc, so, se = ctl("features")
    ok(rc == 2 and "IMAGE, --text" in se, "no image and no text: usage error")
    rc, so, se = ctl("features", os.path.join(G, "images", "chelsea.png"), "--output", "pixels")
    ok(rc == 2 and "is no output" in se, "an unknown output: exit 2 (%s)" % se.strip())
    rc, so, se = ctl("features", "--text", "a " * 400)
    ok(rc == 2 and "logits_last" in se, "logits above the frame limit: exit 2 with a hint (%s)" % se.strip()[:160])
    rc, so, se = ctl("caption", os.path.join(G, "images", "chelsea.png"), "--text", "x")
    ok(rc == 2 and "for features" in se, "--text with caption is a usage error")
    rc, so, se = ctl("features", os.path.join(TMP, "missing.png"))
    ok(rc == 2, "a missing image file: exit 2")
finally:
    ok(stop(proc, 20) == 0, "blip2d exits 0 on SIGTERM")
    finish()

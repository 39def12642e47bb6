#!/usr/bin/python3
# test_features_daemon.py - the features op of blip2d (docs/protocol.md 5.6),
# spoken with only the protocol document and python3-msgpack: the golden
# Blip2Model features of transformers 4.37.2 (tests/golden/features/) over
# the socket (1e-4 image / Q-Former tensors, 5e-4 logits), the version gate,
# the output list, the feature cache (a repeated request does not run the
# vision tower: done.cached, timings.vision_ms 0, status cache.hits), the
# frame limit, and the errors.  TAP output.
import os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, Client, ok, finish, start, stop, read_st, wire, maxdiff, require_msgpack

require_msgpack()
TMP = b2test.tmpdir("b2dfeat.")
proc, sock = start(tmp=TMP, sock=os.path.join(TMP, "d.sock"), bail="blip2d did not start")
c = Client(sock, 60 * SCALE)

try:
    img = {n: open(os.path.join(G, "images", n), "rb").read() for n in ("chelsea.png", "rocket.jpg")}
    gold = read_st(os.path.join(G, "features", "opt-tiny__image_qformer_features.safetensors"))
    cap = read_st(os.path.join(G, "cases", "opt-tiny__chelsea_png__caption.safetensors"))

    # ---- version gate ----
    r = c.call({"id": 1, "op": "features", "image": img["chelsea.png"]})
    ok(r["type"] == "error" and r["code"] == "unknown_op" and "version 2" in r["message"],
       "features before hello v2 is unknown_op in version 1 (%s)" % r.get("message"))
    r = c.call({"id": 2, "op": "hello", "v": 9, "client": "test_features_daemon.py"})
    ok(r["type"] == "hello" and r["v"] == 2, "hello negotiates version 2")

    # ---- image, default outputs ----
    st0 = c.call({"id": 3, "op": "status"})
    r = c.call({"id": 4, "op": "features", "image": img["chelsea.png"]})
    ok(r["type"] == "features", "features reply for chelsea.png (%s)" % r.get("message", r["type"]))
    ts = r.get("tensors", {})
    ok(sorted(ts) == sorted(["image_last_hidden_state", "image_pooler_output", "qformer_last_hidden_state",
                             "qformer_pooler_output", "language_model_inputs"]),
       "the default outputs of an image are its five tensors")
    ok(r.get("cached") is False and r["timings"]["vision_ms"] > 0, "first request runs the vision tower")
    first = {}
    for name in ("image_last_hidden_state", "image_pooler_output", "qformer_last_hidden_state",
                 "qformer_pooler_output"):
        dt, shape, a = wire(ts[name])
        gshape = gold[name][1]
        first[name] = ts[name]["data"]
        ok(dt == "float32" and shape == [1] + gshape[1:], "%s: float32 %s" % (name, shape))
        d = maxdiff(a, gold[name][2], 0)
        ok(d <= 1e-4, "%s of chelsea.png vs get_*_features max abs err %.3g <= 1e-4" % (name, d))
    dt, shape, a = wire(ts["language_model_inputs"])
    d = maxdiff(a, cap["language_model_inputs"][2])
    ok(shape == [1, 8, 56] and d <= 1e-4, "language_model_inputs (1,8,56) max abs err %.3g" % d)

    # ---- the cache: the same image again ----
    r = c.call({"id": 5, "op": "features", "image": img["chelsea.png"],
                "outputs": ["image_last_hidden_state", "qformer_pooler_output"]})
    st1 = c.call({"id": 6, "op": "status"})
    ok(r["type"] == "features" and r["cached"] is True and r["timings"]["vision_ms"] == 0,
       "a repeated request is served from the feature cache (cached, vision_ms 0)")
    ok(st1["cache"]["hits"] == st0["cache"]["hits"] + 1 and st1["cache"]["misses"] == st0["cache"]["misses"] + 1,
       "status: one miss then one hit (%d/%d -> %d/%d)" % (st0["cache"]["hits"], st0["cache"]["misses"],
                                                           st1["cache"]["hits"], st1["cache"]["misses"]))
    ok(sorted(r["tensors"]) == ["image_last_hidden_state", "qformer_pooler_output"] and
       r["tensors"]["image_last_hidden_state"]["data"] == first["image_last_hidden_state"] and
       r["tensors"]["qformer_pooler_output"]["data"] == first["qformer_pooler_output"],
       "only the requested outputs, bit-identical to the computed ones")
    r = c.call({"id": 7, "op": "generate", "image": img["chelsea.png"], "max_new_tokens": 2})
    ok(r["type"] == "done" and r["cached"] is True, "generate after features finds the query embeddings cached")

    # ---- by descriptor, the second image ----
    with open(os.path.join(G, "images", "rocket.jpg"), "rb") as f:
        r = c.call({"id": 8, "op": "features", "image_fd": True,
                    "outputs": ["image_pooler_output", "qformer_pooler_output"]}, fds=[f.fileno()])
    ok(r["type"] == "features" and sorted(r["tensors"]) == ["image_pooler_output", "qformer_pooler_output"],
       "rocket.jpg by descriptor")
    for name, dim in (("image_pooler_output", 40), ("qformer_pooler_output", 48)):
        a = wire(r["tensors"][name])[2]
        d = maxdiff(a, gold[name][2], dim)
        ok(d <= 1e-4, "%s of rocket.jpg (golden row 1) max abs err %.3g" % (name, d))

    # ---- text: get_text_features ----
    for key, outputs in (("text_a", None), ("text_b", ["logits", "logits_last"])):
        g = read_st(os.path.join(G, "features", "opt-tiny__%s.safetensors" % key))
        text = {"text_a": "A photo of", "text_b": "Hello world"}[key]
        rq = {"id": 9, "op": "features", "text": text}
        if outputs:
            rq["outputs"] = outputs
        r = c.call(rq)
        if not ok(r["type"] == "features", "%s: features reply (%s)" % (key, r.get("message", ""))):
            continue
        ids = list(wire(r["tensors"]["input_ids"])[2])
        ok(ids == list(g["input_ids"][2]), "%s: input_ids %s" % (key, ids))
        dt, shape, a = wire(r["tensors"]["logits"])
        d = maxdiff(a, g["logits"][2])
        ok(shape == g["logits"][1] and d <= 5e-4, "%s: logits %s max abs err %.3g <= 5e-4" % (key, shape, d))
        if outputs:
            V = shape[2]
            a = wire(r["tensors"]["logits_last"])[2]
            ok(maxdiff(a, g["logits"][2], (shape[1] - 1) * V) <= 5e-4, "%s: logits_last is the last row" % key)
        ok("image_pooler_output" not in r["tensors"] and r["cached"] is False, "%s: no image outputs" % key)

    # ---- image and text together ----
    r = c.call({"id": 10, "op": "features", "image": img["rocket.jpg"], "text": "A photo of",
                "outputs": ["logits_last", "qformer_pooler_output"]})
    ok(r["type"] == "features" and sorted(r["tensors"]) == ["input_ids", "logits_last", "qformer_pooler_output"],
       "image and text in one request")

    # ---- errors ----
    def err(rid, rq, code, field=None, name=""):
        rq = dict(rq, id=rid, op="features")
        r = c.call(rq)
        good = r["type"] == "error" and r["code"] == code and (field is None or r.get("field") == field)
        ok(good, "%s -> %s%s (%s)" % (name, code, " " + field if field else "", r.get("message", r["type"])))
        return r

    err(20, {}, "missing_field", "image", "neither image nor text")
    err(21, {"image": img["chelsea.png"], "outputs": ["pixels"]}, "out_of_range", "outputs[0]", "unknown output")
    err(22, {"image": img["chelsea.png"], "outputs": ["logits"]}, "out_of_range", "outputs[0]", "logits without text")
    err(23, {"text": "x", "outputs": ["image_pooler_output"]}, "out_of_range", "outputs[0]", "image output without image")
    err(24, {"text": "x", "outputs": ["logits", "logits"]}, "out_of_range", "outputs[1]", "an output twice")
    err(25, {"text": ""}, "out_of_range", "text", "empty text")
    err(26, {"image": b"not an image"}, "bad_image", None, "bytes that are no image")
    err(27, {"image": img["chelsea.png"], "image_fd": True}, "out_of_range", "image_fd", "image and image_fd")
    err(28, {"image": img["chelsea.png"], "prompt": "x"}, "unknown_field", "prompt", "a generate field")
    r = err(29, {"text": "a " * 400}, "too_large", None, "logits of 401 tokens above the 64 MiB frame")
    ok("logits_last" in r.get("message", ""), "the too_large message suggests logits_last")
    r = c.call({"id": 30, "op": "features", "text": "a " * 400, "outputs": ["logits_last"]})
    ok(r["type"] == "features" and r["tensors"]["logits_last"]["shape"] == [1, 50272],
       "the same text with logits_last only fits")
    r = c.call({"id": 31, "op": "ping"})
    ok(r["type"] == "pong", "the connection is still usable")
finally:
    ok(stop(proc, 20) == 0, "blip2d exits 0 on SIGTERM")
    finish()

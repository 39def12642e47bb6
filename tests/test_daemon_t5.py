#!/usr/bin/python3
# test_daemon_t5.py - blip2d serving the Flan-T5 family (tests/golden/t5-tiny),
# over the socket with only docs/protocol.md and python3-msgpack, and through
# blip2ctl: the golden greedy / beam / repetition-penalty ids (decoder_start
# 0 first) and texts of every t5-tiny case; the batch case with two requests
# in flight; requests decoded together (one connection, all in flight, and
# concurrent clients) == serial; `features` on a T5 model: the image outputs
# against the golden vision / Q-Former / projection tensors (the projection
# is to T5's d_model), text features refused with `unsupported`; blip2ctl
# caption, ask, caption -r and features (one image, collection, --text)
# against the T5 daemon.  TAP output.
import functools, json, os, sys, tempfile, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, Client, ok, finish, start, stop, image, manifest, read_st, wire, maxdiff, first, \
    require_msgpack, golden_requests

require_msgpack()
MODEL = os.path.join(G, "t5-tiny")
TMP = b2test.tmpdir("b2dt5.")
TOL = 1e-4


proc, SOCK = start(tmp=TMP, model=MODEL, sock=os.path.join(TMP, "t5.sock"), bail="blip2d did not start on t5-tiny")
ctl = functools.partial(b2test.ctl, SOCK)

man = manifest("manifest_t5.json")

try:
    c = Client(SOCK, 120 * SCALE)
    c.send({"id": 1, "op": "hello", "v": 2, "client": "test_daemon_t5.py"})
    r = c.recv()
    ok(r["type"] == "hello" and r["v"] == 2, "hello on a T5 daemon")
    st = c.call({"id": 2, "op": "status"})
    ok(st["type"] == "status" and st["model"]["family"] == "t5",
       "status: model.family is \"t5\" (from config.json) (%s)" % st.get("model"))

    # every case, every generate call, image by bytes
    cases = [x for x in man["cases"] if "image" in x]
    bad, serial = [], {}
    for case, name, gen, req in golden_requests(cases, 11):
        r = c.call(req)
        if r["type"] != "done" or r["ids"][0] != gen["ids"] or r["texts"][0] != gen["text"]:
            bad.append((case["id"], name, r))
        if name == "greedy":
            serial[case["id"]] = (req, r["ids"][0], r["texts"][0])
    ok(not bad, "golden greedy, beam and repetition-penalty ids and texts over the socket (%d calls)%s"
       % (3 * len(cases), "" if not bad else ": " + repr(bad[0])[:300]))
    ok(all(v[1][0] == 0 for v in serial.values()),
       "done.ids start with decoder_start_token_id 0, as generate() returns them for T5")
    eos_case = [v for v in serial.values() if v[1][-1] == 1]
    ok(bool(eos_case), "a sequence that ends with EOS carries the EOS id 1 last")

    # the batch case: two requests in flight together (T5 pads with 0 after EOS)
    b = [x for x in man["cases"] if x["id"] == "t5-tiny/batch"][0]
    want = b["generate"]["greedy"]["ids"]
    c.send({"id": 500, "op": "generate", "image": image(b["images"][0]), "prompt": b["prompts"][0]})
    c.send({"id": 501, "op": "generate", "image": image(b["images"][1]), "prompt": b["prompts"][1]})
    got = {}
    while len(got) < 2:
        r = c.recv()
        if r["type"] in ("done", "error"):
            got[r["id"]] = r.get("ids", [[None]])[0]
    good = True
    for k, row in ((500, 0), (501, 1)):
        g = got.get(k) or []
        good &= g == want[row][:len(g)] and all(t == 0 for t in want[row][len(g):])
    ok(good, "two requests in flight reproduce the golden batch ids (%s)" % got)

    # several in flight on one connection == serial
    keys = [k for k in serial][:8]
    for i, k in enumerate(keys):
        c.send(dict(serial[k][0], id=1000 + i))
    res = {}
    while len(res) < len(keys):
        r = c.recv()
        if r["type"] in ("done", "error"):
            res[r["id"]] = r.get("ids", [None])[0]
    ok(all(res.get(1000 + i) == serial[k][1] for i, k in enumerate(keys)),
       "%d requests in flight on one connection (decoded together) == serial" % len(keys))

    # concurrent clients == serial, beams too
    results = {}

    def worker(k, extra):
        cl = Client(SOCK, 120 * SCALE)
        req = dict(serial[k][0], id=7, **extra)
        results[(k, bool(extra))] = cl.call(req).get("ids", [None])[0]
        cl.close()

    beam_want = {x["id"]: x["generate"]["beam3"]["ids"] for x in cases}
    ths = [threading.Thread(target=worker, args=(k, {})) for k in keys[:4]]
    ths += [threading.Thread(target=worker, args=(k, {"num_beams": 3, "max_new_tokens": 12}))
            for k in keys[4:8]]
    [t.start() for t in ths]
    [t.join() for t in ths]
    ok(all(results.get((k, False)) == serial[k][1] for k in keys[:4]) and
       all(results.get((k, True)) == beam_want[k] for k in keys[4:8]),
       "8 concurrent clients (4 greedy, 4 beam) get the serial / golden results")

    # streaming: token events then done
    c.send({"id": 600, "op": "generate", "image": image("chelsea.png"), "stream": True, "max_new_tokens": 20})
    evs = []
    while True:
        r = c.recv()
        evs.append(r)
        if r["type"] in ("done", "error"):
            break
    toks = [e["token"] for e in evs if e["type"] == "token"]
    ok(evs[-1]["type"] == "done" and toks == evs[-1]["ids"][0][1:],
       "streaming: one token event per generated token (not the decoder start)")

    # features: image outputs against the golden T5 case tensors
    gc = read_st(os.path.join(G, "cases-t5", "t5-tiny__chelsea_png__caption.safetensors"))
    r = c.call({"id": 700, "op": "features", "image": image("chelsea.png")})
    ok(r["type"] == "features", "features of an image on a T5 model (%s)" % r.get("message", ""))
    t = r.get("tensors", {})
    pairs = (("image_last_hidden_state", "vision_last_hidden_state"),
             ("image_pooler_output", "vision_pooler_output"),
             ("qformer_last_hidden_state", "qformer_last_hidden_state"),
             ("language_model_inputs", "language_model_inputs"))
    for name, gname in pairs:
        _, shape, ga = gc[gname]
        d = maxdiff(wire(t[name])[2], ga, whole=True) if name in t else float("inf")
        ok(name in t and t[name]["shape"] == shape and d <= TOL,
           "T5 features %s %s max abs err %.3g <= %g" % (name, t.get(name, {}).get("shape"), d, TOL))
    qf = gc["qformer_last_hidden_state"]
    dq = (maxdiff(wire(t["qformer_pooler_output"])[2], qf[2][:qf[1][2]], whole=True)
          if "qformer_pooler_output" in t else float("inf"))
    ok(dq <= TOL, "T5 features qformer_pooler_output = row 0 of the Q-Former output (%.3g)" % dq)
    lmi = t.get("language_model_inputs", {}).get("shape")
    ok(lmi == [1, st["model"].get("num_query_tokens", 7), st["model"].get("text_hidden", 44)] or lmi == [1, 7, 44],
       "language_model_inputs is projected to T5's d_model (%s)" % lmi)
    r = c.call({"id": 701, "op": "features", "text": "a photo of"})
    ok(r["type"] == "error" and r["code"] == "unsupported" and "t5" in r["message"],
       "text features on T5: unsupported, saying the family (%s)" % r.get("message"))
    r = c.call({"id": 702, "op": "features", "image": image("rocket.jpg"), "text": "a photo of",
                "outputs": ["image_pooler_output", "logits_last"]})
    ok(r["type"] == "error" and r["code"] == "unsupported", "image + text features on T5: unsupported")
    r = c.call({"id": 703, "op": "features", "image": image("chelsea.png"), "outputs": ["qformer_pooler_output"]})
    ok(r["type"] == "features" and r.get("cached") is True and list(r["tensors"]) == ["qformer_pooler_output"],
       "a second features request for the image comes from the cache")
    c.close()

    # blip2ctl against the T5 daemon
    by = {x["id"]: x for x in cases}
    cap = by["t5-tiny/chelsea.png/caption"]["generate"]["greedy"]["text"].strip()
    rc, so, se = ctl("caption", "--no-stream", os.path.join(G, "images", "chelsea.png"))
    ok(rc == 0 and so.strip() == cap, "blip2ctl caption: the golden greedy text (%r)" % so.strip())
    q = by["t5-tiny/chelsea.png/question"]
    ok(q["prompt"] == "Question: how many cats are there? Answer:", "the question case is an ask prompt")
    rc, so, se = ctl("ask", "--no-stream", os.path.join(G, "images", "chelsea.png"), "how many cats are there?")
    ok(rc == 0 and so.strip() == q["generate"]["greedy"]["text"].strip(),
       "blip2ctl ask: the golden answer (%r)" % so.strip())
    rc, so, se = ctl("--json", "ask", os.path.join(G, "images", "chelsea.png"), "how many cats are there?")
    try:
        j = json.loads(so)
    except ValueError:
        j = {}
    ok(rc == 0 and j.get("ids") == [q["generate"]["greedy"]["ids"]] and j.get("prompt_tokens") == len(q["prompt_input_ids"]),
       "blip2ctl --json ask: the golden ids, prompt_tokens = the prompt's T5 tokens (with </s>)")
    photos = os.path.join(TMP, "photos")
    os.mkdir(photos)
    for img in ("chelsea.png", "rocket.jpg"):
        os.symlink(os.path.abspath(os.path.join(G, "images", img)), os.path.join(photos, img))
    rc, so, se = ctl("caption", "-r", photos, "--no-progress")
    lines = [json.loads(x) for x in so.splitlines() if x.strip()]
    good = len(lines) == 2
    for o in lines:
        k = "t5-tiny/%s/caption" % os.path.basename(o["path"])
        good &= o.get("ids") == by[k]["generate"]["greedy"]["ids"]
    ok(rc == 0 and good, "blip2ctl caption -r: golden ids on each line")
    rc, so, se = ctl("features", "-r", photos, "--no-progress")
    lines = [json.loads(x) for x in so.splitlines() if x.strip()]
    good = len(lines) == 2
    for o in lines:
        g = read_st(os.path.join(G, "cases-t5", "t5-tiny__%s__caption.safetensors"
                                 % os.path.basename(o["path"]).replace(".", "_")))
        good &= maxdiff(o.get("image_pooler_output", []), g["vision_pooler_output"][2], whole=True) <= TOL
        good &= maxdiff(o.get("qformer_pooler_output", []),
                        g["qformer_last_hidden_state"][2][:g["qformer_last_hidden_state"][1][2]], whole=True) <= TOL
    ok(rc == 0 and good, "blip2ctl features -r: the golden pooled outputs of a T5 model")
    rc, so, se = ctl("features", os.path.join(G, "images", "chelsea.png"), "--output", "language_model_inputs")
    ok(rc == 0 and so.split() == ["language_model_inputs", "float32", "(1,", "7,", "44)"],
       "blip2ctl features IMAGE: (1, 7, 44), T5's d_model (%s)" % so.strip())
    rc, so, se = ctl("features", "--text", "a photo of")
    ok(rc == 2 and "unsupported" in se and "t5" in se, "blip2ctl features --text on T5: exit 2, unsupported (%s)" % first(se))
finally:
    ok(stop(proc, 20) == 0, "blip2d exits 0 on SIGTERM")
    finish()

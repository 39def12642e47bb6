#!/usr/bin/python3
# test_python.py - the Python package (python/, `import blip2`) against a real
# blip2d on the golden opt-tiny model: every golden generate call through
# Client.run gives the reference's ids and text exactly; caption/ask equal
# what blip2ctl prints for the same image; images by path, bytes, file object
# and descriptor agree; generate() streams pieces whose concatenation is a
# prefix of the result and whose token ids are the result's; closing a stream
# cancels it; features equal the raw protocol's tensors bit for bit; the
# exceptions carry the protocol's codes; the asyncio client (several requests
# in flight on one connection) gives the same answers.  TAP output.
import asyncio, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, ok, finish, start, stop, ctl, first, image, manifest, golden_requests

b2test.require_msgpack()
try:
    import numpy
except ImportError:
    numpy = None
sys.dont_write_bytecode = True
sys.path.insert(0, os.environ.get("PYTHON_SRCDIR", "python"))
import blip2

TMP = b2test.tmpdir("b2py.")
proc, sock = start(tmp=TMP, bail="blip2d did not start")
IMG = {n: os.path.join(G, "images", n) for n in ("chelsea.png", "rocket.jpg", "camera.png")}
raw = b2test.Client(sock, 60 * SCALE)
raw.call({"id": 1, "op": "hello", "v": 2, "client": "test_python.py"})
rid = [100]


def raw_generate(req):
    """The same request over the raw protocol (b2test): its terminal reply
    and its token events."""
    rid[0] += 1
    raw.send(dict(req, id=rid[0]))
    ev = raw.until_terminal(rid[0])
    return ev[-1], [e for e in ev if e["type"] == "token"]


def raw_features(req):
    rid[0] += 1
    return raw.call(dict(req, id=rid[0]))


try:
    c = blip2.Client(sock, timeout=120 * SCALE)
    ok(c.protocol == 2 and c.server.startswith("blip2d ") and c.max_image_bytes > 0,
       "Client connects, hello negotiates protocol 2 (%s, %s)" % (c.protocol, c.server))

    # ---- the golden generate calls: exact ids and text ----
    cases = [k for k in manifest()["cases"] if k["model"] == "opt-tiny" and k.get("image")]
    n_ok = n = 0
    for case, name, gen, req in golden_requests(cases, 1):
        kw = {k: v for k, v in req.items() if k not in ("id", "op", "image", "prompt")}
        r = c.run(req["image"], req.get("prompt"), **kw)
        n += 1
        good = r.ids == gen["ids"] and r.text == gen["text"]
        n_ok += good
        if not good:
            print("# %s %s: %r %r" % (case["id"], name, r.ids, r.text))
    ok(n > 0 and n_ok == n, "Client.run reproduces the golden ids and text of %d/%d generate calls" % (n_ok, n))

    # ---- caption and ask equal blip2ctl ----
    for name, path in IMG.items():
        rc, out, err = ctl(sock, "caption", path)
        mine = c.caption(path)
        ok(rc == 0 and mine == out.rstrip("\n") and mine,
           "caption(%s) equals blip2ctl caption (%r)" % (name, mine))
    rc, out, err = ctl(sock, "ask", IMG["rocket.jpg"], "what is in the sky?")
    mine = c.ask(IMG["rocket.jpg"], "what is in the sky?")
    ok(rc == 0 and mine == out.rstrip("\n"), "ask equals blip2ctl ask (%r)" % mine)
    rc, out, err = ctl(sock, "caption", "--max-new-tokens", "7", "--num-beams", "3", IMG["camera.png"])
    mine = c.caption(IMG["camera.png"], max_new_tokens=7, num_beams=3)
    ok(rc == 0 and mine == out.rstrip("\n"), "caption with num_beams 3, max_new_tokens 7 equals blip2ctl's (%r)" % mine)

    # ---- the image as path, bytes, file object, descriptor ----
    p = IMG["chelsea.png"]
    want = c.caption(p)
    fd = os.open(p, os.O_RDONLY)
    with open(p, "rb") as f:
        got = [c.caption(image("chelsea.png")), c.caption(bytearray(image("chelsea.png"))), c.caption(f),
               c.caption(fd)]
    os.close(fd)
    ok(got == [want] * 4, "an image by path, bytes, bytearray, file object and descriptor gives one caption")

    # ---- generate: streamed pieces ----
    s = c.generate(p, max_new_tokens=15)
    pieces = list(s)
    r = s.result
    exp, toks = raw_generate({"op": "generate", "image": image("chelsea.png"), "stream": True,
                              "max_new_tokens": 15})
    ok(len(pieces) > 1 and r.text.startswith("".join(pieces)) and r.text == exp["texts"][0],
       "generate streams %d pieces, their concatenation a prefix of the result, the raw protocol's text" % len(pieces))
    ok(r.ids == exp["ids"][0] and [t[1] for t in s.tokens] == r.ids[1:] == [t["token"] for t in toks],
       "the streamed token ids are the result's and the raw protocol's")
    ok(r.finish == "length" and r.prompt_tokens == exp["prompt_tokens"] and isinstance(r.timings["total_ms"], float),
       "the result carries finish, prompt_tokens and timings (%s, %s)" % (r.finish, r.prompt_tokens))

    s = c.generate(p, max_new_tokens=40)
    piece = next(s)
    s.close()
    ok(piece and s.result is not None and s.result.finish == "canceled" and len(s.result.ids) < 41,
       "closing a stream after its first piece cancels the request (finish %s, %d ids)" %
       (s.result and s.result.finish, s.result and len(s.result.ids)))
    ok(c.caption(p) == want, "the connection answers normally after the cancel")

    # a generate iterator left open while other calls run on the connection
    s = c.generate(IMG["rocket.jpg"], max_new_tokens=12)
    first_piece = next(s)
    mid = c.caption(p)
    rest = "".join(s)
    ok(mid == want and s.result.text.startswith(first_piece + rest),
       "calls interleave with an unfinished stream (replies routed by id)")

    # ---- sampling with a seed is reproducible ----
    a = c.run(p, do_sample=True, seed=42, top_k=20, temperature=0.9)
    b = c.run(p, do_sample=True, seed=42, top_k=20, temperature=0.9)
    exp, _ = raw_generate({"op": "generate", "image": image("chelsea.png"), "do_sample": True, "seed": 42,
                           "top_k": 20, "temperature": 0.9})
    ok(a.ids == b.ids == exp["ids"][0] and a.seed == 42, "sampling with seed 42 gives the raw protocol's ids twice")
    r = c.run(p, max_new_tokens=20, stop=r.text.split()[1])
    ok(r.finish == "stop", "stop strings are passed (finish %s)" % r.finish)

    # ---- features ----
    if numpy is None:
        ok(True, "# SKIP python3-numpy is not installed (features)")
    else:
        f = c.features(p, text="a photo of", outputs=["image_pooler_output", "language_model_inputs", "logits_last"])
        exp = raw_features({"op": "features", "image": image("chelsea.png"), "text": "a photo of",
                            "outputs": ["image_pooler_output", "language_model_inputs", "logits_last"]})
        same = sorted(f) == sorted(exp["tensors"])
        for k, t in exp["tensors"].items():
            dt, shape, arr = b2test.wire(t)
            a = f.get(k)
            same = same and a is not None and list(a.shape) == shape and \
                numpy.array_equal(a.ravel(), numpy.array(arr, dtype=a.dtype))
        ok(same, "features equal the raw protocol's tensors bit for bit (%s)" % ", ".join(sorted(f)))
        f2 = c.features(p, outputs=["image_pooler_output"])
        ok(f["input_ids"].dtype == numpy.int32 and f["image_pooler_output"].dtype == numpy.float32 and
           f2.cached and "total_ms" in f2.timings and
           numpy.array_equal(f2["image_pooler_output"], f["image_pooler_output"]),
           "features: dtypes int32/float32, .cached on a repeat, .timings")
        f = c.features(image("rocket.jpg"))
        ok(sorted(f) == ["image_last_hidden_state", "image_pooler_output", "language_model_inputs",
                         "qformer_last_hidden_state", "qformer_pooler_output"],
           "features of an image alone: the five image outputs")
        t = c.features(text="a photo of a cat")
        ok(sorted(t) == ["input_ids", "logits"] and t["logits"].shape[1] == t["input_ids"].shape[1],
           "features of a text alone: logits (1, L, V) and input_ids (1, L) %s" % (t["logits"].shape,))

    # ---- errors ----
    try:
        c.caption(b"not an image at all")
        ok(False, "undecodable bytes raise BadImageError")
    except blip2.BadImageError as e:
        ok(e.code == "bad_image" and isinstance(e, ValueError) and isinstance(e, blip2.ServerError),
           "undecodable bytes raise BadImageError (code bad_image, a ValueError): %s" % e)
    try:
        c.caption(p, num_beams=0)
        ok(False, "num_beams 0 raises OutOfRangeError")
    except blip2.OutOfRangeError as e:
        ok(e.code == "out_of_range" and e.field == "num_beams", "num_beams 0 raises OutOfRangeError, field num_beams")
    try:
        c.caption(p, temprature=0.5)
        ok(False, "a misspelt parameter raises TypeError")
    except TypeError as e:
        ok("temprature" in str(e), "a misspelt parameter raises TypeError locally: %s" % e)
    try:
        c.caption(os.path.join(TMP, "missing.png"))
        ok(False, "a missing file raises FileNotFoundError")
    except FileNotFoundError:
        ok(True, "a missing file raises FileNotFoundError")
    try:
        blip2.Client(os.path.join(TMP, "nobody.sock"))
        ok(False, "no daemon: ConnectError")
    except blip2.ConnectError as e:
        ok("nobody.sock" in e.message and "blip2d --model" in e.message and isinstance(e, ConnectionError),
           "no daemon: ConnectError naming the socket and how to start blip2d")
    try:
        c.run(p, prompt="x" * (c.max_prompt_bytes + 1))
        ok(False, "a prompt above the limit raises TooLargeError")
    except blip2.TooLargeError as e:
        ok(e.code == "too_large", "a prompt above max_prompt_bytes raises TooLargeError")
    ok(blip2.errors.from_reply({"type": "error", "code": "new_code", "message": "m"}).__class__ is blip2.InternalError,
       "an unknown error code becomes InternalError (code kept)")
    ok(set(blip2.errors.CODES) == {
        "frame_too_large", "bad_msgpack", "trailing_bytes", "not_map", "duplicate_key", "missing_field",
        "bad_type", "out_of_range", "bad_utf8", "unknown_field", "unknown_op", "too_large",
        "unsupported_version", "duplicate_id", "bad_fd", "bad_image", "unsupported", "busy",
        "shutting_down", "permission_denied", "no_memory", "internal"},
       "one exception class per error code of docs/protocol.md section 9")

    # a time limit that has passed before the reply: canceled, connection usable
    try:
        c.caption(p, timeout=1e-9)
        ok(False, "an expired time limit raises blip2.TimeoutError")
    except blip2.TimeoutError as e:
        ok(isinstance(e, TimeoutError), "an expired time limit raises blip2.TimeoutError (a TimeoutError)")
    ok(c.caption(p) == want, "the connection is usable after a time-out")

    st = c.status()
    ok(st["model"]["family"] == "opt" and st["requests_total"] > 10 and c.ping() >= 0,
       "status and ping (%d requests so far)" % st["requests_total"])
    c.close()

    # ---- asyncio ----
    async def async_checks():
        async with blip2.AsyncClient(sock, timeout=120 * SCALE) as a:
            names = ["chelsea.png", "rocket.jpg", "camera.png", "chelsea.png"]
            caps = await asyncio.gather(*(a.caption(IMG[n]) for n in names))
            with blip2.Client(sock) as sc:
                serial = [sc.caption(IMG[n]) for n in names]
            ok(caps == serial, "AsyncClient: 4 captions in flight on one connection equal the serial ones")
            s = a.generate(IMG["chelsea.png"], max_new_tokens=15)
            pieces = [x async for x in s]
            ok(pieces and s.result.text.startswith("".join(pieces)) and s.result.ids == r15.ids,
               "AsyncClient.generate streams the same tokens (%d pieces)" % len(pieces))
            ans = await a.ask(IMG["rocket.jpg"], "what is in the sky?")
            ok(ans == ask_want, "AsyncClient.ask equals blip2ctl ask")
            if numpy is not None:
                f = await a.features(IMG["chelsea.png"], outputs=["qformer_pooler_output"])
                ok(numpy.array_equal(f["qformer_pooler_output"], f_sync["qformer_pooler_output"]),
                   "AsyncClient.features equals Client.features")
            try:
                await a.caption(b"garbage")
                ok(False, "AsyncClient: BadImageError")
            except blip2.BadImageError:
                ok(True, "AsyncClient: undecodable bytes raise BadImageError")
            s = a.generate(IMG["chelsea.png"], max_new_tokens=40)
            await s.__anext__()
            await s.aclose()
            ok(s.result.finish == "canceled", "AsyncStream.aclose cancels the request")
            ok(await a.caption(IMG["chelsea.png"]) == want, "the async connection works after the cancel")
        try:
            await blip2.AsyncClient.connect(os.path.join(TMP, "nobody.sock"))
            ok(False, "AsyncClient: ConnectError")
        except blip2.ConnectError:
            ok(True, "AsyncClient: no daemon raises ConnectError")

    with blip2.Client(sock) as c2:
        r15 = c2.run(IMG["chelsea.png"], max_new_tokens=15)
        ask_want = c2.ask(IMG["rocket.jpg"], "what is in the sky?")
        f_sync = c2.features(IMG["chelsea.png"], outputs=["qformer_pooler_output"]) if numpy is not None else None
    asyncio.run(async_checks())
finally:
    raw.close()
    ok(stop(proc) == 0, "blip2d exits 0 on SIGTERM")
finish()

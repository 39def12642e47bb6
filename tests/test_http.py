#!/usr/bin/python3
# test_http.py - blip2d --http (docs/http.md) on the golden opt-tiny model,
# with curl as the client: /health, /v1/models, /v1/caption (the text and
# ids equal blip2ctl's and the golden ones; ask and beam search too),
# /v1/chat/completions (caption, question, multi-turn equal to blip2ctl
# ask/chat; SSE chunks that add up to the same text, then [DONE]), /metrics
# parsed by Python's prometheus_client (Debian python3-prometheus-client);
# errors in OpenAI's shape with their status (400, 401, 404, 405, 413, 429
# with Retry-After); hostile input: bad JSON, bad base64, image URLs,
# oversized and truncated bodies, huge headers, slow headers, 500 idle
# connections - while a socket client keeps getting its exact captions; a
# client that hangs up mid-stream cancels its request; the hard stop after
# SIGTERM answers requests still being prepared (503 shutting_down).  TAP
# output.
import http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, base64

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, ok, finish, start, stop, ctl, manifest

if not shutil.which("curl"):
    print("1..0 # SKIP curl is not installed")
    sys.exit(0)
b2test.require_msgpack()
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None

TMP = tempfile.mkdtemp(prefix="b2http.")
IMG = {n: os.path.join(G, "images", n) for n in ("chelsea.png", "rocket.jpg", "camera.png")}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


PORT = free_port()
BASE = "http://127.0.0.1:%d" % PORT
proc, sock = start("--http", "127.0.0.1:%d" % PORT, "--http-max-body", "1048576", "--http-timeout", "3",
                   "--http-max-connections", "16", tmp=TMP, bail="blip2d did not start")


def curl(*args, data=None):
    """curl -s with args; returns (HTTP status, headers dict, body bytes)."""
    hdr = os.path.join(TMP, "h.txt")
    p = subprocess.run(["curl", "-s", "-D", hdr, "-o", "-", "--max-time", str(int(120 * SCALE))] + list(args),
                       capture_output=True, input=data)
    status, headers = 0, {}
    if os.path.exists(hdr):
        for line in open(hdr, encoding="latin-1").read().splitlines():
            if line.startswith("HTTP/"):
                status = int(line.split()[1])
                headers = {}
            elif ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        os.unlink(hdr)
    return status, headers, p.stdout


def jcurl(*args, data=None):
    st, h, body = curl(*args, data=data)
    try:
        return st, h, json.loads(body)
    except ValueError:
        return st, h, None


def data_url(path):
    mime = "image/png" if path.endswith(".png") else "image/jpeg"
    return "data:%s;base64,%s" % (mime, base64.b64encode(open(path, "rb").read()).decode())


def chat(messages, **kw):
    body = dict(model="blip2", messages=messages, **kw)
    return jcurl("-H", "Content-Type: application/json", "--data-binary", "@-", BASE + "/v1/chat/completions",
                 data=json.dumps(body).encode())


def user_image(path, text=None):
    c = [{"type": "image_url", "image_url": {"url": data_url(path)}}]
    if text:
        c.append({"type": "text", "text": text})
    return {"role": "user", "content": c}


def sse(messages, **kw):
    """A streamed chat completion read with curl -N: (status, [event dicts], saw [DONE])."""
    body = dict(model="blip2", messages=messages, stream=True, **kw)
    st, h, raw = curl("-N", "-H", "Content-Type: application/json", "--data-binary", "@-",
                      BASE + "/v1/chat/completions", data=json.dumps(body).encode())
    events, done = [], False
    for block in raw.decode().split("\n\n"):
        if not block.startswith("data: "):
            continue
        d = block[6:]
        if d == "[DONE]":
            done = True
        else:
            events.append(json.loads(d))
    return st, h, events, done


def socket_caption(path):
    rc, out, err = ctl(sock, "caption", path)
    return out.rstrip("\n") if rc == 0 else "error: " + err


try:
    want = {n: socket_caption(p) for n, p in IMG.items()}
    gold = [k for k in manifest()["cases"] if k["model"] == "opt-tiny" and k.get("image") == "chelsea.png"
            and k["prompt"] is None][0]["generate"]["greedy"]

    # ---- health, models ----
    st, h, j = jcurl(BASE + "/health")
    ok(st == 200 and j and j["status"] == "ok" and j["model"] == "opt-tiny", "GET /health: 200 ok (%s)" % j)
    st, h, j = jcurl(BASE + "/v1/models")
    ok(st == 200 and j["object"] == "list" and j["data"][0]["id"] == "opt-tiny" and j["data"][0]["object"] == "model",
       "GET /v1/models lists the model")

    # ---- /v1/caption ----
    for n, p in IMG.items():
        ctype = "image/png" if p.endswith(".png") else "image/jpeg"
        st, h, j = jcurl("-H", "Content-Type: " + ctype, "--data-binary", "@" + p, BASE + "/v1/caption")
        ok(st == 200 and j["text"] == want[n], "POST /v1/caption %s equals blip2ctl caption (%r)" % (n, j and j["text"]))
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + IMG["chelsea.png"],
                     BASE + "/v1/caption")
    ok(j["ids"][0] == gold["ids"] and j["texts"][0] == gold["text"] and j["finish"] == ["length"],
       "/v1/caption gives the golden ids and text of transformers' generate()")
    rc, out, _ = ctl(sock, "ask", IMG["rocket.jpg"], "what is in the sky?")
    st, h, j = jcurl("-H", "Content-Type: image/jpeg", "--data-binary", "@" + IMG["rocket.jpg"],
                     BASE + "/v1/caption?question=what%20is%20in%20the%20sky%3F")
    ok(st == 200 and j["text"] == out.rstrip("\n"), "/v1/caption?question= equals blip2ctl ask (%r)" % j["text"])
    rc, out, _ = ctl(sock, "caption", "--num-beams", "3", "--max-new-tokens", "7", IMG["camera.png"])
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + IMG["camera.png"],
                     BASE + "/v1/caption?num_beams=3&max_new_tokens=7")
    ok(st == 200 and j["text"] == out.rstrip("\n"), "/v1/caption with num_beams=3&max_new_tokens=7 equals blip2ctl's")

    # ---- chat completions ----
    st, h, j = chat([user_image(IMG["chelsea.png"])])
    ok(st == 200 and j["object"] == "chat.completion" and j["choices"][0]["message"]["content"] == want["chelsea.png"]
       and j["usage"]["completion_tokens"] == 20 and j["choices"][0]["finish_reason"] == "length",
       "chat: an image alone is the caption blip2ctl prints, usage 20 tokens")
    rc, out, _ = ctl(sock, "ask", IMG["rocket.jpg"], "what is in the sky?")
    st, h, j = chat([user_image(IMG["rocket.jpg"], "what is in the sky?")], temperature=0)
    ok(st == 200 and j["choices"][0]["message"]["content"] == out.rstrip("\n"),
       "chat: image + question (temperature 0) equals blip2ctl ask")
    rc, out, _ = ctl(sock, "chat", IMG["rocket.jpg"], stdin=b"what is this?\nwhere is it?\n")
    answers = out.strip("\n").split("\n")
    st, h, j = chat([user_image(IMG["rocket.jpg"], "what is this?"), {"role": "assistant", "content": answers[0]},
                     {"role": "user", "content": "where is it?"}])
    ok(rc == 0 and len(answers) == 2 and st == 200 and j["choices"][0]["message"]["content"] == answers[1],
       "chat: a second turn equals blip2ctl chat's second answer (%r)" % (answers[1:] or ""))
    st, h, j = chat([user_image(IMG["camera.png"])], n=3, max_tokens=7)
    rc, out, _ = ctl(sock, "caption", "--json", "--num-beams", "3", "--num-return-sequences", "3",
                     "--max-new-tokens", "7", IMG["camera.png"])
    texts = [t.strip() for t in json.loads(out)["texts"]] if rc == 0 else None
    ok(st == 200 and [c["message"]["content"] for c in j["choices"]] == texts,
       "chat n=3 (greedy): the 3 best beams, as blip2ctl --num-beams 3 --num-return-sequences 3")
    st, h, j1 = chat([user_image(IMG["chelsea.png"])], temperature=0.8, seed=7, max_completion_tokens=10)
    st2, h, j2 = chat([user_image(IMG["chelsea.png"])], temperature=0.8, seed=7, max_completion_tokens=10)
    ok(st == st2 == 200 and j1["choices"][0]["message"] == j2["choices"][0]["message"] and
       j1["usage"]["completion_tokens"] == 10, "chat: sampling with a seed is reproducible")

    # ---- SSE ----
    st, h, ev, done = sse([user_image(IMG["chelsea.png"])], stream_options={"include_usage": True})
    text = "".join(c["delta"].get("content", "") for e in ev for c in e["choices"])
    fins = [c["finish_reason"] for e in ev for c in e["choices"] if c["finish_reason"]]
    ok(st == 200 and h.get("content-type") == "text/event-stream" and done and text == want["chelsea.png"] and
       len(ev) > 5 and ev[0]["choices"][0]["delta"].get("role") == "assistant" and fins == ["length"] and
       ev[-1]["usage"]["completion_tokens"] == 20,
       "SSE: %d chunks add up to the caption, role first, finish, usage, [DONE]" % len(ev))
    st, h, ev, done = sse([user_image(IMG["camera.png"])], n=2, max_tokens=6)
    st2, h, j = chat([user_image(IMG["camera.png"])], n=2, max_tokens=6)
    by = {}
    for e in ev:
        for c in e["choices"]:
            by[c["index"]] = by.get(c["index"], "") + c["delta"].get("content", "")
    ok(done and [by.get(0), by.get(1)] == [c["message"]["content"] for c in j["choices"]],
       "SSE with n=2 (beams): each choice's text equals the non-streamed one")

    # ---- errors ----
    def err(st, j, status, code):
        return st == status and j and j["error"]["code"] == code and j["error"]["message"]

    st, h, j = jcurl("-H", "Content-Type: application/json", "--data-binary", "{\"messages\": [", BASE + "/v1/chat/completions")
    ok(err(st, j, 400, "bad_json"), "bad JSON: 400 bad_json (%s)" % (j and j["error"]["message"]))
    st, h, j = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}}]}])
    ok(err(st, j, 400, "unsupported_url") and "data:" in j["error"]["message"],
       "an https:// image: 400 unsupported_url, the message says to send a data: URL")
    st, h, j = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])
    ok(err(st, j, 400, "unsupported_url"), "a file: URL: 400 unsupported_url")
    st, h, j = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!!"}}]}])
    ok(err(st, j, 400, "bad_base64"), "bad base64: 400 bad_base64")
    st, h, j = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                    + base64.b64encode(b"not an image").decode()}}]}])
    ok(err(st, j, 400, "bad_image") and j["error"]["param"] == "messages", "an undecodable image: 400 bad_image (the daemon's)")
    st, h, j = chat([user_image(IMG["chelsea.png"])], max_tokens=0)
    ok(err(st, j, 400, "out_of_range") and j["error"]["param"] == "max_tokens", "max_tokens 0: 400, param max_tokens")
    big = os.path.join(TMP, "big.bin")
    with open(big, "wb") as f:
        f.write(b"\xff" * 1100000)
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + big, BASE + "/v1/caption")
    ok(err(st, j, 413, "body_too_large"), "a body above --http-max-body (Content-Length): 413")
    st, h, j = jcurl("-H", "Content-Type: image/png", "-H", "Transfer-Encoding: chunked", "--data-binary", "@" + big,
                     BASE + "/v1/caption")
    ok(err(st, j, 413, "body_too_large"), "a chunked body growing above --http-max-body: 413")
    st, h, j = jcurl(BASE + "/v1/nothing")
    ok(err(st, j, 404, "not_found"), "an unknown path: 404")
    st, h, j = jcurl(BASE + "/v1/chat/completions")
    ok(err(st, j, 405, "method_not_allowed"), "GET /v1/chat/completions: 405")
    st, h, body = curl("-H", "X-Big: " + "a" * 40000, BASE + "/health")
    ok(st in (413, 431) or st == 0, "40 KB of headers: refused (%d)" % st)

    # truncated body, then slow headers: the server closes them
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n0123456789")
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30 * SCALE)
    try:
        got = s.recv(4096)
    except OSError:
        got = b""
    s.close()
    ok(not got.startswith(b"HTTP/1.1 200"), "a truncated body gets no answer of 200 (%r)" % got[:40])
    s = socket.create_connection(("127.0.0.1", PORT))
    s.settimeout(30 * SCALE)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    closed = False
    t_end = time.monotonic() + 30 * SCALE
    try:
        while time.monotonic() < t_end:  # one header byte a second: never complete
            s.sendall(b"X")
            time.sleep(1)
    except OSError:
        closed = True
    s.close()
    ok(closed, "slow headers (a byte a second) are cut off by --http-timeout")

    # 500 idle connections against --http-max-connections 16; socket clients do not notice
    idle = []
    for _ in range(500):
        try:
            idle.append(socket.create_connection(("127.0.0.1", PORT)))
        except OSError:
            break
    caps = {n: socket_caption(p) for n, p in IMG.items()}
    ok(caps == want, "500 idle HTTP connections: a socket client's captions are unchanged")
    for c in idle:
        c.close()
    ok_health = False
    for _ in range(int(50 * SCALE)):
        st, h, j = jcurl(BASE + "/health")
        if st == 200:
            ok_health = True
            break
        time.sleep(0.2)
    ok(ok_health, "after the idle connections close, /health answers again")

    # a client that hangs up mid-stream cancels its request
    st0 = b2test.status(sock)
    body = json.dumps(dict(model="blip2", messages=[user_image(IMG["chelsea.png"])], stream=True, max_tokens=2000,
                           min_tokens=2000)).encode()
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    s.settimeout(60 * SCALE)
    first = s.recv(4096)
    s.close()
    held, st1 = b2test.wait_status(sock, lambda x: x["active"] == 0 and x["queue_depth"] == 0, 30)
    time.sleep(0.5)
    st2 = b2test.status(sock)
    made = st2["engine"]["decode_tokens"] - st0["engine"]["decode_tokens"]
    ok(first.startswith(b"HTTP/1.1 200") and held and made < 1900,
       "hanging up mid-stream cancels the request (%d of 2000 tokens decoded)" % made)

    # ---- metrics ----
    st, h, raw = curl(BASE + "/metrics")
    if text_string_to_metric_families is None:
        ok(st == 200 and b"blip2d_http_requests_total" in raw, "# SKIP python3-prometheus-client is not installed")
    else:
        fams = {f.name: f for f in text_string_to_metric_families(raw.decode())}
        samples = {}
        for f in fams.values():
            for s_ in f.samples:
                samples[(s_.name, tuple(sorted(s_.labels.items())))] = s_.value
        chat_ok = samples.get(("blip2d_http_requests_total",
                               (("endpoint", "/v1/chat/completions"), ("status", "200"))), 0)
        ok(st == 200 and h.get("content-type", "").startswith("text/plain; version=0.0.4") and chat_ok >= 8,
           "GET /metrics parses as Prometheus text; chat 200s counted (%d)" % chat_ok)
        ok(samples.get(("blip2d_http_errors_total", (("code", "bad_json"),))) == 1 and
           samples.get(("blip2d_http_errors_total", (("code", "body_too_large"),))) == 2,
           "errors by code: bad_json 1, body_too_large 2")
        ttft = fams.get("blip2d_http_time_to_first_token_seconds")
        gap = fams.get("blip2d_http_token_latency_seconds")
        ok(ttft and ttft.type == "histogram" and
           samples.get(("blip2d_http_time_to_first_token_seconds_count", ())) >= 8 and
           gap and samples.get(("blip2d_http_token_latency_seconds_count", ())) > 100,
           "TTFT and per-token latency histograms")
        ok(all(k in fams for k in ("blip2d_queue_depth", "blip2d_http_in_flight", "blip2d_cache_hits",
                                   "blip2d_http_generated_tokens", "blip2d_cache_bytes", "blip2d_resident_memory_bytes")),
           "queue depth, in-flight, cache hits, tokens, memory: %s" % ", ".join(sorted(fams))[:300])
        ok(samples.get(("blip2d_cache_hits_total", ())) > 0, "cache hits counted (%s)" % samples.get(("blip2d_cache_hits_total", ())))
        kinds = sorted(dict(l)["kind"] for n, l in samples if n == "blip2d_memory_used_bytes")
        ok(samples.get(("blip2d_memory_budget_bytes", ()), 0) > 0 and
           kinds == ["decode", "http", "input", "jobs", "output"],
           "the memory budget and its use by kind (%s, %s)" % (samples.get(("blip2d_memory_budget_bytes", ())), kinds))
finally:
    ok(stop(proc) == 0, "blip2d exits 0 on SIGTERM")

# ---- a token, and a full queue (a second daemon) ----
tok = os.path.join(TMP, "token")
with open(tok, "w") as f:
    f.write("s3cret-token-0123456789\n")
PORT = free_port()
BASE = "http://127.0.0.1:%d" % PORT
proc, sock = start("--http", "127.0.0.1:%d" % PORT, "--http-token-file", tok, "--max-queue", "0", tmp=TMP,
                   bail="blip2d did not start")
try:
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + IMG["chelsea.png"], BASE + "/v1/caption")
    ok(st == 401 and j["error"]["code"] == "invalid_api_key" and "bearer" in h.get("www-authenticate", "").lower(),
       "with --http-token-file, no token: 401 with WWW-Authenticate")
    st, h, j = jcurl("-H", "Authorization: Bearer wrong-token-0123456789", BASE + "/metrics")
    ok(st == 401, "a wrong token: 401")
    st, h, j = jcurl(BASE + "/health")
    ok(st == 200, "/health needs no token")
    st, h, j = jcurl("-H", "Authorization: Bearer s3cret-token-0123456789", "-H", "Content-Type: image/png",
                     "--data-binary", "@" + IMG["chelsea.png"], BASE + "/v1/caption")
    ok(st == 429 and j["error"]["code"] == "busy" and h.get("retry-after") == "1",
       "the right token, a full queue (--max-queue 0): 429 busy with Retry-After (%d)" % st)
finally:
    ok(stop(proc) == 0, "blip2d exits 0 on SIGTERM")

# ---- request bodies are charged to the daemon's memory budget ----
PORT = free_port()
BASE = "http://127.0.0.1:%d" % PORT
proc, sock = start("--http", "127.0.0.1:%d" % PORT, "--max-memory", str(8 << 20), tmp=TMP,
                   bail="blip2d did not start")
try:
    big = os.path.join(TMP, "big10.bin")
    with open(big, "wb") as f:
        f.write(b"\xff" * (10 << 20))
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + big, BASE + "/v1/caption")
    ok(st == 429 and j and j["error"]["code"] == "busy" and h.get("retry-after") == "1",
       "a 10 MiB body with --max-memory 8 MiB: 429 busy with Retry-After, not held (%d)" % st)
    st, h, j = jcurl("-H", "Content-Type: image/png", "--data-binary", "@" + IMG["camera.png"], BASE + "/v1/caption")
    ok(st == 200 and j and j.get("text") == socket_caption(IMG["camera.png"]),
       "then a small image is captioned: the refused body's charge was released (%d)" % st)
finally:
    ok(stop(proc) == 0, "blip2d exits 0 on SIGTERM")

# ---- the hard stop answers the requests still being prepared ----
# BLIP2D_TEST_PREP_DELAY_MS keeps each preparation past the stop 5 s after
# the deadline (--shutdown-timeout 0); one preparation thread: one request
# on it, one waiting.  Both must read 503 shutting_down, not a connection
# closed without a response (as before: the front end stopped first).
PORT = free_port()
env = dict(os.environ, BLIP2D_TEST_PREP_DELAY_MS="8000", UV_THREADPOOL_SIZE="1")
proc, sock = start("--http", "127.0.0.1:%d" % PORT, "--shutdown-timeout", "0", tmp=TMP, env=env,
                   log="daemon-hardstop.log", bail="blip2d did not start")
answers = {}


def post_caption(i):
    try:
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60 * SCALE)
        c.request("POST", "/v1/caption", body=open(IMG["chelsea.png"], "rb").read(),
                  headers={"Content-Type": "image/png"})
        r = c.getresponse()
        body = r.read()
        answers[i] = (r.status, json.loads(body)["error"]["code"] if r.status >= 400 else body[:80])
    except Exception as e:  # noqa: BLE001 - any failure to answer is the finding
        answers[i] = ("no answer", type(e).__name__)


posts = [threading.Thread(target=post_caption, args=(i,)) for i in (1, 2)]
for t in posts:
    t.start()
b2test.wait_status(sock, lambda st: st["queue_depth"] >= 2, 10)
proc.send_signal(signal.SIGTERM)
for t in posts:
    t.join()
try:
    rc = proc.wait(30 * SCALE)
except subprocess.TimeoutExpired:
    proc.kill()
    rc = proc.wait()
if not ok(rc == 0 and answers == {1: (503, "shutting_down"), 2: (503, "shutting_down")},
          "the hard stop: HTTP requests being prepared, or waiting for it, get 503 shutting_down (%r), exit %s"
          % (answers, rc)):
    b2test.show_log(proc)

p = subprocess.run([b2test.BLIP2D, "--model", os.path.join(G, "opt-tiny"), "--socket", os.path.join(TMP, "x.sock"),
                    "--http", "0.0.0.0:%d" % free_port(), "-q"], capture_output=True, timeout=60 * SCALE)
ok(p.returncode != 0 and b"--http-token-file" in p.stderr,
   "a non-loopback --http without a token is refused at start (%s)" % b2test.first(p.stderr.decode()))
shutil.rmtree(TMP, ignore_errors=True)
finish()

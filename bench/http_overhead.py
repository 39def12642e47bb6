#!/usr/bin/python3
# http_overhead.py - what HTTP costs over the socket, in the same run:
# per-request latency of a caption over the protocol socket against
# POST /v1/caption and POST /v1/chat/completions (non-streamed), and the
# time to the first token of a streamed request (socket `token` event
# against the first SSE content chunk).  Requests alternate between the
# paths, one at a time, on an image whose features are cached (so the
# vision encoder does not drown the difference); medians and 90th
# percentiles over ROUNDS rounds.
#
#   /usr/bin/python3 bench/http_overhead.py SOCKET HTTP_BASE [ROUNDS] [IMAGE]
#
# Against a running blip2d with --http, e.g.
#   daemon/blip2d --model tests/golden/opt-tiny --socket /tmp/b.sock --http 127.0.0.1:8099 &
#   /usr/bin/python3 bench/http_overhead.py /tmp/b.sock http://127.0.0.1:8099 200
# With the tiny model the decode is ~1 ms a token, so the differences are the
# front ends' own costs; with a real model they vanish in the decode time.
import base64, http.client, json, os, statistics, sys, time, urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from b2test import Client  # noqa: E402

sock = sys.argv[1]
base = urllib.parse.urlparse(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 100
path = sys.argv[4] if len(sys.argv) > 4 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                           "golden", "images", "chelsea.png")
img = open(path, "rb").read()
mime = "image/png" if path.endswith(".png") else "image/jpeg"
chat_body = json.dumps({"model": "blip2", "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:%s;base64,%s" % (mime, base64.b64encode(img).decode())}}]}]})
stream_body = json.dumps(dict(json.loads(chat_body), stream=True))

c = Client(sock, timeout=None)
rid = [0]


def sock_caption(stream):
    """(total s, first-token s or None) of one generate over the socket."""
    rid[0] += 1
    t0 = time.perf_counter()
    c.send({"id": rid[0], "op": "generate", "image": img, "stream": stream})
    first = None
    while True:
        r = c.recv()
        if r.get("id") != rid[0]:
            continue
        if r["type"] == "token" and first is None and r.get("text"):
            first = time.perf_counter() - t0
        if r["type"] in ("done", "error"):
            assert r["type"] == "done", r
            return time.perf_counter() - t0, first


def http_post(url, body, ctype, stream=False):
    """(total s, first-content s or None) of one POST on a new connection (as most clients do)."""
    t0 = time.perf_counter()
    h = http.client.HTTPConnection(base.hostname, base.port or 80)
    h.request("POST", url, body=body, headers={"Content-Type": ctype})
    r = h.getresponse()
    assert r.status == 200, (r.status, r.read()[:300])
    first = None
    if stream:
        buf = b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf += chunk
            if first is None and b'"content":"' in buf.replace(b'"content":""', b""):
                first = time.perf_counter() - t0
    else:
        r.read()
    h.close()
    return time.perf_counter() - t0, first


paths = {
    "socket generate": lambda: sock_caption(False),
    "HTTP /v1/caption": lambda: http_post("/v1/caption", img, mime),
    "HTTP chat (JSON)": lambda: http_post("/v1/chat/completions", chat_body, "application/json"),
    "socket stream (TTFT)": lambda: sock_caption(True),
    "HTTP chat SSE (TTFT)": lambda: http_post("/v1/chat/completions", stream_body, "application/json", True),
}
for f in paths.values():  # warm the feature cache and the code paths
    f()
res = {k: ([], []) for k in paths}
for _ in range(rounds):
    for k, f in paths.items():
        total, first = f()
        res[k][0].append(total * 1000)
        if first is not None:
            res[k][1].append(first * 1000)


def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]


print("%d rounds, image %s (%d bytes), one request at a time, times in ms" % (rounds, os.path.basename(path), len(img)))
print("%-22s %9s %9s %11s %11s" % ("path", "median", "p90", "TTFT med", "TTFT p90"))
for k, (tot, fst) in res.items():
    print("%-22s %9.2f %9.2f %11s %11s" % (k, statistics.median(tot), q(tot, 0.9),
                                          "%.2f" % statistics.median(fst) if fst else "-",
                                          "%.2f" % q(fst, 0.9) if fst else "-"))
sm = statistics.median(res["socket generate"][0])
print("HTTP overhead per request (median): /v1/caption %+.2f ms, chat JSON %+.2f ms; SSE TTFT %+.2f ms" % (
    statistics.median(res["HTTP /v1/caption"][0]) - sm, statistics.median(res["HTTP chat (JSON)"][0]) - sm,
    statistics.median(res["HTTP chat SSE (TTFT)"][1]) - statistics.median(res["socket stream (TTFT)"][1])))

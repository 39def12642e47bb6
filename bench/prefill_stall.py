#!/usr/bin/env python3
# prefill_stall.py - how long a streaming request waits for its next token
# while another request's prefill runs (blip2d --prefill-chunk).
#
#   python3 bench/prefill_stall.py SOCKET [PROMPT]
#
# Against a running blip2d: warms the image-feature cache with
# tests/golden/images/chelsea.png (so the joiner below needs no vision
# encoder), streams 30 tokens, and 2 s in sends a second request on the same
# image with a long prompt.  Prints the streaming request's median and
# largest gap between tokens and the joiner's time to done.  Compare two
# daemons, e.g. --prefill-chunk 0 and the default.
import os, sys, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from b2test import Client, image  # noqa: E402

sock = sys.argv[1]
prompt = sys.argv[2] if len(sys.argv) > 2 else \
    "Question: what is the animal in this picture doing, and where is it lying? Answer:"
img = image("chelsea.png")
c = Client(sock, timeout=None)
c.send({"id": 1, "op": "generate", "image": img, "max_new_tokens": 1})
c.until_terminal(1)
c.send({"id": 2, "op": "generate", "image": img, "stream": True, "max_new_tokens": 30})
joined = {}


def joiner():
    time.sleep(2.0)
    c2 = Client(sock, timeout=None)
    t0 = time.monotonic()
    c2.send({"id": 3, "op": "generate", "image": img, "prompt": prompt, "max_new_tokens": 3})
    c2.until_terminal(3)
    joined["s"] = time.monotonic() - t0


th = threading.Thread(target=joiner)
th.start()
times = []
while True:
    r = c.recv()
    if r["type"] == "token":
        times.append(time.monotonic())
    if r["type"] in ("done", "error"):
        break
th.join()
gaps = sorted(b - a for a, b in zip(times, times[1:]))
print("streaming request: %d tokens, median gap %.3f s, largest gap %.3f s; joiner done in %.2f s"
      % (len(times), gaps[len(gaps) // 2], gaps[-1], joined.get("s", float("nan"))))

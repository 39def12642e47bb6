#!/usr/bin/python3
# test_http_node.py - blip2d --http with real clients nobody here wrote: the
# official `openai` npm package (non-streamed and streamed chat completions
# with an image, models, an error) and the page at GET / in headless
# Chromium driven by playwright-core; every text must equal what blip2ctl
# prints for the same image (greedy decoding is deterministic).  The npm
# packages are pinned by tests/http/package-lock.json and installed by
# scripts/install-deps.sh (npm ci).  Skips (TAP) only when node, the
# packages or chromium are absent.  TAP output.
import json, os, shutil, socket, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, SCALE, ok, finish, start, stop, ctl

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http")
NODE = shutil.which("node")
if not NODE:
    print("1..0 # SKIP node is not installed")
    sys.exit(0)
if not os.path.isdir(os.path.join(HERE, "node_modules", "openai")):
    print("1..0 # SKIP the npm packages are not installed (scripts/install-deps.sh: npm ci in tests/http)")
    sys.exit(0)
b2test.require_msgpack()
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

TMP = tempfile.mkdtemp(prefix="b2node.")
s = socket.socket()
s.bind(("127.0.0.1", 0))
PORT = s.getsockname()[1]
s.close()
BASE = "http://127.0.0.1:%d" % PORT
proc, sock = start("--http", "127.0.0.1:%d" % PORT, tmp=TMP, bail="blip2d did not start")
Q = "what is in the picture?"


def node(script, *args):
    p = subprocess.run([NODE, os.path.join(HERE, script), BASE] + list(args), capture_output=True,
                       timeout=600 * SCALE, cwd=HERE)
    try:
        return json.loads(p.stdout.decode().strip().splitlines()[-1]), p.stderr.decode()
    except (ValueError, IndexError):
        return None, (p.stdout + p.stderr).decode()[-2000:]


try:
    for name in ("chelsea.png", "rocket.jpg"):
        img = os.path.join(G, "images", name)
        rc, cap, _ = ctl(sock, "caption", img)
        rc2, ans, _ = ctl(sock, "ask", img, Q)
        cap, ans = cap.rstrip("\n"), ans.rstrip("\n")
        r, err = node("openai_chat.mjs", img, Q)
        if not ok(r is not None, "openai npm package ran against %s" % name):
            print("# " + err.replace("\n", "\n# "))
            continue
        ok(r["caption"] == cap and r["object"] == "chat.completion" and r["usage"]["completion_tokens"] == 20,
           "openai: chat.completions.create with the image equals blip2ctl caption (%r)" % r["caption"])
        ok(r["stream"] == cap and r["chunks"] > 5 and r["stream_usage"]["total_tokens"] == r["usage"]["total_tokens"]
           and r["stream_finish"] == r["finish"],
           "openai: the streamed completion (%d chunks) adds up to the same caption, usage and finish" % r["chunks"])
        ok(r["answer"] == ans and r["answer_stream"] == ans,
           "openai: a question, streamed and not, equals blip2ctl ask (%r)" % r["answer"])
        ok(r["models"] == ["opt-tiny"], "openai: models.list()")
        e = r["error"] or {}
        ok(e.get("status") == 400 and e.get("is_bad_request") and e.get("code") == "unsupported_url",
           "openai: an https image URL raises BadRequestError 400 unsupported_url")

    if not os.access(CHROMIUM, os.X_OK) or not os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")):
        ok(True, "# SKIP chromium or playwright-core is not installed")
    else:
        img = os.path.join(G, "images", "chelsea.png")
        rc, cap, _ = ctl(sock, "caption", img)
        rc2, ans, _ = ctl(sock, "ask", img, Q)
        r, err = node("page.mjs", img, Q)
        if not ok(r is not None, "the page ran in headless Chromium (playwright-core)"):
            print("# " + err.replace("\n", "\n# "))
        else:
            ok(r["status"] == 200 and "default-src 'none'" in r["csp"] and "script-src 'self'" in r["csp"],
               "GET / with a strict Content-Security-Policy")
            c0 = r["completions"][0] if r["completions"] else {}
            ok(r["caption"] == cap.rstrip("\n") and c0.get("type") == "text/event-stream" and r["pieces"] > 5,
               "the page's caption, streamed (text/event-stream, %s pieces), equals blip2ctl caption: %r"
               % (r["pieces"], r["caption"]))
            ok(r["answer"] == ans.rstrip("\n"), "a follow-up question on the page equals blip2ctl ask (%r)" % r["answer"])
            ok(not r["external"] and r["errors_before_probe"] == 0 and not r["error_text"],
               "no request left the daemon, no script errors (%s %s)" % (r["external"][:3], r["errors"][:3]))
            ok(r["inline_ran"] is False and any("Content Security Policy" in e for e in r["errors"]),
               "the policy refuses an inline script (and says so)")
finally:
    ok(stop(proc) == 0, "blip2d exits 0 on SIGTERM")
shutil.rmtree(TMP, ignore_errors=True)
finish()

#!/usr/bin/env python3
"""test_layers.py - the layering rule, checked from the sources and the objects.

1. Includes (from the sources): every `#include "x.h"` of the product code
   resolves to a header in a folder its own folder may use.  The rule:
     model/base < model/compute < model/formats < model/text, model/image
       < model/nn < model/ (the top: blip2.h, loading, generation, features)
     libipc/ uses nothing of ours; client/ uses libipc/;
     common/ (what the command line programs share) uses nothing of ours;
     ctl/ (blip2ctl) uses client/'s public header only, and common/;
     queue/ (the Redis job queue, blip2-queue) uses libipc/ and common/;
     daemon/ uses libipc/, queue/ and the model's public header blip2.h only.
   The build gives each of these its own include path, so a wrong include
   already fails to compile; this check also catches a header that is found
   by the quoted-include rule (the including file's own folder).
2. No cycles between files (from the built objects): file A uses file B when
   A's object references a function or variable B's object defines (nm).
   Two files that use each other, or any longer circle, fail.
TAP output.  Run from the build tree (BLIP2_TOP_SRCDIR, BLIP2_TOP_BUILDDIR).
"""
import os
import re
import subprocess
import sys

SRC = os.environ.get("BLIP2_TOP_SRCDIR", ".")
BLD = os.environ.get("BLIP2_TOP_BUILDDIR", ".")

MODEL_LAYERS = ["model/base", "model/compute", "model/formats", "model/text", "model/image",
                "model/nn", "model"]
# which folders each folder may include from (besides itself)
ALLOWED = {
    "model/base": set(),
    "model/compute": {"model/base"},
    "model/formats": {"model/base", "model/compute"},
    "model/text": {"model/base", "model/compute", "model/formats"},
    "model/image": {"model/base", "model/compute", "model/formats"},
    "model/nn": {"model/base", "model/compute", "model/formats", "model/text", "model/image"},
    "model": {"model/base", "model/compute", "model/formats", "model/text", "model/image",
              "model/nn"},
    "libipc": set(),
    "client": {"libipc"},
    "common": set(),
    "ctl": {"client/blip2client.h", "common"},
    "queue": {"libipc", "common"},
    "daemon": {"libipc", "queue", "model/blip2.h"},
}
DIRS = list(ALLOWED)

n = 0
fails = 0


# Known circles being taken apart, as TAP TODO (reported, not counted).
TODO = {}


def ok(cond, msg):
    global n, fails
    n += 1
    if not cond and "# TODO" not in msg:
        fails += 1
    print(("ok" if cond else "not ok"), n, "-", msg)
    sys.stdout.flush()


def headers():
    """name -> [folder, ...] for every header of the product code."""
    h = {}
    for d in DIRS:
        p = os.path.join(SRC, d)
        for f in sorted(os.listdir(p)):
            if f.endswith(".h"):
                h.setdefault(f, []).append(d)
    return h


def include_check():
    hdrs = headers()
    bad = []
    checked = 0
    for d in DIRS:
        p = os.path.join(SRC, d)
        for f in sorted(os.listdir(p)):
            if not f.endswith((".c", ".h", ".cc")):
                continue
            with open(os.path.join(p, f), encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, 1):
                    m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                    if not m:
                        continue
                    checked += 1
                    inc = m.group(1)
                    if "/" in inc:  # relative path: resolve from the file's folder
                        target = os.path.normpath(os.path.join(d, inc))
                        tdir, name = os.path.dirname(target), os.path.basename(target)
                        homes = [tdir] if os.path.exists(os.path.join(SRC, target)) else []
                    else:
                        name = inc
                        homes = hdrs.get(inc, [])
                    if not homes:
                        continue  # a system or generated header
                    home = d if d in homes else homes[0]
                    if home == d:
                        continue
                    allowed = ALLOWED[d]
                    if home in allowed or f"{home}/{name}" in allowed:
                        continue
                    bad.append(f"{d}/{f}:{lineno} includes {home}/{name}")
    ok(checked > 100, f"{checked} includes read")
    ok(not bad, "every include follows the direction of the layers" +
       ("".join("\n#   " + b for b in bad)))


def objects():
    """(source name, object path) of every product object in the build tree."""
    out = []
    for d in DIRS:
        p = os.path.join(BLD, d)
        for root in (p, os.path.join(p, ".libs")):
            if not os.path.isdir(root):
                continue
            for f in sorted(os.listdir(root)):
                if not f.endswith(".o"):
                    continue
                # automake names per-target objects TARGET-SOURCE.o
                src = re.sub(r"^.*?-(?=[^-]+\.o$)", "", f)[:-2]
                out.append((f"{d}/{src}", os.path.join(root, f)))
    seen = {}
    for name, path in out:
        seen.setdefault(name, path)  # libtool builds PIC and non-PIC copies: one is enough
    return seen


def cycle_check():
    objs = objects()
    if not objs:
        print("ok", "# SKIP no objects: run from a built tree")
        return
    defs, uses = {}, {}
    for name, path in objs.items():
        r = subprocess.run(["nm", "-g", path], capture_output=True, text=True)
        u = set()
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "U":
                u.add(parts[1])
            elif len(parts) == 3 and parts[1] in "TDBRC":
                defs.setdefault(parts[2], set()).add(name)
        uses[name] = u
    # the programs' mains define symbols nothing else uses; harmless
    graph = {a: set() for a in objs}
    for a, syms in uses.items():
        for s in syms:
            for b in defs.get(s, ()):
                if b != a and b.split("/")[0] == a.split("/")[0]:
                    graph[a].add(b)
    ok(len(objs) > 40, f"{len(objs)} objects read")
    # Tarjan's strongly connected components
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    for top in ("model", "libipc", "common", "client", "ctl", "queue", "daemon"):
        mine = [c for c in comps if c[0].split("/")[0] == top]
        todo = TODO.get(top) if mine else None
        ok(not mine, f"no files in {top}/ that use each other" +
           (f" # TODO {todo}" if todo else "") +
           "".join("\n#   cycle: " + " <-> ".join(c) for c in mine))


include_check()
cycle_check()
print(f"1..{n}")
sys.exit(1 if fails else 0)

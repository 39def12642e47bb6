#!/usr/bin/python3
# test_features_collect.py - `blip2ctl features` over a collection against a
# real blip2d on the golden opt-tiny model: -r DIR, several IMAGE
# arguments, --files-from -, -o, --resume, -j, --output, --out-dir; the
# pooled vectors on each JSON line and the tensors of each --out-dir
# safetensors file compared with tests/golden/features (1e-4, the golden
# README's tolerance for the image and Q-Former stages); error lines for
# non-images, exit statuses, usage errors.  The requests go through
# blip2c_features_submit (the non-blocking features call).  TAP output.
import functools, hashlib, json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import b2test
from b2test import G, CTL, ok, finish, start, stop, read_st, maxdiff, first

TMP = tempfile.mkdtemp(prefix="b2fcoll.")
TOL = 1e-4


def flat(x):
    if isinstance(x, list):
        r = []
        for y in x:
            r.extend(flat(y))
        return r
    return [x]


def dims(x):
    return [len(x)] + dims(x[0]) if isinstance(x, list) else []


def lines(text):
    out = []
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            out.append({"unparsable": ln})
    return out


proc, sock = start(tmp=TMP, sock=os.path.join(TMP, "d.sock"), bail="blip2d did not start")
ctl = functools.partial(b2test.ctl, sock, "--no-progress")

try:
    gold = read_st(os.path.join(G, "features", "opt-tiny__image_qformer_features.safetensors"))
    row = {"chelsea.png": 0, "rocket.jpg": 1}

    def check_pooled(obj, img, what):
        """the two pooled vectors of obj against the golden row of img"""
        good = True
        for name in ("image_pooler_output", "qformer_pooler_output"):
            g = gold[name]
            per = g[1][1]
            v = obj.get(name)
            d = maxdiff(v, g[2], row[img] * per) if isinstance(v, list) else float("inf")
            good &= ok(isinstance(v, list) and len(v) == per and d <= TOL,
                       "%s: %s %s, %d floats, max abs err %.3g <= %g" % (what, img, name, per, d, TOL))
        return good

    # a photo folder: two images, a copy in a subfolder, a non-image, an empty file, a hidden one
    photos = os.path.join(TMP, "photos")
    os.makedirs(os.path.join(photos, "sub"))
    for img in row:
        shutil.copy(os.path.join(G, "images", img), photos)
    shutil.copy(os.path.join(G, "images", "chelsea.png"), os.path.join(photos, "sub", "cat.png"))
    with open(os.path.join(photos, "notes.txt"), "w") as f:
        f.write("not an image\n")
    open(os.path.join(photos, "empty.png"), "w").close()
    shutil.copy(os.path.join(G, "images", "rocket.jpg"), os.path.join(photos, ".hidden.jpg"))

    out = os.path.join(TMP, "feat.jsonl")
    rc, so, se = ctl("features", "-r", photos, "-o", out, "-j", "3")
    ok(rc == 1, "-r over a folder with a non-image: exit 1 (%d; %s)" % (rc, first(se)))
    got = lines(open(out).read()) if os.path.exists(out) else []
    by = {os.path.relpath(o.get("path", "?"), photos): o for o in got}
    ok(sorted(by) == sorted(["chelsea.png", "rocket.jpg", "sub/cat.png", "empty.png"]),
       "one line per file, path on every line, hidden and non-image (notes.txt, by its bytes) skipped (%s)"
       % sorted(by))
    for img in row:
        o = by.get(img, {})
        check_pooled(o, img, "-r line")
        ok(set(o) == {"path", "image_pooler_output", "qformer_pooler_output", "cached", "ms"},
           "%s: the line holds path, the two pooled outputs, cached, ms (%s)" % (img, sorted(o)))
    check_pooled(by.get("sub/cat.png", {}), "chelsea.png", "copy in a subfolder")
    ok("notes.txt" not in by, "the non-image is skipped: no line for it")
    ok(by.get("empty.png", {}).get("error", {}).get("code") == "bad_image",
       "the empty file: an error line with code bad_image")

    # --resume: a new image appears; only it is done, the error lines are final
    shutil.copy(os.path.join(G, "images", "astronaut.png"), photos)
    rc, so, se = ctl("features", "-r", photos, "-o", out, "--resume", out)
    got2 = lines(open(out).read())
    new = [os.path.relpath(o["path"], photos) for o in got2[len(got):]]
    ok(rc == 0 and new == ["astronaut.png"],
       "--resume: only the new file is done, exit 0 (%d, %s)" % (rc, new))
    ok(all("unparsable" not in o for o in got2), "every line of the output is whole JSON")

    # several IMAGE arguments: a collection on stdout, any order of lines
    a, b = (os.path.join(G, "images", x) for x in ("rocket.jpg", "chelsea.png"))
    rc, so, se = ctl("features", a, b, "-j", "1")
    got = lines(so)
    ok(rc == 0 and sorted(o.get("path") for o in got) == sorted([a, b]),
       "two IMAGE arguments: two lines on stdout, exit 0 (%s)" % first(se))
    for o in got:
        check_pooled(o, os.path.basename(o["path"]), "IMAGE arguments")

    # --files-from -, with --output choosing a larger output: nested (Q, Dq)
    listing = ("%s\n%s\n%s\n" % (b, os.path.join(TMP, "missing.png"), a)).encode()
    rc, so, se = ctl("features", "--files-from", "-", "--output", "qformer_last_hidden_state", stdin=listing)
    got = {os.path.basename(o.get("path", "?")): o for o in lines(so)}
    ok(rc == 1 and sorted(got) == ["chelsea.png", "missing.png", "rocket.jpg"],
       "--files-from -: three lines, exit 1 for the missing file (%d)" % rc)
    ok(got.get("missing.png", {}).get("error", {}).get("code") == "unreadable",
       "the missing file: error code unreadable")
    g = gold["qformer_last_hidden_state"]
    per = g[1][1] * g[1][2]
    for img in row:
        v = got.get(img, {}).get("qformer_last_hidden_state")
        d = maxdiff(flat(v), g[2], row[img] * per) if isinstance(v, list) else float("inf")
        ok(isinstance(v, list) and dims(v) == g[1][1:] and d <= TOL and
           "image_pooler_output" not in got[img],
           "--output qformer_last_hidden_state: %s nested %s, max abs err %.3g" %
           (img, dims(v) if isinstance(v, list) else None, d))

    # --out-dir: every image output in DIR/<sha256 of the path>.safetensors
    od = os.path.join(TMP, "tensors")
    os.mkdir(od)
    rc, so, se = ctl("features", a, b, "--out-dir", od)
    got = lines(so)
    ok(rc == 0 and len(got) == 2, "--out-dir: exit 0, two lines (%s)" % first(se))
    for o in got:
        img = os.path.basename(o.get("path", "?"))
        want = os.path.join(od, hashlib.sha256(o.get("path", "").encode()).hexdigest() + ".safetensors")
        ok(o.get("file") == want and os.path.exists(want),
           "%s: \"file\" is DIR/<sha256 of the path>.safetensors" % img)
        ok(set(o) == {"path", "file", "image_pooler_output", "qformer_pooler_output", "cached", "ms"},
           "%s: with --out-dir the line holds only the pooled outputs (%s)" % (img, sorted(o)))
        check_pooled(o, img, "--out-dir line")
        if not os.path.exists(want):
            continue
        st = read_st(want)
        b2test.check_image_file(st, gold, row[img], "%s: file" % img, TOL)
        case = read_st(os.path.join(G, "cases", "opt-tiny__%s__caption.safetensors" % img.replace(".", "_")))
        d = maxdiff(st["language_model_inputs"][2], case["language_model_inputs"][2])
        ok(d <= TOL, "%s: file language_model_inputs max abs err %.3g" % (img, d))
    ok(not [f for f in os.listdir(od) if f.endswith(".tmp")], "--out-dir: no temporary files left")

    # the SHA-256 of paths whose lengths straddle the padding cases (55/56/64 bytes mod 64)
    ld = os.path.join(TMP, "len")
    os.mkdir(ld)
    paths = []
    for want_len in (55, 56, 57, 63, 64, 65, 119, 120, 128, 200):
        name = "x" * (want_len - len(ld) - 1)
        if len(name) < 1:
            continue
        shutil.copy(a, os.path.join(ld, name))
        paths.append(os.path.join(ld, name))
    od2 = os.path.join(TMP, "tensors2")
    os.mkdir(od2)
    rc, so, se = ctl("features", "--out-dir", od2, *paths)
    names = sorted(os.path.basename(o.get("file", "")) for o in lines(so))
    ok(rc == 0 and names == sorted(hashlib.sha256(p.encode()).hexdigest() + ".safetensors" for p in paths),
       "--out-dir names: SHA-256 of paths of %s bytes" % [len(p) for p in paths])

    # an --out-dir that cannot be written: per-file error lines, retried by --resume
    ro = os.path.join(TMP, "ro")
    os.mkdir(ro)
    out3 = os.path.join(TMP, "ro.jsonl")
    if os.geteuid() != 0:
        os.chmod(ro, 0o500)
        rc, so, se = ctl("features", a, "--out-dir", ro)
        ok(rc == 2 and "--out-dir" in se, "--out-dir not writable: exit 2 before any work")
        os.chmod(ro, 0o700)
    rc, so, se = ctl("features", a, "--out-dir", os.path.join(TMP, "nodir"))
    ok(rc == 2 and "not a directory" in se, "--out-dir missing: exit 2 (%s)" % first(se))

    # usage errors
    for args, what in ((["-r", photos, "--text", "x"], "--text"),
                       (["-r", photos, "--out", os.path.join(TMP, "x.st")], "--out"),
                       (["-r", photos, "--output", "logits_last"], "needs --text"),
                       (["-r", photos, "--output", "pixels"], "is no output"),
                       ([a, b, "--output", "image_pooler_output", "--output", "image_pooler_output"], "twice"),
                       (["-", a], "standard input")):
        rc, so, se = ctl("features", *args)
        ok(rc == 2 and what in se and so == "", "features %s: usage error (%s)" % (" ".join(args[-2:]), first(se)))
    rc, so, se = ctl("status", "--out-dir", od)
    ok(rc == 2 and "for features" in se, "--out-dir with status: usage error")

    # no daemon: exit 3
    p = subprocess.run([CTL, "--socket", os.path.join(TMP, "none.sock"), "features", "-r", photos],
                       capture_output=True, timeout=60)
    ok(p.returncode == 3, "no daemon: exit 3 (%d)" % p.returncode)
finally:
    ok(stop(proc, 20) == 0, "blip2d exits 0 on SIGTERM")
    shutil.rmtree(TMP, ignore_errors=True)
    finish()

#!/usr/bin/env python3
# gguf_int8_check.py - an independent reader of the int8 vision weights a
# GGUF file carries (blip2ctl convert --int8-vision; docs/gguf.md "Math"),
# written from the GGUF specification (ggml's docs/gguf.md: GGML type 24 is
# I8, 26 is I32, one element each of 1 and 4 bytes) and the quantisation
# documented in docs/gguf.md, not from this project's C code; and a tool
# that damages such a file for the loader's error tests.  Used by
# tests/test_convert.sh.
#
#   gguf_int8_check.py read FILE.gguf
#       Parses the file with tests/gguf_spec.py (header, every metadata
#       pair and tensor info, each tensor's data aligned inside the file).
#       Then: the key blip2.vision.int8_weights is 1; there is an
#       int8 copy of exactly the 3 x blip2.vision.block_count matrices
#       vision_model.encoder.layers.L.{self_attn.projection,mlp.fc1,mlp.fc2};
#       each copy PREFIX.s8 (i8), PREFIX.s8_scale (f32), PREFIX.s8_sum (i32)
#       has the shape of PREFIX.weight (out, in), (out), (out); and for up to
#       64 rows per matrix (pure Python) the bytes are what the documented
#       quantisation of the stored weight row (f32, f16 or bf16) gives,
#       recomputed here in f32 steps: amax = largest |w| (NaN ignored),
#       scale = amax / 127 if amax is finite and > 0, else 1; q = w * (1 /
#       scale) clamped to [-127, 127], rounded to nearest with halves away
#       from 0, NaN as 0; sum = the sum of the row's q.  Prints one line per
#       finding; exit 0 if all agree.
#
#   gguf_int8_check.py corrupt KIND IN.gguf OUT.gguf
#       Writes a copy of IN with one defect, sizes and offsets unchanged:
#       missing  the first PREFIX.s8 renamed PREFIX.s9
#       shape    the first mlp.fc1.s8's two dimensions swapped
#       type     the first PREFIX.s8_scale stored as i32 (same size)
#       scale    the first scale of the first PREFIX.s8_scale set to NaN
#       sum      the first row sum of the first PREFIX.s8_sum set to 2^31 - 1
#       scheme   blip2.vision.int8_weights set to 2
#       truncate the last 4096 bytes cut (the last tensor's data outside)
#       weight-i8 the first mlp.fc1.weight's type set to i8 (its data then
#                 half as long, still inside the file)
import math
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_spec import GGML_TYPES, SCALAR, Gguf  # noqa: E402


def f32(x):
    """x rounded to the nearest f32 (an f32 operation of two f32 operands,
    done in double, rounds the same: double has more than 2 x 24 + 2 bits)."""
    if math.isnan(x) or math.isinf(x):
        return x
    return struct.unpack('<f', struct.pack('<f', x))[0]


def quantise_row(w):
    amax = 0.0
    for v in w:
        if abs(v) > amax:  # NaN never compares greater
            amax = abs(v)
    s = f32(amax / 127.0) if amax > 0.0 and math.isfinite(amax) else 1.0
    inv = f32(1.0 / s)
    q = []
    for v in w:
        x = f32(v * inv)
        if x > 127.0:
            x = 127.0
        if x < -127.0:
            x = -127.0
        if x >= 0.0:
            q.append(int(f32(x + 0.5)))
        elif x < 0.0:
            q.append(int(f32(x - 0.5)))
        else:
            q.append(0)  # NaN
    return s, q, sum(q)


def read(path):
    with open(path, 'rb') as f:
        g = Gguf(f.read())
    bad = 0
    if g.kv.get('blip2.vision.int8_weights') != 1:
        print('blip2.vision.int8_weights is %r, not 1' % g.kv.get('blip2.vision.int8_weights'))
        return 1
    layers = g.kv['blip2.vision.block_count']
    want = ['vision_model.encoder.layers.%d.%s' % (l, p) for l in range(layers)
            for p in ('self_attn.projection', 'mlp.fc1', 'mlp.fc2')]
    have = sorted(n[:-3] for n in g.tensors if n.endswith('.s8'))
    if have != sorted(want):
        print('int8 copies of %d matrices, %d expected' % (len(have), len(want)))
        bad += 1
    rows_checked = 0
    for p in want:
        w, q, s, su = (p + '.weight', p + '.s8', p + '.s8_scale', p + '.s8_sum')
        if any(n not in g.tensors for n in (w, q, s, su)):
            print('%s: a tensor is missing' % p)
            bad += 1
            continue
        W, Q, S, SU = (g.tensors[n] for n in (w, q, s, su))
        out = W['ne'][1]
        types = [GGML_TYPES[T['type']][0] for T in (Q, S, SU)]
        if types != ['i8', 'f32', 'i32'] or Q['ne'] != W['ne'] or S['ne'] != [out] or SU['ne'] != [out]:
            print('%s: types %s, shapes %s %s %s (weight %s)' % (p, types, Q['ne'], S['ne'], SU['ne'], W['ne']))
            bad += 1
            continue
        scales, sums = g.row(s, 0), g.row(su, 0)
        step = max(1, out // 64)
        for r in range(0, out, step):
            es, eq, esum = quantise_row(g.row(w, r))
            if g.row(q, r) != eq or scales[r] != es or sums[r] != esum:
                print('%s row %d: the stored int8 copy differs from the quantisation of the stored weight' % (p, r))
                bad += 1
                break
            rows_checked += 1
    print('%s: %d int8 copies (i8 + f32 + i32), %d rows recomputed, %d findings' % (path, len(have), rows_checked,
                                                                                      bad))
    return 1 if bad else 0


def corrupt(kind, src, dst):
    shutil.copyfile(src, dst)
    with open(src, 'rb') as f:
        g = Gguf(f.read())
    names = list(g.tensors)
    first = lambda suffix: g.tensors[next(n for n in names if n.endswith(suffix))]
    with open(dst, 'r+b') as f:
        if kind == 'missing':
            T = first('.s8')
            f.seek(T['name_at'] + len(next(n for n in names if n.endswith('.s8'))) - 1)
            f.write(b'9')
        elif kind == 'shape':
            T = first('mlp.fc1.s8')
            f.seek(T['ne_at'])
            f.write(struct.pack('<QQ', T['ne'][1], T['ne'][0]))
        elif kind == 'type':
            f.seek(first('.s8_scale')['type_at'])
            f.write(struct.pack('<I', 26))
        elif kind == 'scale':
            f.seek(first('.s8_scale')['data_at'])
            f.write(struct.pack('<f', float('nan')))
        elif kind == 'sum':
            f.seek(first('.s8_sum')['data_at'])
            f.write(struct.pack('<i', 2 ** 31 - 1))
        elif kind == 'scheme':
            t, at = g.kv_at['blip2.vision.int8_weights']
            f.seek(at)
            f.write(struct.pack('<' + SCALAR[t], 2))
        elif kind == 'weight-i8':
            f.seek(first('mlp.fc1.weight')['type_at'])
            f.write(struct.pack('<I', 24))
        elif kind == 'truncate':
            f.truncate(len(g.b) - 4096)
        else:
            raise ValueError('unknown defect %s' % kind)
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == 'read':
        return read(argv[2])
    if len(argv) == 5 and argv[1] == 'corrupt':
        return corrupt(argv[2], argv[3], argv[4])
    print('usage: gguf_int8_check.py read FILE.gguf | corrupt KIND IN.gguf OUT.gguf', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))

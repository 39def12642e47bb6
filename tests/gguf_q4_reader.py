#!/usr/bin/env python3
# gguf_q4_reader.py - an independent reader of a q4_0 GGUF file, written
# from the GGUF specification (ggml's docs/gguf.md) and GGML's block_q4_0
# definition, not from this project's C code: used by tests/test_gguf_q8
# on the q4_0 file it packed.
#
#   gguf_q4_reader.py FILE.gguf SRC_FOLDER
#
# Parses the file with tests/gguf_spec.py (header, every metadata pair and
# tensor info, each tensor's data aligned inside the file).  Then, for every q4_0 tensor (type 2), the f32 source tensor of the same
# name in SRC_FOLDER's safetensors: the shape must be the source's
# reversed, the bytes must be what GGML's quantisation gives (per block of
# 32: max = the value of largest magnitude, d = max / -8 rounded to f16,
# id = 1 / d, nibble = min(15, trunc(x * id + 8.5)); byte j = nibble j |
# nibble j+16 << 4), recomputed here in f32 arithmetic, and the decoded
# values d * (nibble - 8) lie within |d| (1 + 2^-8) of the source (a step
# where the clamp to 15 bites, plus d's rounding to f16).  Up to 128 rows per
# tensor (pure Python).  Prints one line per finding; exit 0 if all agree.
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_spec import GGML_TYPES, Gguf  # noqa: E402


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def f16_bits(x):
    return struct.unpack('<H', struct.pack('<e', x))[0]


def f16_value(h):
    return struct.unpack('<e', struct.pack('<H', h))[0]


def quantise_block(xs):
    """GGML's quantize_row_q4_0_ref for one block, in f32 steps."""
    amax, mx = 0.0, 0.0
    for v in xs:
        if amax < abs(v):
            amax, mx = abs(v), v
    d = f32(mx / -8.0)
    idv = f32(1.0 / d) if d != 0.0 else 0.0
    nib = []
    for v in xs:
        t = f32(f32(v * idv) + 8.5)
        nib.append(min(15, int(math.trunc(t))))
    out = struct.pack('<H', f16_bits(d)) + bytes(nib[j] | nib[j + 16] << 4 for j in range(16))
    return out


def load_safetensors(folder):
    tensors = {}
    for fn in sorted(os.listdir(folder)):
        if not fn.endswith('.safetensors'):
            continue
        with open(os.path.join(folder, fn), 'rb') as f:
            raw = f.read()
        hl = struct.unpack_from('<Q', raw, 0)[0]
        hdr = json.loads(raw[8:8 + hl])
        base = 8 + hl
        for name, info in hdr.items():
            if name == '__metadata__':
                continue
            a, b = info['data_offsets']
            tensors[name] = (info['dtype'], info['shape'], raw, base + a, base + b)
    return tensors


def main():
    path, src = sys.argv[1], sys.argv[2]
    with open(path, 'rb') as f:
        data = f.read()
    bad = 0

    def fail(msg):
        nonlocal bad
        bad += 1
        print('FAIL ' + msg)

    try:
        g = Gguf(data)  # magic, version 3, every pair and tensor info, data aligned inside the file
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        print('FAIL %s' % e)
        return 1
    kv = g.kv
    align = kv.get('general.alignment', 32)
    start = min((T['data_at'] - T['offset'] for T in g.tensors.values()), default=0)
    print('header: version 3, %d tensors, %d metadata pairs, alignment %d, data at %d, file_type %s' %
          (len(g.tensors), len(kv), align, start, kv.get('general.file_type')))
    if kv.get('general.file_type') != 2:
        fail('general.file_type %r, want 2 (MOSTLY_Q4_0)' % kv.get('general.file_type'))
    src_t = load_safetensors(src)
    counts = {}
    checked_blocks = 0
    for name, T in g.tensors.items():
        ne = T['ne']
        tn, bs, bb = GGML_TYPES[T['type']]
        counts[tn] = counts.get(tn, 0) + 1
        rows = 1
        for v in ne[1:]:
            rows *= v
        row_bytes = ne[0] // bs * bb
        if tn != 'q4_0':
            continue
        if not name.startswith('language_model.'):
            fail('%s: q4_0 outside the language model' % name)
        if name not in src_t:
            fail('%s: not in the source' % name)
            continue
        dt, shape, raw, a, b = src_t[name]
        if dt != 'F32' or list(reversed(shape)) != ne:
            fail('%s: source %s %s, file dims %s' % (name, dt, shape, ne))
            continue
        k = ne[0]
        for row in range(min(rows, 128)):
            xs = struct.unpack_from('<%df' % k, raw, a + 4 * k * row)
            got = data[T['data_at'] + row * row_bytes: T['data_at'] + (row + 1) * row_bytes]
            for blk in range(k // 32):
                x = xs[32 * blk: 32 * blk + 32]
                g = got[18 * blk: 18 * blk + 18]
                want = quantise_block(x)
                if g != want:
                    fail('%s row %d block %d: bytes %s, GGML gives %s' % (name, row, blk, g.hex(), want.hex()))
                    break
                d = f16_value(struct.unpack_from('<H', g, 0)[0])
                for j in range(32):
                    nib = g[2 + j % 16] >> (4 * (j // 16)) & 15
                    v = d * (nib - 8)
                    # a step, at most (a value of the max's size and the other
                    # sign clamps to nibble 15), plus d's rounding to f16
                    if abs(v - x[j]) > abs(d) * (1 + 8 * 2.0 ** -11) + 1e-30:
                        fail('%s row %d value %d: decoded %g, source %g, d %g' % (name, row, 32 * blk + j, v, x[j], d))
                        break
                checked_blocks += 1
            if bad > 10:
                break
    if not counts.get('q4_0'):
        fail('no q4_0 tensor in the file')
    if not counts.get('bf16'):
        fail('no bf16 tensor (vision, Q-Former and projection matrices should be)')
    print('tensors per type: %s; %d q4_0 blocks checked against the source' %
          (', '.join('%d %s' % (n, t) for t, n in sorted(counts.items())), checked_blocks))
    print('OK' if bad == 0 else '%d failures' % bad)
    return 0 if bad == 0 else 1


if __name__ == '__main__':
    sys.exit(main())

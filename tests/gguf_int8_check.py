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
#       Parses the header (magic, version 3, counts), every metadata pair
#       (all value types, arrays included), every tensor info (name, dims,
#       type, offset) and checks each tensor's data lies aligned inside the
#       file.  Then: the key blip2.vision.int8_weights is 1; there is an
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
import shutil
import struct
import sys

# ggml type: (name, block values, block bytes)
GGML_TYPES = {0: ('f32', 1, 4), 1: ('f16', 1, 2), 2: ('q4_0', 32, 18), 8: ('q8_0', 32, 34), 24: ('i8', 1, 1),
              26: ('i32', 1, 4), 30: ('bf16', 1, 2)}
SCALAR = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}


class Gguf:
    def __init__(self, data):
        self.b = data
        self.o = 0
        self.kv = {}        # key -> value
        self.kv_at = {}     # key -> (value type, offset of the value)
        self.tensors = {}   # name -> dict(name_at, ne_at, type_at, ne, type, offset, data_at, nbytes)
        magic = self.take('I')
        if magic != 0x46554747:
            raise ValueError('not a GGUF file')
        if self.take('I') != 3:
            raise ValueError('not GGUF version 3')
        nt, nkv = self.take('Q'), self.take('Q')
        for _ in range(nkv):
            k = self.string()
            t = self.take('I')
            self.kv_at[k] = (t, self.o)
            self.kv[k] = self.value(t)
        align = self.kv.get('general.alignment', 32)
        for _ in range(nt):
            name_at = self.o + 8
            name = self.string()
            nd = self.take('I')
            ne_at = self.o
            ne = [self.take('Q') for _ in range(nd)]
            type_at = self.o
            t = self.take('I')
            off = self.take('Q')
            if t not in GGML_TYPES:
                raise ValueError('%s: unknown ggml type %d' % (name, t))
            _, bv, bb = GGML_TYPES[t]
            if ne[0] % bv:
                raise ValueError('%s: rows not a multiple of the block' % name)
            n = 1
            for d in ne:
                n *= d
            self.tensors[name] = dict(name_at=name_at, ne_at=ne_at, type_at=type_at, ne=ne, type=t, offset=off,
                                      nbytes=n // bv * bb)
        start = (self.o + align - 1) // align * align
        for name, T in self.tensors.items():
            if T['offset'] % align:
                raise ValueError('%s: offset not aligned' % name)
            T['data_at'] = start + T['offset']
            if T['data_at'] + T['nbytes'] > len(self.b):
                raise ValueError('%s: data outside the file' % name)

    def take(self, fmt):
        v = struct.unpack_from('<' + fmt, self.b, self.o)
        self.o += struct.calcsize('<' + fmt)
        return v[0]

    def string(self):
        n = self.take('Q')
        s = self.b[self.o:self.o + n].decode('utf-8')
        self.o += n
        return s

    def value(self, t):
        if t in SCALAR:
            return self.take(SCALAR[t])
        if t == 8:
            return self.string()
        if t == 9:
            et = self.take('I')
            n = self.take('Q')
            return [self.value(et) for _ in range(n)]
        raise ValueError('unknown metadata value type %d' % t)

    def row(self, name, r):
        """Row r of tensor name as Python floats (f32, f16, bf16) or ints (i8, i32)."""
        T = self.tensors[name]
        k = T['ne'][0]
        kind = GGML_TYPES[T['type']][0]
        size = {'f32': 4, 'f16': 2, 'bf16': 2, 'i8': 1, 'i32': 4}[kind]
        at = T['data_at'] + r * k * size
        raw = self.b[at:at + k * size]
        if kind == 'f32':
            return list(struct.unpack('<%df' % k, raw))
        if kind == 'f16':
            return list(struct.unpack('<%de' % k, raw))
        if kind == 'bf16':
            return [struct.unpack('<f', struct.pack('<I', h << 16))[0] for h in struct.unpack('<%dH' % k, raw)]
        if kind == 'i8':
            return list(struct.unpack('<%db' % k, raw))
        return list(struct.unpack('<%di' % k, raw))


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

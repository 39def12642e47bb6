#!/usr/bin/env python3
# gguf_spec.py - a GGUF file parsed from the GGUF specification (ggml's
# docs/gguf.md), not from this project's C code: the header (magic,
# version 3, counts), every metadata pair (all value types, arrays
# included) and every tensor info (name, dims, type, offset), each
# tensor's data checked to lie aligned inside the file.  Shared by the
# independent readers tests/gguf_q4_reader.py and tests/gguf_int8_check.py.
import struct

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

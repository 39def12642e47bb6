#!/usr/bin/python3
# gen_gguf_corpus.py - writes the seed corpus of fuzz_gguf into
# tests/fuzz/corpus/gguf/ (run from the top of the tree).  Small GGUF v3
# files: every value type, each tensor type, the default alignment, no
# tensors, a BLIP-2-style metadata set with a tiny tokenizer.
import os
import struct

OUT = "tests/fuzz/corpus/gguf"
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def val(t, v):
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
           F64: "d"}
    if t == STR:
        return s(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(val(et, i) for i in items)
    return struct.pack("<" + fmt[t], v)


def gguf(kvs, tensors, align=None):
    """kvs: [(key, type, value)]; tensors: [(name, type, ne, data bytes)]"""
    if align is not None:
        kvs = [("general.alignment", U32, align)] + kvs
    al = align or 32
    h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        h += s(k) + struct.pack("<I", t) + val(t, v)
    off = 0
    offs = []
    for name, t, ne, data in tensors:
        offs.append(off)
        off += (len(data) + al - 1) // al * al
    for (name, t, ne, data), o in zip(tensors, offs):
        h += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        h += struct.pack("<IQ", t, o)
    h += b"\0" * ((al - len(h) % al) % al)
    for name, t, ne, data in tensors:
        h += data + b"\0" * ((al - len(data) % al) % al)
    return h


os.makedirs(OUT, exist_ok=True)
f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 7)
f16 = struct.pack("<4H", 0x3c00, 0xc000, 0x7bff, 0x0001)
bf16 = struct.pack("<4H", 0x3f80, 0xc000, 0x7f7f, 0x0001)
q8 = struct.pack("<H", 0x2c00) + bytes((i * 7) & 255 for i in range(32))
files = {
    "types.gguf": gguf([("a.u8", U8, 7), ("a.i8", I8, -7), ("a.u16", U16, 700), ("a.i16", I16, -700),
                        ("a.u32", U32, 70000), ("a.i32", I32, -70000), ("a.f32", F32, 0.5), ("a.bool", BOOL, True),
                        ("a.str", STR, "hello"), ("a.u64", U64, 1 << 40), ("a.i64", I64, -(1 << 40)),
                        ("a.f64", F64, 1 / 255), ("a.arr", ARR, (STR, ["x", "yz", ""])),
                        ("a.arrf", ARR, (F32, [1.0, 2.0, 3.0])), ("a.arrb", ARR, (BOOL, [True, False]))],
                       [("t.f32", 0, [3, 2], f32), ("t.f16", 1, [2, 2], f16), ("t.bf16", 30, [4], bf16),
                        ("t.q8", 8, [32, 1], q8)], align=64),
    "default_align.gguf": gguf([("general.architecture", STR, "blip2")], [("w", 0, [6], f32)]),
    "empty.gguf": gguf([], []),
    "blip2_meta.gguf": gguf([("general.architecture", STR, "blip2"), ("general.name", STR, "tiny"),
                             ("blip2.text.model_type", STR, "opt"), ("blip2.text.attention.head_count", U32, 4),
                             ("blip2.preprocessor.image_mean", ARR, (F32, [0.48, 0.45, 0.4])),
                             ("tokenizer.ggml.model", STR, "gpt2"),
                             ("tokenizer.ggml.tokens", ARR, (STR, ["!", "\"", "a", "b", "ab", "</s>"])),
                             ("tokenizer.ggml.merges", ARR, (STR, ["a b"])),
                             ("tokenizer.ggml.bos_token_id", U32, 5),
                             ("blip2.tokenizer.config_json", STR, '{"add_bos_token": true}')],
                            [("query_tokens", 0, [3, 2, 1], f32)], align=64),
}
for name, data in files.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)

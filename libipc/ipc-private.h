/*
 * ipc-private.h - internal to libblip2ipc, never installed.
 *
 * The message schemas (schema.c) describe every request and reply field
 * once: wire name, kind, where it lives in b2ipc_request / b2ipc_reply, and
 * its limits.  The decoder (decode.c) walks a MessagePack map against a
 * schema, the encoder (encode.c) walks a struct against the same schema, and
 * the validator (validate.c) checks a struct against it; so the three can
 * never disagree about names, types or ranges.
 */
#ifndef BLIP2IPC_PRIVATE_H
#define BLIP2IPC_PRIVATE_H

#include "blip2ipc.h"

/* Field kinds and the C type found at `off` (and `aux`). */
enum b2ipc__kind {
    B2IPC__K_U32,       /* uint32_t; aux: bool presence flag or B2IPC__NOAUX */
    B2IPC__K_U64,       /* uint64_t; aux as above */
    B2IPC__K_F64,       /* double (wire: any float or integer) */
    B2IPC__K_BOOL,      /* bool */
    B2IPC__K_STR,       /* const char * (NUL-terminated; NULL = absent) */
    B2IPC__K_TEXT,      /* const char * + size_t length at aux */
    B2IPC__K_BIN,       /* const uint8_t * + size_t length at aux */
    B2IPC__K_STRARR,    /* const char *const * + uint32_t count at aux */
    B2IPC__K_MAP,       /* nested map described by `sub` (same root struct) */
    B2IPC__K_CODE,      /* error: int code + const char *code_name at aux */
    B2IPC__K_SEQ_TEXTS, /* done: texts / ids / finish, from done.seqs */
    B2IPC__K_SEQ_IDS,
    B2IPC__K_SEQ_FINISH,
    B2IPC__K_TENSORS    /* features: map name -> {dtype, shape, data}; const
                           b2ipc_tensor * + uint32_t count at aux */
};

enum {
    B2IPC__F_REQ = 1,        /* required */
    B2IPC__F_LO_OPEN = 2,    /* lower bound excluded: (lo .. hi] */
    B2IPC__F_NONUL = 4,      /* text must not contain U+0000 */
    B2IPC__F_OMIT_FALSE = 8, /* bool: encoder leaves it out when false */
    B2IPC__F_LIM_PROMPT = 16,/* size limit is lim->max_prompt_bytes */
    B2IPC__F_LIM_IMAGE = 32  /* size limit is lim->max_image_bytes */
};

#define B2IPC__NOAUX ((size_t)-1)

typedef struct b2ipc__schema b2ipc__schema;

typedef struct b2ipc__field {
    const char *name;
    unsigned char kind;   /* enum b2ipc__kind */
    unsigned char flags;  /* B2IPC__F_* */
    size_t off;           /* offset of the value in the root struct */
    size_t aux;           /* see the kinds; B2IPC__NOAUX if unused */
    double lo, hi;        /* numbers: range; strings/bin: byte sizes;
                             arrays: hi = max count (elements: elo, ehi) */
    double elo, ehi;      /* array elements: byte sizes */
    const b2ipc__schema *sub; /* K_MAP */
} b2ipc__field;

struct b2ipc__schema {
    const char *prefix;   /* for nested maps: "model." etc.; "" at top */
    const b2ipc__field *fields;
    size_t n;
    bool strict;          /* unknown keys are errors (requests) */
};

/* The schema of each op / reply type (fields besides id and op/type);
 * NULL for values out of range. */
const b2ipc__schema *b2ipc__request_schema(b2ipc_op op);
const b2ipc__schema *b2ipc__reply_schema(b2ipc_reply_type type);

/* Fills err (if non-NULL) and returns code; field may be NULL. */
int b2ipc__err(b2ipc_error *err, int code, const char *field,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Checks that s[0..n) is valid UTF-8 (RFC 3629).  Returns 0, -1 for
 * invalid bytes, -2 for a U+0000 when allow_nul is false; *at (may be
 * NULL) gets the offset of the problem. */
int b2ipc__utf8_check(const char *s, size_t n, bool allow_nul, size_t *at);
/* Copies s[0..n) into dst (cap bytes, NUL-terminated) for a message:
 * printable ASCII as is, other bytes as \xHH, "..." if cut. */
void b2ipc__quote(char *dst, size_t cap, const char *s, size_t n);

/* Message helpers (validate.c): a number (integers in full), and a
 * field's range such as "[1, 16]" or "(0, 100]". */
void b2ipc__fmt_num(char *buf, size_t cap, double v);
void b2ipc__fmt_range(char *buf, size_t cap, const b2ipc__field *f);

/* Structure check of a payload without allocating (scan.c): exactly one
 * complete object, no container declaring more elements than bytes remain,
 * nesting <= B2IPC_MAX_DEPTH, <= B2IPC_MAX_OBJECTS objects.  Makes
 * msgpack-c's unpacker (which allocates per declared element) safe. */
int b2ipc__scan(const uint8_t *p, size_t n, b2ipc_error *err);

/* The effective limits. */
uint64_t b2ipc__max_image(const b2ipc_limits *lim);
uint64_t b2ipc__max_prompt(const b2ipc_limits *lim);
/* Field f's size limit in bytes under lim (the prompt or image limit when
 * f is flagged so, else f->hi); negative: none. */
double b2ipc__size_limit(const b2ipc__field *f, const b2ipc_limits *lim);

#endif

/*
 * spm.cc - the C interface of spm.h over sentencepiece::SentencePieceProcessor.
 *
 * Every entry point catches C++ exceptions (allocation failures) and turns
 * them into return codes; results are copied into malloc'd C buffers.
 */
#include "spm.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct b2_spm {
    sentencepiece::SentencePieceProcessor sp;
};

/* path, or len bytes at data when path is NULL */
static int load(b2_spm **out, const char *path, const void *data, size_t len, char *msg, size_t cap)
{
    *out = nullptr;
    try {
        b2_spm *s = new b2_spm;
        auto st = path ? s->sp.Load(path)
                       : s->sp.LoadFromSerializedProto(std::string(static_cast<const char *>(data), len));
        if (!st.ok()) {
            snprintf(msg, cap, "%s", st.ToString().c_str());
            delete s;
            return -1;
        }
        *out = s;
        return 0;
    } catch (const std::bad_alloc &) {
        snprintf(msg, cap, "out of memory");
        return -2;
    } catch (...) {
        snprintf(msg, cap, "cannot load the SentencePiece model");
        return -1;
    }
}

extern "C" int b2__spm_load(b2_spm **out, const char *path, char *msg, size_t cap)
{
    return load(out, path, nullptr, 0, msg, cap);
}

extern "C" int b2__spm_load_mem(b2_spm **out, const void *data, size_t len, char *msg, size_t cap)
{
    return load(out, nullptr, data, len, msg, cap);
}

extern "C" void b2__spm_free(b2_spm *sp)
{
    delete sp;
}

extern "C" int b2__spm_size(const b2_spm *sp)
{
    return sp->sp.GetPieceSize();
}

extern "C" const char *b2__spm_piece(const b2_spm *sp, int32_t id)
{
    if (id < 0 || id >= sp->sp.GetPieceSize()) return nullptr;
    return sp->sp.IdToPiece(id).c_str();
}

extern "C" int b2__spm_encode(const b2_spm *sp, const char *text, size_t len, int32_t **ids, size_t *n)
{
    *ids = nullptr;
    *n = 0;
    try {
        std::vector<int> v;
        if (!sp->sp.Encode(std::string(text, len), &v).ok()) return -1;
        int32_t *o = static_cast<int32_t *>(malloc(sizeof(int32_t) * (v.size() ? v.size() : 1)));
        if (!o) return -2;
        for (size_t i = 0; i < v.size(); i++) o[i] = v[i];
        *ids = o;
        *n = v.size();
        return 0;
    } catch (const std::bad_alloc &) {
        return -2;
    } catch (...) {
        return -1;
    }
}

extern "C" int b2__spm_decode(const b2_spm *sp, const int32_t *ids, size_t n, char **text)
{
    *text = nullptr;
    try {
        std::vector<int> v(ids, ids + n);
        std::string s;
        if (!sp->sp.Decode(v, &s).ok()) return -1;
        char *o = static_cast<char *>(malloc(s.size() + 1));
        if (!o) return -2;
        memcpy(o, s.data(), s.size());
        o[s.size()] = 0;
        *text = o;
        return 0;
    } catch (const std::bad_alloc &) {
        return -2;
    } catch (...) {
        return -1;
    }
}

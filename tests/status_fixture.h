/*
 * status_fixture.h - one status reply's contents (docs/protocol.md 5.5)
 * for the tests: a small model and a daemon with every counter distinct.
 * tests/fake_server.c answers "status" with it (test_client and
 * test_blip2ctl.sh check these values); tests/test_ipc.c round-trips it.
 */
#ifndef STATUS_FIXTURE_H
#define STATUS_FIXTURE_H

#include "blip2ipc.h"

static inline void status_fixture(b2ipc_status *st)
{
    st->version = "0.0-fake";
    st->protocol = 1;
    st->uptime_ms = 3723000;
    st->model.path = "/models/fake";
    st->model.name = "blip2-fake";
    st->model.family = "opt";
    st->model.dtype = "f32";
    st->model.precision = "bf16";
    st->model.backend = "oneDNN";
    st->model.kernels = "q8_0 avx2 (measured)";
    st->model.weights = "weights in 2 MiB pages: 100 % of the 0.1 GiB cached";
    st->config.image_size = 224;
    st->config.vision_layers = 2;
    st->config.vision_hidden = 32;
    st->config.qformer_layers = 2;
    st->config.num_query_tokens = 8;
    st->config.text_layers = 2;
    st->config.text_hidden = 64;
    st->config.vocab_size = 1000;
    st->config.max_positions = 512;
    st->queue_depth = 1;
    st->active = 2;
    st->max_queue = 64;
    st->max_batch = 8;
    st->connections = 3;
    st->threads = 2;
    st->requests_total = 42;
    st->cache.hits = 5;
    st->cache.misses = 6;
    st->cache.entries = 4;
    st->cache.bytes = 3u << 20;
    st->cache.capacity_bytes = 256u << 20;
}

#endif

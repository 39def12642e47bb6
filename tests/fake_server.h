/*
 * fake_server.h - a scripted stand-in for blip2d, for the client tests.
 *
 * It speaks docs/protocol.md through libipc.  What it does with a generate
 * request is chosen by the first word of the image's bytes (read inline or
 * through the passed descriptor):
 *   hold        no reply until a cancel (done "canceled") or a release
 *   release     answer this request, then every held one, newest first
 *   streamhold  stream two tokens, then hold
 *   die         stream two tokens (if streaming), then close the connection
 *   fatal       an error without id, then close (like frame_too_large)
 *   garbage     a frame that is not MessagePack
 *   badreply    a done reply whose texts is not an array
 *   unknownid   a done reply for an id that is not in flight
 *   tokenfirst  a token event for a request that did not ask for streaming
 *   busy        error "busy";  busy1: "busy" the first time on a connection
 *   internal    error "internal";  badimage: error "bad_image"
 *   seed        a normal answer with seed 2^64-1
 *   anything else: a normal answer.
 * Normal answers: "a picture of CONTENT" without prompt, "answer N about
 * CONTENT" with one (N = how many "Question:" the prompt holds); CONTENT is
 * the image's first line (at most 100 bytes).  Streamed as one token per
 * word, each with a leading space, then done (ids 2, 100, 101, ..., finish
 * "eos"); with num_return_sequences k, sequence i's text gets " #i".
 */
#ifndef FAKE_SERVER_H
#define FAKE_SERVER_H

#include <sys/types.h>

/* A listening Unix socket at path (an old file there is removed). */
int fake_listen(const char *path);
/* Serves one connection until the peer closes it; closes fd.  Returns 0. */
int fake_serve_conn(int fd);
/* Accepts forever, one forked process per connection. */
void fake_serve(int lfd) __attribute__((noreturn));
/* Forks a server on a new socket at path; returns its pid (-1 on error). */
pid_t fake_start(const char *path);

#endif

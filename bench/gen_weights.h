/*
 * gen_weights.h - the random-weights generator as a function, so a test can
 * run it in-process (bench/gen_weights.c; its main() just calls this).
 */
#ifndef B2BENCH_GEN_WEIGHTS_H
#define B2BENCH_GEN_WEIGHTS_H

/* Runs the generator with command-line arguments (argv[0] is ignored).
 * Returns 0 on success, 1 on failure (message on stderr), 2 on bad usage. */
int b2bench_gen_weights(int argc, char **argv);

#endif

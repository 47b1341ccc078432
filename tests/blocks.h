/* blocks.h — block-format helpers shared by the CPU and GPU tests (tests/blocks.c). */
#ifndef MOE_TEST_BLOCKS_H
#define MOE_TEST_BLOCKS_H

#include "test.h"

/* Parses the oracle's case description ("kind=mxfp4 elem=e2m1 rule=rceil ...") into a format and the input
 * dtype; 0 on success. */
int blocks_parse_cfg(const char *cfg, moe_qformat *f, moe_dtype *input);

/* A quantised tensor with buffers in ctx's memory. */
typedef struct test_qbuf {
    moe_qtensor q;
    moe_qsizes sizes;
} test_qbuf;

/* Allocates q's buffers for a format and shape, poisoned with 0xA5. 0 on success. */
int test_qbuf_alloc(moe_ctx *ctx, test_qbuf *b, const moe_qformat *f, int rank, const int64_t *shape);
void test_qbuf_free(moe_ctx *ctx, test_qbuf *b);

/* Runs every case of blocks.moeg on ctx: quantise, compare bytes with the oracle, dequantise, compare values.
 * Returns the number of mismatching cases (-1 when the file cannot be read). */
int blocks_run_golden(test_env *env, moe_ctx *ctx);

#endif

/* A set of formats covering every kind, element type, scale rule, scale storage, layout and NVFP4
 * convention; returns how many were written (at most cap). names[i] describes formats[i]. */
int blocks_config_matrix(moe_qformat *formats, char (*names)[64], int cap);

/* Fills n f32 values with data that exercises a quantiser: normal values whose magnitude changes from block
 * to block over 2^-8..2^8, an all-zero stretch, exact powers of two and, when specials != 0, NaN and +-Inf. */
void blocks_random_data(float *x, int64_t n, uint64_t seed, int specials);

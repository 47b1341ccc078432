/* tensor.c — dtype tables and tensor-view helpers. */
#include "core/internal.h"

#include <string.h>

static const struct {
    const char *name;
    int bits;
} moe_dtype_table[MOE_DTYPE_COUNT_] = {
    [MOE_DTYPE_INVALID] = {"invalid", 0}, [MOE_DTYPE_F32] = {"f32", 32},  [MOE_DTYPE_F16] = {"f16", 16},
    [MOE_DTYPE_BF16] = {"bf16", 16},      [MOE_DTYPE_E4M3] = {"e4m3", 8}, [MOE_DTYPE_E5M2] = {"e5m2", 8},
    [MOE_DTYPE_E2M1] = {"e2m1", 4},       [MOE_DTYPE_E8M0] = {"e8m0", 8}, [MOE_DTYPE_U8] = {"u8", 8},
    [MOE_DTYPE_I32] = {"i32", 32},        [MOE_DTYPE_I64] = {"i64", 64},
};

static int moe_dtype_valid(moe_dtype d) {
    return d > MOE_DTYPE_INVALID && d < MOE_DTYPE_COUNT_;
}

const char *moe_dtype_name(moe_dtype d) {
    return moe_dtype_valid(d) ? moe_dtype_table[d].name : "invalid";
}

moe_dtype moe_dtype_from_name(const char *name) {
    if (!name) return MOE_DTYPE_INVALID;
    for (int d = 1; d < MOE_DTYPE_COUNT_; d++)
        if (strcmp(name, moe_dtype_table[d].name) == 0) return (moe_dtype)d;
    return MOE_DTYPE_INVALID;
}

int moe_dtype_bits(moe_dtype d) {
    return moe_dtype_valid(d) ? moe_dtype_table[d].bits : 0;
}

int64_t moe_dtype_bytes(moe_dtype d, int64_t n) {
    int bits = moe_dtype_bits(d);
    if (bits == 0 || n < 0) return -1;
    if (bits == 4) return n % 2 ? -1 : n / 2;
    if (n > INT64_MAX / (bits / 8)) return -1;
    return n * (bits / 8);
}

moe_tensor moe_tensor_2d(void *data, moe_dtype dtype, int64_t rows, int64_t cols) {
    moe_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.rank = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

int64_t moe__shape_numel(int rank, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

int64_t moe_tensor_numel(const moe_tensor *t) {
    if (!t || t->rank < 1 || t->rank > MOE_MAX_RANK) return -1;
    return moe__shape_numel(t->rank, t->shape);
}

void moe__shape_matrices(int rank, const int64_t *shape, int64_t *batch, int64_t *rows, int64_t *cols) {
    *cols = shape[rank - 1];
    *rows = rank >= 2 ? shape[rank - 2] : 1;
    *batch = rank >= 3 ? moe__shape_numel(rank - 2, shape) : 1;
}

moe_status moe__check_tensor(moe_ctx *ctx, const moe_tensor *t, const char *name) {
    MOE_CHECK_ARG(ctx, t, "%s: tensor is NULL", name);
    MOE_CHECK_ARG(ctx, t->rank >= 1 && t->rank <= MOE_MAX_RANK, "%s: rank %d is outside 1..%d", name, t->rank,
                  MOE_MAX_RANK);
    MOE_CHECK_ARG(ctx, moe_dtype_valid(t->dtype), "%s: unknown dtype %d", name, (int)t->dtype);
    int64_t n = moe__shape_numel(t->rank, t->shape);
    MOE_CHECK_ARG(ctx, n >= 0, "%s: negative dimension or too many elements in its shape", name);
    MOE_CHECK_ARG(ctx, n == 0 || t->data, "%s: data is NULL", name);
    MOE_CHECK_ARG(ctx, moe_dtype_bytes(t->dtype, n) >= 0, "%s: %lld elements of %s do not fill whole bytes", name,
                  (long long)n, moe_dtype_name(t->dtype));
    const int item = moe_dtype_bits(t->dtype) / 8; /* an element's bytes, 0 for E2M1 */
    MOE_CHECK_ARG(ctx, item <= 1 || (uintptr_t)t->data % (uintptr_t)item == 0, "%s: %s data is not %d-byte aligned",
                  name, moe_dtype_name(t->dtype), item);
    return MOE_OK;
}

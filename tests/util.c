/* util.c — helpers shared by the tests: the oracle's PRNG and chunk hash, bit views, a clock. */
#include <time.h>

#include "test.h"

uint64_t test_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int64_t test_chunk_count(int64_t n) {
    return (n + 4095) / 4096;
}

void test_chunk_fnv(const void *data, int64_t n, int elem_bytes, uint64_t *out) {
    const uint8_t *p = data;
    for (int64_t c = 0; c < test_chunk_count(n); c++) {
        int64_t end = (c + 1) * 4096 < n ? (c + 1) * 4096 : n;
        uint64_t h = 0xcbf29ce484222325ull;
        for (int64_t i = c * 4096 * elem_bytes; i < end * elem_bytes; i++) h = (h ^ p[i]) * 0x100000001b3ull;
        out[c] = h;
    }
}

void test_random_set(const char *name, uint32_t *bits, int64_t n) {
    int near = strcmp(name, "near") == 0;
    uint64_t state = near ? 2 : 1;
    for (int64_t i = 0; i < n; i++) {
        uint32_t r = (uint32_t)test_splitmix64(&state);
        if (near) r = (r & 0x807FFFFFu) | ((103u + ((r >> 23) % 48u)) << 23);
        bits[i] = r;
    }
}

uint32_t test_f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

float test_f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

int test_same_f32(float a, float b) {
    return (isnan(a) && isnan(b)) || test_f32_bits(a) == test_f32_bits(b);
}

double test_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void *test_upload(moe_ctx *ctx, const void *host, size_t n) {
    void *d = NULL;
    if (n == 0 || moe_alloc(ctx, n, &d) != MOE_OK) return NULL;
    if (moe_memcpy(ctx, d, host, n, MOE_COPY_HOST_TO_CTX, NULL) != MOE_OK) {
        moe_free(ctx, d);
        return NULL;
    }
    return d;
}

int test_download(moe_ctx *ctx, void *host, const void *dev, size_t n) {
    if (n == 0) return 0;
    if (moe_memcpy(ctx, host, dev, n, MOE_COPY_CTX_TO_HOST, NULL) != MOE_OK) return -1;
    return moe_sync(ctx, NULL) == MOE_OK ? 0 : -1;
}

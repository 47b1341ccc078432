/* scripts/check_top_k_magic.c — moe_decode_top_k_magic (src/cuda/moe/gemm_decode.cuh, copied here): n / d as
 * umulhi(2n, magic) >> shift for row indices 0 <= n < 2^31, checked against the division for d = 1 .. 256: every
 * n below 2^22, the top 2^20, 2 M random n, and n = q d - 1, q d, q d + 1 at some 50 000 q spread over the range.
 * Not a test (seconds):
 *   gcc -O2 -std=c11 scripts/check_top_k_magic.c -o /tmp/check_top_k_magic && /tmp/check_top_k_magic */
#include <stdint.h>
#include <stdio.h>

static void top_k_magic(int d, uint32_t *magic, int *shift) { /* the host's */
    int s = 0;
    while ((1LL << s) < d) s++;
    *shift = s;
    *magic = (uint32_t)(((1ULL << (31 + s)) + (uint64_t)d - 1) / (uint64_t)d);
}

static uint32_t divide(uint32_t n, uint32_t magic, int shift) { /* the kernels': __umulhi(n << 1, magic) >> shift */
    return (uint32_t)(((uint64_t)(n << 1) * magic) >> 32) >> shift;
}

int main(void) {
    long long bad = 0;
    for (int d = 1; d <= 256; d++) {
        uint32_t m;
        int s;
        top_k_magic(d, &m, &s);
        const uint32_t ud = (uint32_t)d;
        for (uint32_t n = 0; n < (1u << 22); n++) bad += divide(n, m, s) != n / ud;
        for (uint32_t n = 0x7FFFFFFFu; n > 0x7FFFFFFFu - (1u << 20); n--) bad += divide(n, m, s) != n / ud;
        uint32_t x = ud * 2654435761u;
        for (int i = 0; i < 2000000; i++) {
            x = x * 1664525u + 1013904223u;
            const uint32_t n = x & 0x7FFFFFFFu;
            bad += divide(n, m, s) != n / ud;
        }
        const uint32_t qmax = 0x7FFFFFFFu / ud, step = qmax / 50000 + 1;
        for (uint32_t q = 0; q <= qmax; q += step)
            for (int r = -1; r <= 1; r++) {
                const int64_t n = (int64_t)q * d + r;
                if (n >= 0 && n <= 0x7FFFFFFF) bad += divide((uint32_t)n, m, s) != (uint32_t)n / ud;
            }
    }
    printf("top_k magic: %lld wrong quotients\n", bad);
    return bad != 0;
}

/* scripts/check_fp4_factor.c — the FP4 wgmma tile's block factors from packed scales (fp4_mx_wide4, fp4_nv_odd4 and
 * fp4_factor_plain in src/cuda/moe/fp4_scale_words.h, the kernel's own functions) against the CPU definitions of
 * E8M0 and E4M3 (src/formats/scalar.h): on every 32-bit word of four scales, each test flags exactly the words with a byte that
 * needs the exact path (E8M0 past 136; E4M3 outside the positive normal numbers 0x08 .. 0x7E), and for every byte
 * it passes, at each of the four positions, the factor is the bf16 pair (s * 2^118, s * 2^118), exactly.
 * Not a test (a few seconds on two cores):
 *   gcc -O2 -march=native -fopenmp -std=c11 -Isrc -Iinclude scripts/check_fp4_factor.c -o /tmp/check_fp4_factor -lm
 *   /tmp/check_fp4_factor */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "cuda/moe/fp4_scale_words.h"
#include "formats/scalar.h"

static int mx_wide(uint32_t e) { return e > 136; }
static int nv_odd(uint32_t e) { return e < 0x08 || e > 0x7E; }

int main(void) {
    long long bad_flags = 0;
#pragma omp parallel for reduction(+ : bad_flags) schedule(static)
    for (int64_t hi = 0; hi < 65536; hi++)
        for (uint32_t lo = 0; lo < 65536; lo++) {
            const uint32_t w = (uint32_t)hi << 16 | lo;
            int mx = 0, nv = 0;
            for (int b = 0; b < 4; b++) mx |= mx_wide((w >> 8 * b) & 0xFF), nv |= nv_odd((w >> 8 * b) & 0xFF);
            bad_flags += ((fp4_mx_wide4(w) != 0) != mx) + ((fp4_nv_odd4(w) != 0) != nv);
        }
    long long bad_factors = 0, checked = 0;
    for (int mx = 0; mx < 2; mx++)
        for (uint32_t e = 0; e < 256; e++) {
            if (mx ? mx_wide(e) : nv_odd(e)) continue;
            const float s = mx ? moe__e8m0_to_f32((uint8_t)e) : moe__e4m3_to_f32((uint8_t)e);
            const uint16_t want = moe__bf16_from_f32(ldexpf(s, 118));
            if (moe__bf16_to_f32(want) != ldexpf(s, 118)) bad_factors++; /* s * 2^118 must be exact in bf16 */
            for (int b = 0; b < 4; b++) {
                const uint32_t w = 0xA5C3E10Fu ^ ((0xA5C3E10Fu >> 8 * b & 0xFF) ^ e) << 8 * b; /* e at byte b */
                const uint32_t f = fp4_factor_plain(mx, w, b);
                bad_factors += (f & 0xFFFF) != want || (f >> 16) != want;
                checked++;
            }
        }
    printf("fp4_mx_wide4, fp4_nv_odd4: %lld wrong flags over all 2^32 words\n", bad_flags);
    printf("fp4_factor_plain: %lld wrong of %lld (format, byte, position)\n", bad_factors, checked);
    return bad_flags != 0 || bad_factors != 0;
}

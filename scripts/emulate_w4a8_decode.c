/* scripts/emulate_w4a8_decode.c — the wgmma decode kernel's data movement (src/cuda/moe/grouped_gemm_rs_decode_kernel.cuh:
 * W4A8's MXFP4 and NVFP4 variants, dense and diagonal, and W8A8's FP8 ones) replayed on the CPU, thread by thread,
 * against a
 * direct sum over the dequantised weights and tokens. Not a test and not a substitute for running the kernel: it
 * checks the kernel's own index arithmetic (the lanes' copies and their swizzle, the pointers and byte counts of the
 * scale words, the funnel shift, ldmatrix's hand-out, the codes' conversion and the tokens' permutation against the
 * A fragment's K slots, NVFP4's half groups and scale selectors, the diagonal tokens, the chunks, the K split and
 * the quad sums) under the hardware's
 * documented layouts: ldmatrix (thread t gets bytes 4 (t % 4) .. + 3 of row t / 4 of each matrix, row r of matrix j
 * addressed by lane 8 j + r), wgmma's register A (CUTLASS ALayout_64x32: byte v0 of register v1 + 2 v2 is row
 * 16 w + lane / 4 + 8 v1, K 4 (lane % 4) + v0 + 16 v2), the accumulator (CLayout_64xN: register v0 + 2 v1 + 4 v2
 * is row 16 w + lane / 4 + 8 v1, column 2 (lane % 4) + v0 + 8 v2), and B through a K-major descriptor without
 * swizzle (row n of K half h at start + (n / 8) SBO + h LBO + (n % 8) 16). The index formulas below are the
 * kernel's, copied; keep them in step.
 *   gcc -O2 -std=c11 -Isrc -Iinclude scripts/emulate_w4a8_decode.c -o /tmp/emulate_w4a8 -lm && /tmp/emulate_w4a8
 * (about 4 minutes; an argument mx, nv or fp8 runs those cases only, big the mx ones with scales past 2^108) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/scalar.h"

enum { kStages = 4, kFastScaleMax = 235 /* the kernel's (grouped_gemm_rs_decode.cuh) */ };
static int g_big; /* argument big: MXFP4 scales past kFastScaleMax in some blocks, tokens' scales 2^-40 */
/* the ring of the weights' storage (ring_of in the kernel): FP4 rows of 64 bytes a block, FP8 of 128; a row's scale
 * bytes (FP4: 8 MXFP4, 16 NVFP4) */
static int kRowBytes, kWarpBytes, kScaleOff, kScaleRow, kStageBytes, kRingBytes;
static void set_ring(int fp8, int nv) {
    kRowBytes = fp8 ? 128 : 64, kWarpBytes = 16 * kRowBytes, kScaleOff = 4 * kWarpBytes, kScaleRow = nv ? 16 : 8;
    kStageBytes = kScaleOff + 4 * 16 * kScaleRow, kRingBytes = kStages * kStageBytes;
}
/* blocks a chunk of staged tokens for n B rows and ksplit groups (chunk_blocks in the kernel) */
static int chunk_blocks(int n, int ksplit) {
    return 32 * 1024 / (n * 128) > kStages * ksplit ? 32 * 1024 / (n * 128) : kStages * ksplit;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static uint32_t e4m3_even(uint32_t w) { return (w & 0x07070707u) * 4u + (w & 0x08080808u) * 16u; }
static uint32_t e4m3_odd(uint32_t w) { return ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u); }
static uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    const uint8_t by[8] = {a, a >> 8, a >> 16, a >> 24, b, b >> 8, b >> 16, b >> 24};
    uint32_t d = 0;
    for (int i = 0; i < 4; i++) d |= (uint32_t)by[(sel >> (4 * i)) & 7] << (8 * i);
    return d;
}
static uint32_t funnel_r(uint32_t lo, uint32_t hi, int s) { return (uint32_t)((((uint64_t)hi << 32) | lo) >> s); }
static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float e8m0(uint8_t e) { return e == 0xFF ? NAN : ldexpf(1.0f, (int)e - 127); }

/* one problem: B rows (brows, K) as E2M1 codes with E8M0 scales (a row's cols = K / 32 bytes) or (nv) E4M3 scales
 * (cols = K / 16), or (fp8) as E4M3 codes with a scale a 128x128 block (cols = kblocks a block row; f32, or E8M0
 * bytes), the scales starting soff bytes past an aligned address; tokens (T, K) as E4M3 codes with (T, kblocks) f32
 * scales */
typedef struct {
    int K, kblocks, cols, brows, T, glu, n_out, soff, fp8, e8m0, nv;
    uint8_t *codes;  /* (brows, K / 2), or (brows, K) */
    uint8_t *sbase;  /* 4-aligned, scales at sbase + soff */
    uint8_t *x;      /* (T, K) */
    float *xs;       /* (T, kblocks) */
} problem;

/* scale entry size and the address of row r's scales (FP8: its 128-row block's) */
static int scale_size(const problem *P) { return P->fp8 && !P->e8m0 ? 4 : 1; }
static const uint8_t *scale_row(const problem *P, int64_t r) {
    const int64_t br = r < 0 ? 0 : P->fp8 ? r >> 7 : r;
    return P->sbase + P->soff + br * P->cols * scale_size(P);
}
static float weight_value(const problem *P, int64_t r, int k) {
    if (!P->fp8) {
        const uint8_t byte = P->codes[r * (P->K / 2) + k / 2];
        const float c = moe__e2m1_to_f32((uint8_t)(k & 1 ? byte >> 4 : byte & 15));
        return P->nv ? c * moe__e4m3_to_f32(scale_row(P, r)[k / 16]) : c * e8m0(scale_row(P, r)[k / 32]);
    }
    const uint8_t *s = scale_row(P, r) + (k / 128) * scale_size(P);
    float sc;
    if (P->e8m0) sc = e8m0(*s);
    else memcpy(&sc, s, 4);
    return moe__e4m3_to_f32(P->codes[r * P->K + k]) * sc;
}

/* moe_decode_b_row: M row m of column tile tn */
static int64_t b_row(const problem *P, int64_t tn, int m) {
    if (P->glu) {
        const int64_t col = tn * 8 + (m & 7);
        return col >= P->n_out ? -1 : (m >> 3) * P->n_out + col; /* concatenated w13 */
    }
    const int64_t row = tn * 16 + m;
    return row < P->n_out ? row : -1;
}

/* the lanes' copy state, as the kernel's registers */
typedef struct {
    const uint8_t *wp, *sp;
    int kleft, todo, full, tail, full2, tail2; /* 2: NVFP4's word 2 (half 0) */
    int ch;
    uint32_t wdst[4], sdst;
    int scale_lane; /* copies a scale word (FP4: every lane; FP8: lanes 0 and 1) */
} lane_copy;
static lane_copy lanes[512];
static float acc[512][2][4], acc_d[512][16];
static uint8_t *copy_smem;
static int copy_shift, bad_reads, bad_copies;
static const problem *copy_P;

/* the copies lane tid issues into its stage at ring offset wr (cp.async: src-size bytes, zeros after) */
static void issue(int tid, uint32_t wr) {
    lane_copy *c = &lanes[tid];
    const problem *P = copy_P;
    if (c->todo <= 0) return;
    const uint8_t *codes_end = P->codes + (size_t)P->brows * (P->fp8 ? P->K : P->K / 2);
    const int srows = P->fp8 ? (P->brows + 127) / 128 : P->brows;
    const uint8_t *scale_end = P->sbase + P->soff + (size_t)srows * P->cols * scale_size(P);
    const int chunks = P->fp8 ? 4 : 2, per = P->fp8 ? 16 : 32;
    for (int h = 0; h < chunks; h++) {
        uint8_t *d = copy_smem + c->wdst[h] + wr;
        if (c->kleft <= per * h) memset(d, 0, 16);
        else {
            if (c->wp + 16 * h + 16 > codes_end) bad_reads++;
            memcpy(d, c->wp + 16 * h, 16);
        }
    }
    const int bytes = c->todo == 1 ? c->tail : c->full;
    const uint8_t *end = P->fp8 ? P->sbase + ((scale_end - P->sbase + 3) & ~3) : scale_end; /* FP8: the word */
    if (c->scale_lane) {
        uint8_t *d = copy_smem + c->sdst + wr;
        const uint8_t *src = P->fp8 ? P->sbase + ((c->sp - P->sbase) & ~3) : c->sp;
        memset(d, 0, 4);
        if (bytes) {
            if (src + bytes > end || src < P->sbase) bad_reads++;
            memcpy(d, src, (size_t)bytes);
        }
    }
    if (P->nv && !c->ch) { /* word 2 */
        const int bytes2 = c->todo == 1 ? c->tail2 : c->full2;
        uint8_t *d = copy_smem + c->sdst + 8 + wr;
        memset(d, 0, 4);
        if (bytes2) {
            if (c->sp + 8 + bytes2 > end || c->sp + 8 < P->sbase) bad_reads++;
            memcpy(d, c->sp + 8, (size_t)bytes2);
        }
    }
    if (c->kleft > (128 << copy_shift)) c->wp += kRowBytes << copy_shift;
    c->sp += (P->fp8 ? scale_size(P) : P->nv ? 8 : 4) << copy_shift, c->kleft -= 128 << copy_shift, c->todo--;
}

/* word_bytes in the kernel */
static int word_bytes(int end, int w) { return end - 4 * w < 0 ? 0 : end - 4 * w > 4 ? 4 : end - 4 * w; }

/* one CTA: column tiles 4 T0 .. 4 T0 + 3, tokens 0 .. T - 1 (tile rows), ksplit groups, chunks of cb blocks; kN
 * B rows, kTp tokens (diagonal when kN = 4 kTp, NVFP4 8 kTp). out[m row of the 64][token] */
static void cta(const problem *P, int64_t T0, int ksplit, int cb, int kN, int kTp, double out[64][16]) {
    const int nv = P->nv, K = P->K, kblocks = P->kblocks, kDiag = kTp * (nv ? 8 : 4) == kN, kGroupBytes = kN * 32;
    int shift = 0;
    while ((1 << shift) < ksplit) shift++;
    const int tokb = (cb * kN * 132 + 127) / 128 * 128;
    uint8_t *smem = calloc((size_t)(tokb + ksplit * kRingBytes), 1);
    float *xs = (float *)(smem + cb * kN * 128);
    memset(acc, 0, sizeof acc), memset(acc_d, 0, sizeof acc_d);
    const int nthreads = 128 * ksplit;
    for (int tid = 0; tid < nthreads; tid++) {
        const int wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
        const int64_t tn = T0 * 4 + warp;
        const int cm = lane >> 1, ch = lane & 1, fp4 = !P->fp8;
        const int64_t crow = b_row(P, tn, cm);
        const uint8_t *wrow = P->codes + (crow < 0 ? 0 : crow) * (fp4 ? K / 2 : K);
        const uint32_t ring = tokb + wg * kRingBytes, wdst = ring + warp * kWarpBytes + cm * kRowBytes;
        for (int c = 0; c < (fp4 ? 2 : 4); c++) {
            const int cc = (fp4 ? 2 : 4) * ch + c;
            lanes[tid].wdst[c] = wdst + ((fp4 ? cc ^ ((cm >> 1) & 3) : cc ^ (cm & 7)) << 4);
        }
        const uint8_t *srow = fp4 ? scale_row(P, crow) : scale_row(P, b_row(P, tn, 8 * (lane & 1)));
        const int soff = (int)((uintptr_t)(srow - P->sbase) & 3);
        const uint8_t *sword = fp4 ? srow - soff + 4 * ch : srow;
        lanes[tid].sdst = ring + kScaleOff + (fp4 ? (warp * 16 + cm) * kScaleRow + 4 * ch : warp * 8 + 4 * (lane & 1));
        lanes[tid].scale_lane = fp4 || lane < 2;
        lanes[tid].ch = ch;
        lanes[tid].wp = wrow + wg * kRowBytes + (kRowBytes / 2) * ch;
        const int block_scales = nv ? 8 : 4;
        lanes[tid].sp = sword + (fp4 ? block_scales : scale_size(P)) * wg;
        lanes[tid].kleft = crow < 0 ? -0x40000000 : K - 128 * wg - 64 * ch;
        const int tail_scales = P->cols - block_scales * (kblocks - 1), tail_sum = soff + tail_scales;
        const int srow_real = fp4 ? crow >= 0 : lane < 2 && b_row(P, tn, 8 * (lane & 1)) >= 0;
        const int last = wg == ((kblocks - 1) & (ksplit - 1));
        lanes[tid].full = !srow_real ? 0 : !fp4 ? 4 : word_bytes(soff + block_scales, ch);
        lanes[tid].tail = fp4 && srow_real && last ? word_bytes(tail_sum, ch) : lanes[tid].full;
        lanes[tid].full2 = nv && srow_real ? soff : 0;
        lanes[tid].tail2 = nv && srow_real && last ? word_bytes(tail_sum, 2) : lanes[tid].full2;
        lanes[tid].todo = wg < kblocks ? (kblocks - wg + ksplit - 1) >> shift : 0;
    }
    copy_smem = smem, copy_shift = shift, copy_P = P, bad_reads = 0;
    for (int j = 0; j < kStages - 1; j++)
        for (int tid = 0; tid < nthreads; tid++) issue(tid, j * kStageBytes);
    int i0[4] = {0, 0, 0, 0};
    for (int kb0 = 0; kb0 < kblocks; kb0 += cb) {
        const int kb1 = kb0 + cb < kblocks ? kb0 + cb : kblocks;
        /* staging, thread by thread */
        for (int tid = 0; tid < nthreads; tid++) {
            const int tn = tid & (kN - 1), tok = tn & (kTp - 1), tblk = tn / kTp;
            const int64_t arow = tok < P->T ? tok : -1;
            for (int it = tid; it < (kb1 - kb0) * 4 * kN; it += nthreads) {
                const int gl = it / kN, gk = kb0 * 4 + gl;
                uint32_t e[4] = {0, 0, 0, 0}, o[4] = {0, 0, 0, 0};
                if (arow >= 0 && 32 * gk < K && (!kDiag || (nv ? tblk >> 1 : tblk) == (gl & 3))) {
                    uint32_t x[8] = {0};
                    memcpy(x, P->x + arow * K + 32 * gk, 32 * gk + 16 < K ? 32 : 16);
                    for (int v = 0; v < 4; v++)
                        if (P->fp8) e[v] = x[v], o[v] = x[4 + v]; /* FP8: K in order */
                        else e[v] = prmt(x[2 * v], x[2 * v + 1], 0x6420), o[v] = prmt(x[2 * v], x[2 * v + 1], 0x7531);
                    if (nv) /* half tblk % 2 keeps words 2h, 2h + 1 of e and o */
                        for (int v = 0; v < 4; v++)
                            if (v >> 1 != (tblk & 1)) e[v] = o[v] = 0;
                }
                uint8_t *d = smem + gl * kGroupBytes + (tn >> 3) * 256 + (tn & 7) * 16;
                memcpy(d, e, 16), memcpy(d + 128, o, 16);
            }
            for (int it = tid; it < (kb1 - kb0) * kTp; it += nthreads) {
                const int kb = kb0 + it / kTp;
                xs[it] = arow < 0 ? 0.0f : P->xs[arow * kblocks + kb];
            }
        }
        /* every group's blocks of the chunk, in lockstep by local index (the groups are independent) */
        int here[4];
        for (int wg = 0; wg < ksplit; wg++) here[wg] = (kb1 > wg ? (kb1 - wg + ksplit - 1) >> shift : 0) - i0[wg];
        for (int wg = 0; wg < ksplit; wg++)
            for (int j = 0; j < here[wg]; j++) {
                const int i = i0[wg] + j, s = j % kStages;
                for (int l = 0; l < 128; l++) issue(wg * 128 + l, ((s + kStages - 1) % kStages) * kStageBytes);
                const int kb = wg + (i << shift), lb = kb - kb0;
                const uint32_t rd = s * kStageBytes, ring = tokb + wg * kRingBytes;
                /* per thread: ldmatrix, scale words, A registers of the 4 groups */
                uint32_t A[128][4][4];
                float fac[128][2][4], comp[128];
                uint32_t msw[128][2]; /* MXFP4: the thread's two scale words */
                float ws[128][2];
                float fnd[128][2][2][2], fnn[128][2][4][2]; /* NVFP4: diagonal and dense factors, as the kernel picks */
                for (int l = 0; l < 128 && P->fp8; l++) { /* FP8: ldmatrix gives the A registers; two block scales */
                    const int warp = l >> 5, lane = l & 31, g = lane >> 2;
                    for (int gj = 0; gj < 4; gj++)
                        for (int mi = 0; mi < 4; mi++) { /* matrix mi: row g from lane 8 mi + g */
                            const int src = 8 * mi + g, fr = (src & 7) + 8 * ((src >> 3) & 1);
                            const uint32_t addr =
                                ring + warp * kWarpBytes + fr * 128 + (((2 * gj + (src >> 4)) ^ (fr & 7)) << 4) + rd;
                            memcpy(&A[l][gj][mi], smem + addr + 4 * (lane & 3), 4);
                        }
                    const int64_t tn = T0 * 4 + warp;
                    for (int h = 0; h < 2; h++) {
                        uint32_t v;
                        memcpy(&v, smem + ring + kScaleOff + warp * 8 + 4 * h + rd, 4);
                        const int sb_lo = (int)((uintptr_t)(scale_row(P, b_row(P, tn, 8 * h)) - P->sbase) & 3);
                        ws[l][h] = P->e8m0 ? e8m0((uint8_t)(v >> (8 * ((sb_lo + kb) & 3)))) : bits_f(v);
                    }
                    comp[l] = 1.0f;
                }
                for (int l = 0; l < 128 && !P->fp8; l++) {
                    const int warp = l >> 5, lane = l & 31, g = lane >> 2;
                    uint32_t w0[4], w1[4];
                    for (int mj = 0; mj < 4; mj++) { /* matrix mj: rows from lanes 8 mj + r */
                        for (int half = 0; half < 2; half++) {
                            const int src_lane = 8 * mj + g; /* the lane that gives row g of matrix mj */
                            const int lr = src_lane & 7, lj = src_lane >> 3;
                            const uint32_t lm0 = ring + warp * kWarpBytes + lr * 64 + ((lj ^ ((lr >> 1) & 3)) << 4);
                            const uint32_t addr = (half ? lm0 + 8 * 64 : lm0) + rd;
                            uint32_t v;
                            memcpy(&v, smem + addr + 4 * (lane & 3), 4);
                            if (half) w1[mj] = v;
                            else w0[mj] = v;
                        }
                    }
                    const int tid = wg * 128 + l;
                    const int64_t tn = T0 * 4 + warp;
                    (void)tid;
                    const int sh[2] = {8 * (int)((uintptr_t)(scale_row(P, b_row(P, tn, g)) - P->sbase) & 3),
                                       8 * (int)((uintptr_t)(scale_row(P, b_row(P, tn, g + 8)) - P->sbase) & 3)};
                    uint32_t sw[4] = {0, 0, 0, 0};
                    for (int h = 0; h < 2; h++) {
                        uint32_t wd[3];
                        const uint32_t sr = ring + kScaleOff + (warp * 16 + g) * kScaleRow + 8 * kScaleRow * h + rd;
                        memcpy(wd, smem + sr, nv ? 12 : 8);
                        if (nv) sw[2 * h] = funnel_r(wd[0], wd[1], sh[h]), sw[2 * h + 1] = funnel_r(wd[1], wd[2], sh[h]);
                        else sw[h] = funnel_r(wd[0], wd[1], sh[h]);
                    }
                    if (nv) { /* the kernel's selections: diagonal by nsel, dense by word and half */
                        const int q = lane & 3;
                        for (int h = 0; h < 2; h++) {
                            for (int i = 0; i < (kTp == 4 ? 2 : 1); i++) {
                                const uint32_t nsel = kTp == 1   ? (uint32_t)(2 * q | (2 * q + 1) << 4)
                                                      : kTp == 2 ? (uint32_t)(q | (q + 4) << 4)
                                                                 : (uint32_t)((4 * i + (q >> 1)) | (4 * i + 2 + (q >> 1)) << 4);
                                const uint32_t pr = prmt(sw[2 * h], sw[2 * h + 1], nsel);
                                fnd[l][h][i][0] = moe__e4m3_to_f32((uint8_t)pr);
                                fnd[l][h][i][1] = moe__e4m3_to_f32((uint8_t)(pr >> 8));
                            }
                            for (int gj = 0; gj < 4; gj++) {
                                const uint32_t v = sw[2 * h + (gj >> 1)] >> (16 * (gj & 1));
                                fnn[l][h][gj][0] = moe__e4m3_to_f32((uint8_t)v);
                                fnn[l][h][gj][1] = moe__e4m3_to_f32((uint8_t)(v >> 8));
                            }
                        }
                    }
                    /* MXFP4's factors as the kernel forms them, in f32 (the magnitudes matter: a sum times a factor
                     * must not overflow): 2^(e - 121) and no comp where every byte of the warp's scale words is up to
                     * kFastScaleMax, else 2^(e - 143) (zero past K) and 2^22 in comp; NVFP4: its 2^6 in the
                     * epilogue */
                    const int groups = (K - 128 * kb) >> 5;
                    for (int h = 0; h < 2; h++) {
                        msw[l][h] = sw[h];
                        for (int gj = 0; gj < 4; gj++)
                            fac[l][h][gj] = gj < groups ? e8m0((uint8_t)(sw[h] >> (8 * gj))) * 0x1p-16f : 0.0f;
                    }
                    comp[l] = nv ? 1.0f : 0x1p22f;
                    for (int gj = 0; gj < 4; gj++) {
                        A[l][gj][0] = e4m3_even(w0[gj]), A[l][gj][1] = e4m3_even(w1[gj]);
                        A[l][gj][2] = e4m3_odd(w0[gj]), A[l][gj][3] = e4m3_odd(w1[gj]);
                    }
                }
                for (int warp = 0; warp < 4 && !P->fp8 && !nv; warp++) { /* the warp-uniform test */
                    int big = 0;
                    for (int l = 32 * warp; l < 32 * warp + 32; l++)
                        for (int b = 0; b < 8; b++) big |= ((msw[l][b >> 2] >> (8 * (b & 3))) & 0xFF) > kFastScaleMax;
                    for (int l = 32 * warp; l < 32 * warp + 32 && !big; l++) {
                        comp[l] = 1.0f;
                        for (int h = 0; h < 2; h++)
                            for (int gj = 0; gj < 4; gj++)
                                fac[l][h][gj] = bits_f((((msw[l][h] >> (8 * gj)) & 0xFF) + 6) << 23);
                    }
                }
                /* the wgmmas: A (64 x 32) from the registers, B (kN x 32) from the descriptor, D in f32 */
                static float D[4][64][32];
                for (int gj = 0; gj < 4; gj++) {
                    float Am[64][32], Bm[32][32];
                    for (int l = 0; l < 128; l++)
                        for (int r = 0; r < 4; r++)
                            for (int v0 = 0; v0 < 4; v0++) {
                                const int v1 = r & 1, v2 = r >> 1, warp = l >> 5, lane = l & 31;
                                const int m = 16 * warp + lane / 4 + 8 * v1, k = 4 * (lane % 4) + v0 + 16 * v2;
                                Am[m][k] = moe__e4m3_to_f32((uint8_t)(A[l][gj][r] >> (8 * v0)));
                            }
                    const uint32_t start = (uint32_t)((lb * 4 + gj) * kGroupBytes);
                    for (int n = 0; n < kN; n++)
                        for (int k = 0; k < 32; k++)
                            Bm[n][k] = moe__e4m3_to_f32(smem[start + (n / 8) * 256 + (k / 16) * 128 + (n % 8) * 16 + k % 16]);
                    for (int m = 0; m < 64; m++)
                        for (int n = 0; n < kN; n++) {
                            double sacc = 0;
                            for (int k = 0; k < 32; k++) sacc += (double)Am[m][k] * Bm[n][k];
                            D[gj][m][n] = (float)sacc;
                        }
                }
                /* per thread: the accumulators */
                for (int l = 0; l < 128; l++) {
                    const int warp = l >> 5, lane = l & 31, g = lane >> 2, q = lane & 3, tid = wg * 128 + l;
                    const float *xb = xs + lb * kTp;
                    if (nv && !kDiag) { /* dense halves: sums over the groups, then both halves of a token */
                        float sum[16];
                        for (int r = 0; r < kN / 2; r++) {
                            const int v0 = r & 1, v1 = (r >> 1) & 1, v2 = r >> 2;
                            const int m = 16 * warp + g + 8 * v1, col = 2 * q + v0 + 8 * v2;
                            sum[r] = 0;
                            for (int gj = 0; gj < 4; gj++) sum[r] = fmaf(D[gj][m][col], fnn[l][v1][gj][8 * v2 / kTp], sum[r]);
                        }
                        for (int n = 0; n < kTp / 8; n++)
                            for (int e = 0; e < 4; e++) {
                                const float v = sum[4 * n + e] + sum[4 * (kTp / 8 + n) + e];
                                acc[tid][n][e] = fmaf(v, xb[8 * n + 2 * q + (e & 1)], acc[tid][n][e]);
                            }
                        continue;
                    }
                    for (int r = 0; r < kN / 2; r++) {
                        const int v0 = r & 1, v1 = (r >> 1) & 1, v2 = r >> 2;
                        const int m = 16 * warp + g + 8 * v1, col = 2 * q + v0 + 8 * v2;
                        if (P->fp8) { /* the 4 groups summed in the tensor core, then both scales */
                            float d = 0;
                            for (int gj = 0; gj < 4; gj++) d += D[gj][m][col];
                            acc[tid][v2][2 * v1 + v0] = fmaf(d, ws[l][v1] * xb[8 * v2 + 2 * q + v0], acc[tid][v2][2 * v1 + v0]);
                        } else if (kDiag && nv) { /* half group col / kTp in column col */
                            float d = 0;
                            for (int gj = 0; gj < 4; gj++) d += D[gj][m][col];
                            const float fr = kTp == 1 ? fnd[l][v1][0][v0] : kTp == 2 ? fnd[l][v1][0][v2]
                                                                                  : fnd[l][v1][v2 >> 1][v2 & 1];
                            acc_d[tid][r] = fmaf(d * fr, xb[(2 * q + v0) & (kTp - 1)], acc_d[tid][r]);
                        } else if (kDiag) { /* the 4 groups summed in one accumulator, group col / kTp in column col */
                            float d = 0;
                            for (int gj = 0; gj < 4; gj++) d += D[gj][m][col];
                            const int G = col / kTp;
                            const float x = xb[(2 * q + v0) & (kTp - 1)] * comp[l];
                            acc_d[tid][r] = fmaf(d * fac[l][v1][G], x, acc_d[tid][r]);
                        } else {
                            float sum = 0;
                            for (int gj = 0; gj < 4; gj++) sum = fmaf(D[gj][m][col], fac[l][v1][gj], sum);
                            acc[tid][v2][2 * v1 + v0] = fmaf(sum, xb[8 * v2 + 2 * q + v0] * comp[l], acc[tid][v2][2 * v1 + v0]);
                        }
                    }
                }
            }
        for (int wg = 0; wg < ksplit; wg++) {
            if (kb1 != kblocks && here[wg] % kStages) printf("  a chunk of %d blocks for group %d\n", here[wg], wg);
            i0[wg] += here[wg];
        }
    }
    /* diagonal: per-thread sums over groups, then the quad sums */
    if (kDiag)
        for (int w = 0; w < nthreads / 32; w++) {
            float v[32][4];
            for (int lane = 0; lane < 32; lane++)
                for (int e = 0; e < 4; e++) {
                    v[lane][e] = acc_d[32 * w + lane][e];
                    for (int k = 1; k < kN / 8; k++) v[lane][e] += acc_d[32 * w + lane][4 * k + e];
                }
            if (kTp == 1) /* both columns token 0 */
                for (int lane = 0; lane < 32; lane++)
                    v[lane][0] += v[lane][1], v[lane][2] += v[lane][3], v[lane][1] = v[lane][3] = 0;
            for (int m = kTp > 1 ? kTp / 2 : 1; m < 4; m <<= 1) {
                float nv[32][4];
                for (int lane = 0; lane < 32; lane++)
                    for (int e = 0; e < 4; e++) nv[lane][e] = v[lane][e] + v[lane ^ m][e];
                memcpy(v, nv, sizeof v);
            }
            for (int lane = 0; lane < 32; lane++)
                for (int e = 0; e < 4; e++) acc[32 * w + lane][0][e] = 2 * (lane & 3) < kTp ? v[lane][e] : 0.0f;
        }
    /* the groups' sum in group order, then the epilogue's (row, token) */
    for (int l = 0; l < 128; l++) {
        const int warp = l >> 5, lane = l & 31, g = lane >> 2, q = lane & 3;
        float a[2][4];
        memcpy(a, acc[l], sizeof a);
        for (int w = 1; w < ksplit; w++)
            for (int k = 0; k < 8; k++) a[k >> 2][k & 3] += acc[w * 128 + l][k >> 2][k & 3];
        for (int n = 0; n < 2; n++)
            for (int e = 0; e < 4; e++) {
                const int m = 16 * warp + g + 8 * (e >> 1), tok = 2 * q + (e & 1) + 8 * n;
                out[m][tok] = a[n][e] * (nv ? 64.0f : 1.0f); /* the epilogue's factor */
            }
    }
    if (bad_reads) printf("  %d copies read outside the codes or scales\n", bad_reads);
    bad_copies += bad_reads;
    free(smem);
}

/* storage: 0 MXFP4, 1 FP8 (f32 scales, or E8M0 with e8m0s), 2 NVFP4 */
static int run_as(int storage, int e8m0s, int K, int T, int glu, int n_out, int soff, int ksplit, int cb_max, int kN,
                  int kTp, int64_t T0) {
    problem P = {0};
    const int fp8 = storage == 1, nv = storage == 2;
    P.K = K, P.kblocks = (K + 127) / 128, P.glu = glu, P.n_out = n_out, P.T = T, P.soff = soff;
    P.fp8 = fp8, P.nv = nv, P.e8m0 = e8m0s, P.cols = fp8 ? P.kblocks : nv ? K / 16 : K / 32;
    P.brows = glu ? 2 * n_out : n_out;
    set_ring(fp8, nv);
    const int srows = fp8 ? (P.brows + 127) / 128 : P.brows;
    const size_t code_bytes = (size_t)P.brows * (fp8 ? K : K / 2), scale_bytes = (size_t)srows * P.cols * scale_size(&P);
    P.codes = malloc(code_bytes);
    P.sbase = malloc(scale_bytes + 8);
    P.x = malloc((size_t)T * K);
    P.xs = malloc(sizeof(float) * (size_t)T * P.kblocks);
    for (size_t i = 0; i < code_bytes; i++) {
        uint8_t c = (uint8_t)rnd();
        if (fp8 && (c & 0x7F) == 0x7F) c &= 0xFE; /* no NaN codes */
        P.codes[i] = c;
    }
    for (size_t i = 0; i < scale_bytes + 8; i++) /* g_big: an eighth of them past kFastScaleMax */
        P.sbase[i] = (uint8_t)(g_big && rnd() % 8 == 0 ? 236 + rnd() % 10 : 110 + rnd() % 30);
    if (nv) /* E4M3 scales: normal ones, subnormal ones and zeros, no NaN */
        for (size_t i = 0; i < scale_bytes + 8; i++) {
            const uint32_t r = rnd() % 64;
            P.sbase[i] = (uint8_t)(r == 0 ? 0 : r == 1 ? 1 + rnd() % 7 : 0x18 + rnd() % 0x50);
        }
    if (fp8 && !e8m0s) /* f32 scales, aligned */
        for (size_t i = 0; i < scale_bytes / 4; i++) {
            const float v = ldexpf(1.0f + (rnd() % 100) / 128.0f, -(int)(rnd() % 8));
            memcpy(P.sbase + 4 * i, &v, 4);
        }
    for (size_t i = 0; i < (size_t)T * K; i++) {
        uint8_t c = (uint8_t)rnd();
        if ((c & 0x7F) == 0x7F) c &= 0xFE; /* no NaN codes */
        P.x[i] = c;
    }
    for (size_t i = 0; i < (size_t)T * P.kblocks; i++) /* g_big: small enough that every output stays finite */
        P.xs[i] = ldexpf(1.0f + (rnd() % 100) / 100.0f, g_big ? -40 : -8);
    if (!cb_max) cb_max = chunk_blocks(kN, ksplit); /* 0: the kernel's chunk */
    const int cb = P.kblocks < cb_max ? P.kblocks : cb_max;
    static double out[64][16];
    for (int m = 0; m < 64; m++)
        for (int t = 0; t < 16; t++) out[m][t] = NAN;
    cta(&P, T0, ksplit, cb, kN, kTp, out);
    double worst = 0;
    int bad = 0;
    for (int warp = 0; warp < 4; warp++)
        for (int mm = 0; mm < 16; mm++) {
            const int64_t r = b_row(&P, T0 * 4 + warp, mm);
            for (int t = 0; t < (kTp < 16 ? kTp : 16); t++) {
                double ref = 0, mag = 0; /* the sum, and the sum of its terms' magnitudes */
                if (r >= 0 && t < T)
                    for (int k = 0; k < K; k++) {
                        const double term = (double)weight_value(&P, r, k) * moe__e4m3_to_f32(P.x[t * K + k]) *
                                            P.xs[t * P.kblocks + k / 128];
                        ref += term, mag += fabs(term);
                    }
                const double got = out[16 * warp + mm][t];
                const double err = fabs(got - ref) / (mag + 1e-30); /* f32 sums: a few 2^-24 of mag */
                if (r >= 0 && t < T) {
                    if (!(err < 1e-5)) bad++;
                    if (err > worst) worst = err;
                }
            }
        }
    printf("%s K %5d T %2d %s n %4d soff %d ksplit %d cb %2d N %2d Tp %2d tile %lld: worst error / magnitude %.2e%s\n",
           fp8 ? (e8m0s ? "fp8 e8m0" : "fp8 f32 ") : nv ? "nvfp4   " : "mxfp4   ", K, T, glu ? "glu  " : "plain", n_out,
           soff, ksplit, cb,
           kN, kTp, (long long)T0, worst, bad ? "  FAIL" : "");
    free(P.codes), free(P.sbase), free(P.x), free(P.xs);
    return bad != 0;
}

static int run(int nv, int K, int T, int glu, int n_out, int soff, int ksplit, int cb_max, int kN, int kTp,
               int64_t T0) {
    return run_as(nv ? 2 : 0, 0, K, T, glu, n_out, soff, ksplit, cb_max, kN, kTp, T0);
}

/* n random problems over every storage and token layout: K, N, GLU, the scales' offset, the split, the tile, the
 * tokens a tile */
static int fuzz(int n) {
    static const int modes[4][5][2] = {{{8, 2}, {16, 4}, {8, 8}, {16, 16}},
                                       {{8, 8}, {16, 16}},
                                       {{8, 1}, {16, 2}, {32, 4}, {16, 8}, {32, 16}},
                                       {{8, 8}, {16, 16}}};
    static const int nmodes[4] = {4, 2, 5, 2};
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const int st = (int)(rnd() % 4), e8 = st == 3, storage = st == 3 ? 1 : st; /* mx, fp8 f32, nv, fp8 e8m0 */
        const int mo = (int)(rnd() % (uint32_t)nmodes[st]), kN = modes[st][mo][0], kTp = modes[st][mo][1];
        const int fp8 = storage == 1, glu = (int)(rnd() % 2);
        const int K = fp8 ? 16 * (1 + (int)(rnd() % 400)) : 32 * (1 + (int)(rnd() % 200));
        const int n_out = fp8 && glu ? 128 * (1 + (int)(rnd() % 16)) : 8 * (1 + (int)(rnd() % 400));
        const int soff = fp8 && !e8 ? 0 : (int)(rnd() % 4), ksplit = 1 << (rnd() % 3);
        const int64_t col_tiles = glu ? (n_out + 7) / 8 : (n_out + 15) / 16, T0 = (int64_t)(rnd() % ((col_tiles + 3) / 4));
        const int T = 1 + (int)(rnd() % (uint32_t)kTp);
        bad += run_as(storage, e8, K, T, glu, n_out, soff, ksplit, 0, kN, kTp, T0);
    }
    return bad;
}

/* argument: mx, nv or fp8 runs only those cases (all by default); big the mx ones with scales past the fast factors'
 * range; fuzz [n] runs n random problems instead */
int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : "";
    int bad = 0;
    if (!strcmp(only, "big")) g_big = 1, only = "mx";
    if (!strcmp(only, "fuzz")) {
        bad = fuzz(argc > 2 ? atoi(argv[2]) : 200);
        printf("%s\n", bad || bad_copies ? "FAIL" : "every output within 1e-5 of its terms' magnitude, no copy outside the inputs");
        return bad || bad_copies;
    }
    /* the kernel's fast factors: 2^(e - 121) from the dense path's shifted word and the diagonal's byte, up to 248 */
    for (uint32_t e = 0; e <= 248; e++)
        for (int j = 0; j < 4; j++) {
            const uint32_t sw = (0x5A5A5A5Au & ~(0xFFu << (8 * j))) | e << (8 * j), e6 = sw + 0x06060606u;
            const float dense = bits_f((j < 3 ? e6 << (23 - 8 * j) : e6 >> 1) & 0x7F800000u);
            const float diag = bits_f((((sw >> (8 * j)) & 0xFF) + 6) << 23);
            if (dense != e8m0((uint8_t)e) * 64.0f || diag != dense) bad++;
        }
    printf("fast factors: %s\n", bad ? "WRONG" : "2^(e - 121) for every e up to 248");
    /* (kN, kTp): MXFP4 diagonal 2 and 4 tokens, dense 8 and 16; NVFP4 diagonal 1, 2 and 4, dense 8 and 16 */
    const int modes[2][5][2] = {{{8, 2}, {16, 4}, {8, 8}, {16, 16}}, {{8, 1}, {16, 2}, {32, 4}, {16, 8}, {32, 16}}};
    for (int nv = 0; nv < 2; nv++)
        for (int mo = 0; mo < (nv ? 5 : 4) && (!*only || !strcmp(only, nv ? "nv" : "mx")); mo++) {
            const int kN = modes[nv][mo][0], kTp = modes[nv][mo][1], T = kTp < 16 ? kTp : 11;
            const int cbm = 0; /* the kernel's chunk */
            bad += run(nv, 2880, T, 1, 2880, 2, 1, cbm, kN, kTp, 3);  /* GPT-OSS GEMM 1: K ends at half a block */
            bad += run(nv, 2880, T, 0, 200, 3, 1, cbm, kN, kTp, 1);   /* rows at scale offsets 3 and 1: the last
                                                                         block's last scale in a later word */
            bad += run(nv, 2880, T, 0, 2880, 0, 2, cbm, kN, kTp, 44); /* GEMM 2, two groups, the last column tile */
            bad += run(nv, 352, T, 1, 40, 1, 1, cbm, kN, kTp, 1);     /* K 352 (3 groups past K), rows past N */
            bad += run(nv, 4224, T, 0, 100, 3, 4, 16, kN, kTp, 1);    /* three chunks over 4 groups, odd soff */
            bad += run(nv, 4224, T, 1, 64, 1, 2, cbm, kN, kTp, 0);    /* chunks by the budget */
            bad += run(nv, 160, T, 0, 48, 2, 1, cbm, kN, kTp, 0);     /* one block, 5 (10) scales a row */
            bad += run(nv, 160, T, 1, 48, 2, 4, cbm, kN, kTp, 0);     /* MOE_GEMM_RS_KSPLIT=4 past K's blocks */
            if (kTp == 4) bad += run(nv, 352, 3, 0, 40, 1, 1, cbm, kN, kTp, 0); /* a padding row in the tile */
            if (nv) bad += run(nv, 7168, T, 1, 2048, 0, 4, cbm, kN, kTp, 7); /* DeepSeek-V3 GEMM 1 */
        }
    /* FP8 in 128x128 blocks (f32 and E8M0 scales), dense tokens: DeepSeek-V3's shapes and the edges */
    for (int e8 = 0; e8 < 2; e8++)
        for (int mo = 2; mo < 4 && (!*only || !strcmp(only, "fp8")); mo++) {
            const int kN = modes[0][mo][0], T = kN == 8 ? 8 : 13, cbm = 0;
            bad += run_as(1, e8, 7168, T, 1, 2048, e8 ? 1 : 0, 1, cbm, kN, kN, 5);  /* GEMM 1: chunks */
            bad += run_as(1, e8, 2048, T, 0, 7168, e8 ? 3 : 0, 2, cbm, kN, kN, 111); /* GEMM 2, the last tiles */
            bad += run_as(1, e8, 336, T, 1, 200, e8 ? 2 : 0, 1, cbm, kN, kN, 6);     /* K % 128 = 80, rows past N */
            bad += run_as(1, e8, 4224, T, 0, 300, 0, 4, 16, kN, kN, 4);              /* 4 groups, 3 chunks */
        }
    printf("%s\n", bad || bad_copies ? "FAIL" : "every output within 1e-5 of its terms' magnitude, no copy outside the inputs");
    return bad || bad_copies;
}

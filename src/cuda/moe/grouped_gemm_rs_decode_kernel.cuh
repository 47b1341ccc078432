/* grouped_gemm_rs_decode_kernel.cuh — the kernel of grouped_gemm_rs_decode.cu (which alone includes it): W8A8's
 * decode GEMMs (the SMALL tile: 16 rows an expert; FP8 inputs: E4M3 codes, an f32 scale a 1x128 group, the layer's
 * act_format) on Hopper's FP8 tensor cores through wgmma with the weights as A
 * in registers ("RS", sm_90a), for three weight storages:
 *  - MXFP4 (W4A8: E2M1 codes, an E8M0 scale a 32-code block). An E2M1 code c is exactly the E4M3 byte
 *    ((c & 8) << 4) | ((c & 7) << 2) times 2^6 (its exponent and mantissa bits land on E4M3's low exponent bits and
 *    top mantissa bit, bias 7 instead of 1; the subnormal code 0.5 on E4M3's subnormal), so a word of 8 codes becomes
 *    two words of E4M3 bytes with seven integer operations (e4m3_even, e4m3_odd), and a block's scale and the 2^6
 *    leave the tensor core as one f32 factor a row and 32-code group. Why: the bf16 FP4 decode kernel
 *    (grouped_gemm_fp4_decode.cu) spends four operations a pair of codes on bf16 weights and is bound by them.
 *  - NVFP4 (W4A8: the same codes, an E4M3 scale a 16-code block, the group's f32 global): as MXFP4, with each
 *    token's 32-code group split into two B rows (columns), one a 16-code half with zeros in the other's K slots, so
 *    that each column leaves the tensor core under one scale (its f32 value, exact from E4M3); the 2^6 and the
 *    global apply in the epilogue.
 *  - FP8 in 128x128 blocks (f32 or E8M0 scales): ldmatrix hands wgmma the codes as they are, and a block's 4 wgmmas
 *    sum in the tensor core before its two scales (a row's 128-row block's, the token's group's) apply. Why: the
 *    mma.sync decode kernel (grouped_gemm_fp8_decode.cu) turns every code into f16 first (Hopper has no E4M3
 *    mma.sync), 48 of its 140 instructions a block.
 * Contract in grouped_gemm.cuh (moe__cuda_grouped_gemm_rs_decode); the arithmetic is the CPU reference's (each
 * weight code times its scale, each input code times its group's scale, products summed in f32), up to the order
 * of the sums and the tensor cores' own within a wgmma.
 *
 * Layout. A CTA takes one 16-row tile and 64 B rows (4 column tiles of gemm_decode.cuh: GLU the gate and up rows of
 * 32 output columns, plain 64 columns), with ksplit warpgroups (1, 2 or 4) splitting its K blocks of 128 (group w
 * takes blocks w, w + ksplit, ...) and summed in shared memory in group order (deterministic). Warp w of a group
 * holds column tile 4 T + w, the A rows 16 w .. 16 w + 15 of the wgmma (m64nNk32, N = 8, 16 or 32). Each warp streams
 * its rows' codes and scale words through its own 4-stage cp.async ring (so a __syncwarp orders it), 16-byte
 * chunks stored XOR-swizzled so that ldmatrix reads them without bank conflicts. FP4: ldmatrix hands thread
 * (g, q) word q of each 32-code group of rows g and g + 8, so wgmma j of a block covers exactly group j; its product
 * leaves in f32 and is added times the rows' factors (dense tokens), or, for tiles of up to 2 or 4 rows (NVFP4: 1, 2
 * or 4), the 4 groups' (8 half groups') tokens sit in columns of their own (diagonal: column c holds token c % kTp of
 * scale block c / kTp, zeros elsewhere), so that the block's 4 wgmmas sum into one accumulator.
 * The tokens' codes of a chunk of K (all of K where it fits 32 KB; 64 KB at N = 32 with 4 warpgroups) are staged
 * once a CTA in the wgmma's K-major layout without swizzle (MXFP4: each 32-byte group permuted to the order the
 * conversion gives the weights, even codes in K slots 0-15, odd ones in 16-31; NVFP4's half h keeps K slots 8h ..
 * 8h + 7 and 16 + 8h .. 16 + 8h + 7), padding rows and K past the end as zeros, with the group scales.
 * MXFP4 scales: the factor 2^(e - 121) is (e + 6) << 23 as f32 bits, taken up to e = 235 (kFastScaleMax), where a
 * block's products times it still fit f32 (the true value is formed as (sum x factor) x token scale); a block where
 * some lane's scale passes that (a warp-uniform test) takes exact factors 2^(e - 143) (NaN for 0xFF, zero past K)
 * and 2^22 on the token scale, so that the sum times the factor stays below 2^125 and the factors are normal f32
 * down to scales of 2^-110. scripts/emulate_w4a8_decode.c replays the index arithmetic of every variant on the CPU
 * (and the factors' f32 magnitudes: its argument big): a change to the copies,
 * the swizzles, the token staging or the scale words goes there too. */
#ifndef MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_KERNEL_CUH
#define MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_KERNEL_CUH
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "cuda/moe/grouped_gemm_rs_decode.cuh"

namespace {

template <int F, bool kGlu, int kN, int kTp, bool kPipe>
__global__ void __launch_bounds__(512, 1) gemm_rs_decode_kernel(const moe_gemm_params p, const moe_gemm_fp8 f,
                                                                 int ksplit, int cb) {
    /* the wait for the previous grid comes after the first codes are on their way: before it, only what was written
     * before the previous grid started is read (the permutation, weights, scales) */
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    using R = ring_of<F>;
    constexpr bool kFp4 = R::kFp4, kNv = R::kNv, kE8m0 = F == MOE_B_E4M3_E8M0;
    constexpr int kRowBytes = R::kRowBytes, kWarpBytes = R::kWarpBytes, kScaleOff = R::kScaleOff;
    constexpr int kStageBytes = R::kStageBytes, kRingBytes = R::kRingBytes;
    extern __shared__ __align__(128) uint8_t smem[];
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2,
              q = lane & 3;
    const int K = p.k, kblocks = (K + 127) >> 7, shift = __ffs(ksplit) - 1;
    const int nk = wg < kblocks ? (kblocks - wg + ksplit - 1) >> shift : 0; /* this group's blocks */
    moe_gemm_tile t; /* p.n_tiles counts groups of 4 column tiles; t.tile_n becomes this warp's */
    if (!moe_gemm_locate_warp(p, kDecodeRows, blockIdx.x, t, lane)) return; /* the same for the whole CTA */
    t.tile_n = t.tile_n * 4 + warp;
    const uint32_t smem_s = (uint32_t)__cvta_generic_to_shared(smem);
    const uint32_t tok_s = smem_s;
    float *const xs = reinterpret_cast<float *>(smem + cb * kN * 128);
    const uint32_t ring = smem_s + token_bytes(cb, kN) + wg * kRingBytes;

    /* the lane's copies: half h = lane % 2 of row m = lane / 2 (FP4: 32 bytes, chunks 2h, 2h + 1 of the row's 4,
     * XOR-swizzled by the row pair; FP8: 64 bytes, chunks 4h .. 4h + 3 of 8, swizzled by the row: either way
     * ldmatrix then reads without bank conflicts) and a scale word (MXFP4: word h of the aligned pair holding the
     * row's 4 scales; NVFP4: word h of the three holding its 8, and word 2 on half 0; FP8: lanes 0 and 1, the scale of
     * M rows 0-7 and 8-15, each 16-aligned run in one 128-row block) */
    const int cm = lane >> 1, ch = lane & 1;
    const int64_t crow = moe_decode_b_row<kGlu>(p, t, cm);
    const uint8_t *const wrow = static_cast<const uint8_t *>(p.b) +
                                t.group * (kFp4 ? p.b_group_stride / 2 : p.b_group_stride) +
                                (crow < 0 ? 0 : crow) * (kFp4 ? K / 2 : K);
    const uint32_t wdst = ring + warp * kWarpBytes + cm * kRowBytes;
    auto chunk_at = [&](int c) { return wdst + ((kFp4 ? c ^ ((cm >> 1) & 3) : c ^ (cm & 7)) << 4); };
    uint32_t wdst_c[kFp4 ? 2 : 4];
#pragma unroll
    for (int c = 0; c < (kFp4 ? 2 : 4); c++) wdst_c[c] = pinned(chunk_at((kFp4 ? 2 : 4) * ch + c));
    const int cols = p.bs.cols; /* scale entries a row (block row for FP8) */
    auto scale_row = [&](int64_t r) { /* FP4: the row's scales; FP8: its 128-row block's */
        const int64_t br = r < 0 ? 0 : kFp4 ? r : r >> 7;
        return static_cast<const uint8_t *>(p.bs.scale) +
               (t.group * p.bs.group_stride + br * cols) * (kFp4 || kE8m0 ? 1 : 4);
    };
    const uint8_t *const srow = kFp4 ? scale_row(crow) : scale_row(moe_decode_b_row<kGlu>(p, t, 8 * (lane & 1)));
    const int soff = (int)((uintptr_t)srow & 3);
    /* FP4: the aligned word ch of the words holding block 0's scales; FP8: block 0's scale (its word when copied) */
    const uint8_t *const sword = kFp4 ? srow - soff + 4 * ch : srow;
    /* where a copy of no scale bytes points: the row's first aligned word */
    const uint8_t *const snone = reinterpret_cast<const uint8_t *>(pinned64((uintptr_t)(srow - soff)));
    const uint32_t sdst =
        pinned(ring + kScaleOff + (kFp4 ? (warp * 16 + cm) * R::kScaleRow + 4 * ch : warp * 8 + 4 * (lane & 1)));

    /* the lane's next block to copy: its codes (the pointer stops on the lane's last block with codes inside K, so
     * that it stays valid) and scale words (every block's), and the K values from its first chunk (a row past N: far
     * below zero, so nothing is read). FP4's scale words take the bytes up to the block's last scale and no further:
     * all its scales (full), or the row's last block's (tail, on the group that has that block); FP8's a whole word
     * on lanes 0 and 1 where the rows are real (as the W8A8 decode kernel copies them). */
    constexpr int kBlockScales = kNv ? 8 : 4; /* FP4: a block's scales a row */
    const int sbytes = kFp4 ? kBlockScales : kE8m0 ? 1 : 4; /* a block's scale bytes: FP8 one f32 or E8M0 */
    const uint8_t *wp = wrow + wg * kRowBytes + (kRowBytes / 2) * ch, *sp = sword + sbytes * wg;
    int kleft = crow < 0 ? -0x40000000 : K - 128 * wg - 64 * ch;
    const int tail_scales = cols - kBlockScales * (kblocks - 1), tail_sum = soff + tail_scales;
    const bool srow_real = kFp4 ? crow >= 0 : lane < 2 && moe_decode_b_row<kGlu>(p, t, 8 * (lane & 1)) >= 0;
    const bool last = wg == ((kblocks - 1) & (ksplit - 1)); /* the group with the row's last block */
    /* the bytes of word w of the words from the aligned start that hold scales up to byte `end` of them: exact, for
     * the last row's bytes end the allocation */
    auto word_bytes = [](int end, int w) { return end - 4 * w < 0 ? 0 : end - 4 * w > 4 ? 4 : end - 4 * w; };
    const int full = !srow_real ? 0 : !kFp4 ? 4 : word_bytes(soff + kBlockScales, ch);
    const int tail = kFp4 && srow_real && last ? word_bytes(tail_sum, ch) : full;
    /* NVFP4's word 2 (half 0's second copy) */
    const int full2 = kNv && srow_real ? soff : 0, tail2 = kNv && srow_real && last ? word_bytes(tail_sum, 2) : full2;
    const int wstep = (int)pinned((uint32_t)kRowBytes << shift), kstep = (int)pinned(128u << shift);
    const int sstep = (int)pinned((uint32_t)sbytes << shift);
    /* the group's next block into the stage at ring offset wr; a group committed either way, so that the counts
     * match. Chunks past K and rows past N fill zeros and read nothing. */
    int todo = nk; /* blocks to issue */
    auto issue = [&](uint32_t wr) {
        if (todo > 0) {
            /* chunk c holds K values 32c .. (FP4) or 16c .. (FP8) from the lane's first */
#pragma unroll
            for (int c = 0; c < (kFp4 ? 2 : 4); c++)
                moe_decode_copy16_cg_if(wdst_c[c] + wr, wp + 16 * c, kleft <= (kFp4 ? 32 : 16) * c);
            const int bytes = todo == 1 ? tail : full;
            const uint8_t *src = kFp4 ? sp : reinterpret_cast<const uint8_t *>((uintptr_t)sp & ~(uintptr_t)3);
            if (kFp4 || lane < 2) /* FP8: the other lanes would zero the same words */
                moe_cp_async4(sdst + wr, bytes ? src : snone, bytes);
            if (kNv && !ch) {
                const int bytes2 = todo == 1 ? tail2 : full2;
                moe_cp_async4(sdst + 8 + wr, bytes2 ? sp + 8 : snone, bytes2);
            }
            if (kleft > kstep) wp += wstep;
            sp += sstep, kleft -= kstep, todo--; /* every block has scales: a copy of none reads elsewhere */
        }
        moe_cp_async_commit();
    };
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) issue(j * kStageBytes);
    moe_pdl_wait(); /* the tokens and their scales are the previous grid's */

    /* what thread (g, q) reads: rows g and g + 8 through ldmatrix (lane l gives row l % 8 (+ 8) of matrix l / 8, the
     * block's 32-code group l / 8), their scale words and where their scales start in them */
    const int lr = lane & 7, lj = lane >> 3;
    /* (each storage pins only its own addresses: a pinned value is kept even where nothing reads it) */
    const uint32_t lm0 = kFp4 ? pinned(ring + warp * kWarpBytes + lr * 64 + ((lj ^ ((lr >> 1) & 3)) << 4)) : 0;
    const uint32_t sr0 = kFp4 ? pinned(ring + kScaleOff + (warp * 16 + g) * R::kScaleRow) : 0, lm1 = lm0 + 8 * 64,
                   sr1 = sr0 + 8 * R::kScaleRow;
    const int sh0 = 8 * (int)((uintptr_t)scale_row(moe_decode_b_row<kGlu>(p, t, g)) & 3);
    const int sh1 = 8 * (int)((uintptr_t)scale_row(moe_decode_b_row<kGlu>(p, t, g + 8)) & 3);
    /* FP8: ldmatrix of group j hands thread (g, q) its A registers directly (matrices: rows 0-7 and 8-15 of K
     * 32j .. + 15, then of + 16 .. + 31; lane l gives row (l % 8) + 8 ((l / 8) % 2) of chunk 2j + l / 16); the two
     * block scales of M rows 0-7 and 8-15, and where an E8M0 one sits in its word */
    uint32_t lmf[4];
    const int fr = (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
    for (int j = 0; j < 4; j++)
        lmf[j] = kFp4 ? 0 : pinned(ring + warp * kWarpBytes + fr * 128 + (((2 * j + (lane >> 4)) ^ (fr & 7)) << 4));
    const uint32_t srf = kFp4 ? 0 : pinned(ring + kScaleOff + warp * 8);
    int sb_lo[2];
#pragma unroll
    for (int h = 0; h < 2; h++) sb_lo[h] = (int)((uintptr_t)scale_row(moe_decode_b_row<kGlu>(p, t, 8 * h)) & 3);

    /* kTp token rows a tile. Column c of a wgmma holds token c % kTp, and c / kTp is its scale block: MXFP4 and FP8
     * dense (kN = kTp), every column of every group; MXFP4 diagonal (kN = 4 kTp), group c / kTp of the block's 4,
     * zeros elsewhere, so that the 4 groups of a block sum into one accumulator, each group in its own columns.
     * NVFP4 (scales a 16-code half group) the same with halves: dense (kN = 2 kTp), half c / kTp of every group;
     * diagonal (kN = 8 kTp), half group c / kTp of the block's 8. A half's B row keeps its 16 codes, zeros in the
     * other half's K slots. */
    constexpr bool kDiag = kTp * (kNv ? 8 : 4) == kN;
    static_assert(kDiag || kTp * (kNv ? 2 : 1) == kN, "dense or diagonal tokens");
    static_assert(kFp4 || !kDiag, "diagonal tokens are FP4's (FP8's groups share a scale)");
    /* the B row this thread stages (blockDim is a multiple of kN), its token and scale block */
    const int tn = threadIdx.x & (kN - 1), tblk = tn / kTp;
    const int64_t arow = moe_decode_a_row(p, t, tn & (kTp - 1));
    constexpr int kGroupBytes = kN * 32; /* a 32-code group's B: kN rows */
    /* the descriptor of the chunk's first group (K halves 128 bytes apart, 8-row blocks 256); a group's is its low
     * word plus the group's offset in 16 bytes (the chunk lies in the first 256 KB: no carry out of the field) */
    const uint64_t desc_hi = moe_smem_desc_plain(tok_s, 128, 256) & 0xFFFFFFFF00000000ull;
    const uint32_t desc_lo = (uint32_t)moe_smem_desc_plain(tok_s, 128, 256);

    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    /* Diagonal: the block's 4 wgmmas sum into d, whose register r is row g + 8 ((r >> 1) & 1) and column c =
     * 8 (r >> 2) + 2q + (r & 1): scale block c / kTp's products for token c % kTp. acc_d sums them times the row's
     * factor for that block and the token's scale. MXFP4: a thread's groups are gs[k] / 8 (k = r >> 2). NVFP4: its
     * half groups c / kTp, bytes of the block's 8 scales picked in pairs by the selectors nsel[i] (kTp 1: 2q and
     * 2q + 1, by r & 1; kTp 2: q and q + 4, by k; kTp 4: pair k / 2 of q / 2 + {0, 2} and q / 2 + {4, 6}, by k % 2). */
    float acc_d[kN / 2];
#pragma unroll
    for (int r = 0; r < kN / 2; r++) acc_d[r] = 0.0f;
    int gs[kN / 8];
#pragma unroll
    for (int k = 0; k < kN / 8; k++) gs[k] = 8 * ((8 * k + 2 * q) / kTp);
    static_assert(!kNv || !kDiag || kTp <= 4, "NVFP4 diagonal: 1, 2 or 4 tokens");
    constexpr int kPairs = kTp == 4 ? 2 : 1; /* NVFP4 diagonal: scale pairs a row */
    uint32_t nsel[kPairs];
#pragma unroll
    for (int i = 0; i < kPairs; i++)
        nsel[i] = kTp == 1 ? 2 * q | (2 * q + 1) << 4
                  : kTp == 2 ? q | (q + 4) << 4
                             : (4 * i + (q >> 1)) | (4 * i + 2 + (q >> 1)) << 4;
    /* FP4: the codes of the stage at ring offset rd (w0, w1: rows g and g + 8) and the rows' scales from the block's
     * first: MXFP4 sw[0], sw[1] (rows g, g + 8: 4 E8M0 a word); NVFP4 sw[2h], sw[2h + 1] (row g + 8h: 8 E4M3 in two
     * words) */
    auto load_fp4 = [&](uint32_t rd, uint32_t (&w0)[4], uint32_t (&w1)[4], uint32_t (&sw)[kNv ? 4 : 2]) {
        moe_ldmatrix_x4(w0, lm0 + rd);
        moe_ldmatrix_x4(w1, lm1 + rd);
        if constexpr (kNv) {
            const uint4 s0 = lds128(sr0 + rd), s1 = lds128(sr1 + rd);
            sw[0] = __funnelshift_r(s0.x, s0.y, sh0), sw[1] = __funnelshift_r(s0.y, s0.z, sh0);
            sw[2] = __funnelshift_r(s1.x, s1.y, sh1), sw[3] = __funnelshift_r(s1.y, s1.z, sh1);
        } else {
            const uint2 s0 = lds64(sr0 + rd), s1 = lds64(sr1 + rd);
            sw[0] = __funnelshift_r(s0.x, s0.y, sh0), sw[1] = __funnelshift_r(s1.x, s1.y, sh1);
        }
    };
    /* Diagonal: the block's 4 wgmmas into d, committed as one group */
    auto diag_issue = [&](float (&d)[kN / 2], const uint32_t (&w0)[4], const uint32_t (&w1)[4], uint32_t desc0) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t a[4] = {e4m3_even(w0[j]), e4m3_even(w1[j]), e4m3_odd(w0[j]), e4m3_odd(w1[j])};
            moe_wgmma_fence();
            moe_wgmma_m64nNk32_e4m3_ra<kN>(d, a, desc_hi | (desc0 + j * (kGroupBytes / 16)), j > 0);
        }
        moe_wgmma_commit();
    };
    /* MXFP4 diagonal: the factors of the thread's groups (sw: the rows' scale words of block kb) and its tokens'
     * scales 2q + u (mod kTp), with the exact path's 2^22 on them */
    auto mx_factors = [&](const uint32_t *sw, int kb, const float *xb, float (&fac)[2][kN / 8], float (&x)[2]) {
        uint32_t e[2][kN / 8];
        bool big = false;
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int k = 0; k < kN / 8; k++) e[h][k] = (sw[h] >> gs[k]) & 0xFF, big |= e[h][k] > kFastScaleMax;
        float comp = 1.0f;
        if (__any_sync(0xFFFFFFFFu, big)) { /* some scale past 2^108: exact factors */
            const int groups = (K - 128 * kb) >> 5;
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int k = 0; k < kN / 8; k++)
                    fac[h][k] = gs[k] < 8 * groups ? exact_factor(e[h][k]) : 0.0f;
            comp = kExactTokenScale;
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int k = 0; k < kN / 8; k++) fac[h][k] = __uint_as_float((e[h][k] + 6) << 23);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) x[u] = xb[(2 * q + u) & (kTp - 1)] * comp;
    };
    /* MXFP4 diagonal: a finished d times its factors and token scales into acc_d */
    auto mx_finish = [&](float (&d)[kN / 2], const float (&fac)[2][kN / 8], const float (&x)[2]) {
        moe_acc_fence(d);
#pragma unroll
        for (int r = 0; r < kN / 2; r++)
            acc_d[r] = __fmaf_rn(d[r] * fac[(r >> 1) & 1][r >> 2], x[r & 1], acc_d[r]);
    };
    auto diag_block = [&](const uint32_t (&w0)[4], const uint32_t (&w1)[4], const uint32_t *sw, int kb,
                          uint32_t desc0, const float *xb) {
        float d[kN / 2];
        diag_issue(d, w0, w1, desc0);
        if constexpr (kNv) { /* sw: the rows' scales of the block, 4 a word (lo, hi) */
            float2 fn[2][kPairs];
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int i = 0; i < kPairs; i++) fn[h][i] = e4m3x2_float2(moe_prmt(sw[2 * h], sw[2 * h + 1], nsel[i]));
            float x[2];
#pragma unroll
            for (int u = 0; u < 2; u++) x[u] = xb[(2 * q + u) & (kTp - 1)];
            moe_wgmma_wait<0>();
            moe_acc_fence(d);
#pragma unroll
            for (int r = 0; r < kN / 2; r++) {
                const int k = r >> 2;
                const float2 f2 = fn[(r >> 1) & 1][kTp == 4 ? k >> 1 : 0];
                const float fr = (kTp == 1 ? r & 1 : kTp == 2 ? k : k & 1) ? f2.y : f2.x;
                acc_d[r] = __fmaf_rn(d[r] * fr, x[r & 1], acc_d[r]);
            }
            return;
        }
        float fac[2][kN / 8], x[2]; /* while the wgmmas run */
        mx_factors(sw, kb, xb, fac, x);
        moe_wgmma_wait<0>();
        mx_finish(d, fac, x);
    };
    /* FP8: the block's 4 wgmmas sum into d (one 128x128 weight scale and one token scale a block), then d times the
     * rows' weight scales and the tokens' scales */
    auto fp8_issue = [&](float (&d)[kN / 2], uint32_t rd, uint32_t desc0) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t a[4];
            moe_ldmatrix_x4(a, lmf[j] + rd);
            moe_wgmma_fence();
            moe_wgmma_m64nNk32_e4m3_ra<kN>(d, a, desc_hi | (desc0 + j * (kGroupBytes / 16)), j > 0);
        }
        moe_wgmma_commit();
    };
    auto fp8_scales = [&](uint32_t rd, int kb, float (&ws)[2]) { /* M rows 0-7's and 8-15's weight scales */
        const uint2 sw = lds64(srf + rd);
#pragma unroll
        for (int h = 0; h < 2; h++) ws[h] = moe_decode_block_scale<kE8m0>(h ? sw.y : sw.x, sb_lo[h], kb);
    };
    /* FP8: the multipliers of d's registers, the rows' weight scales times the tokens' (xb: the block's) */
    auto fp8_multipliers = [&](const float (&ws)[2], const float *xb, float (&m)[kN / 2]) {
#pragma unroll
        for (int n = 0; n < kN / 8; n++) {
            const float2 x = *reinterpret_cast<const float2 *>(xb + 8 * n + 2 * q);
#pragma unroll
            for (int e = 0; e < 4; e++) m[4 * n + e] = ws[e >> 1] * (e & 1 ? x.y : x.x);
        }
    };
    auto fp8_finish = [&](float (&d)[kN / 2], const float (&m)[kN / 2]) {
        moe_acc_fence(d);
#pragma unroll
        for (int n = 0; n < kN / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] = __fmaf_rn(d[4 * n + e], m[4 * n + e], acc[n][e]);
    };
    auto fp8_block = [&](int kb, uint32_t rd, uint32_t desc0, const float *xb) {
        float d[kN / 2], ws[2], m[kN / 2];
        fp8_issue(d, rd, desc0);
        fp8_scales(rd, kb, ws);
        moe_wgmma_wait<0>();
        fp8_multipliers(ws, xb, m);
        fp8_finish(d, m);
    };
    /* kPipe (MXFP4 diagonal and FP8; opt-in, MOE_GEMM_RS_PIPE=1): block j's wgmmas run while block j - 1's results
     * are added, instead of each block waiting for its own. Two accumulators, by the parity of j within the chunk (a
     * chunk's blocks start at j = 0 on stage 0, so the parity is the stage's, a constant of the unrolled loop), each
     * with what its finish needs. Each round of the stages (4 blocks) ends with its wgmmas done: with a group still
     * pending across the loop's back edge, or a wait on a branch, ptxas serialises the wgmmas (C7514, C7518). A
     * chunk's last blocks short of a round run unpipelined. */
    constexpr bool kPipeOn = kPipe && ((kDiag && !kNv) || !kFp4);
    float pd[2][kN / 2], pfac[2][2][kN / 8], px[2][2], pm[2][kN / 2];
    auto pipe_finish = [&](auto odd) {
        constexpr int Q = decltype(odd)::value ? 1 : 0;
        if constexpr (kFp4) mx_finish(pd[Q], pfac[Q], px[Q]);
        else fp8_finish(pd[Q], pm[Q]);
    };
    int i0 = 0; /* the group's blocks before the chunk */
    for (int kb0 = 0; kb0 < kblocks; kb0 += cb) {
        const int kb1 = kb0 + cb < kblocks ? kb0 + cb : kblocks;
        if (kb0) __syncthreads(); /* every group's wgmmas on the last chunk are done */
        /* the chunk's token codes: group gl of row tn, its even bytes at K slots 0-15 (core matrix 0 of the group's
         * row block) and its odd bytes at 16-31 (core matrix 1, 128 bytes on), 8-row blocks 256 bytes apart */
        for (int it = threadIdx.x; it < (kb1 - kb0) * 4 * kN; it += blockDim.x) {
            const int gl = it / kN, gk = kb0 * 4 + gl;
            uint4 e = make_uint4(0, 0, 0, 0), o = e;
            if (arow >= 0 && 32 * gk < K && (!kDiag || (kNv ? tblk >> 1 : tblk) == (gl & 3))) {
                const uint4 *src = reinterpret_cast<const uint4 *>(f.a + arow * K + 32 * gk);
                /* FP8's K may end half a group in (K % 32 = 16): nothing read past it */
                const uint4 x0 = __ldg(src), x1 = 32 * gk + 16 < K ? __ldg(src + 1) : make_uint4(0, 0, 0, 0);
                if constexpr (kFp4) {
                    e = make_uint4(moe_prmt(x0.x, x0.y, 0x6420), moe_prmt(x0.z, x0.w, 0x6420),
                                   moe_prmt(x1.x, x1.y, 0x6420), moe_prmt(x1.z, x1.w, 0x6420));
                    o = make_uint4(moe_prmt(x0.x, x0.y, 0x7531), moe_prmt(x0.z, x0.w, 0x7531),
                                   moe_prmt(x1.x, x1.y, 0x7531), moe_prmt(x1.z, x1.w, 0x7531));
                    if (kNv && (tblk & 1)) e.x = e.y = o.x = o.y = 0; /* half 1: codes 16-31 of the group */
                    if (kNv && !(tblk & 1)) e.z = e.w = o.z = o.w = 0;
                } else { /* FP8 weights keep K in order */
                    e = x0, o = x1;
                }
            }
            uint8_t *d = smem + gl * kGroupBytes + (tn >> 3) * 256 + (tn & 7) * 16;
            *reinterpret_cast<uint4 *>(d) = e;
            *reinterpret_cast<uint4 *>(d + 128) = o;
        }
        for (int it = threadIdx.x; it < (kb1 - kb0) * kTp; it += blockDim.x) { /* token it % kTp: this thread's */
            const int kb = kb0 + it / kTp;
            xs[it] = arow < 0 ? 0.0f : p.gather ? f.a_scale[arow * kblocks + kb] : f.a_scale[kb * f.a_scale_ld + arow];
        }
        moe_fence_proxy_async(); /* the codes are read by wgmma */
        __syncthreads();

        /* block i of the group from the stage at ring offset rd */
        auto block = [&](int i, uint32_t rd) {
            const int kb = wg + (i << shift), lb = kb - kb0;
            if constexpr (!kFp4) {
                fp8_block(kb, rd, desc_lo + lb * (4 * kGroupBytes / 16), xs + lb * kTp);
                return;
            }
            uint32_t w0[4], w1[4], sw[kNv ? 4 : 2];
            load_fp4(rd, w0, w1, sw);
            const uint32_t desc0 = desc_lo + lb * (4 * kGroupBytes / 16);
            if constexpr (kDiag) {
                diag_block(w0, w1, sw, kb, desc0, xs + lb * kTp);
                return;
            }
            /* the rows' factors for the block's 4 groups (NVFP4: and both halves of each) */
            constexpr int kHalves = kNv ? 2 : 1;
            float fac[2][4][kHalves], comp = 1.0f;
            if constexpr (kNv) {
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const float2 f2 = e4m3x2_float2(sw[2 * h + (j >> 1)] >> (16 * (j & 1)));
                        fac[h][j][0] = f2.x, fac[h][j][kHalves - 1] = f2.y;
                    }
            } else if (__any_sync(0xFFFFFFFFu, big_scale(sw[0]) | big_scale(sw[1]))) {
                /* some scale past 2^108: exact factors */
                const int groups = (K - 128 * kb) >> 5;
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        fac[h][j][0] = j < groups ? exact_factor((sw[h] >> (8 * j)) & 0xFF) : 0.0f;
                comp = kExactTokenScale;
            } else {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t e6 = sw[h] + 0x06060606u; /* no byte passes 254: no carries */
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        fac[h][j][0] = __uint_as_float((j < 3 ? e6 << (23 - 8 * j) : e6 >> 1) & 0x7F800000u);
                }
            }
            /* group j: its product into part[j % 2] while group j - 1's is added (register e: row g + 8 ((e >> 1) & 1),
             * column 8 (e >> 2) + 2q + (e & 1), NVFP4's half (8 (e >> 2)) / kTp) */
            float part[2][kN / 2], sum[kN / 2];
            auto add = [&](int j) {
                moe_acc_fence(part[j & 1]);
#pragma unroll
                for (int e = 0; e < kN / 2; e++) {
                    const float v = part[j & 1][e], s = fac[(e >> 1) & 1][j][kNv ? 8 * (e >> 2) / kTp : 0];
                    sum[e] = j ? __fmaf_rn(v, s, sum[e]) : v * s;
                }
            };
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint32_t a[4] = {e4m3_even(w0[j]), e4m3_even(w1[j]), e4m3_odd(w0[j]), e4m3_odd(w1[j])};
                moe_wgmma_fence();
                moe_wgmma_m64nNk32_e4m3_ra<kN>(part[j & 1], a, desc_hi | (desc0 + j * (kGroupBytes / 16)), false);
                moe_wgmma_commit();
                if (j) {
                    moe_wgmma_wait<1>();
                    add(j - 1);
                }
            }
            moe_wgmma_wait<0>();
            add(3);
            /* the block's sum times the tokens' scales: tokens 8n + 2q (+ 1), NVFP4's two halves (columns kTp
             * apart) added first */
#pragma unroll
            for (int n = 0; n < kTp / 8; n++) {
                const float2 x = *reinterpret_cast<const float2 *>(xs + lb * kTp + 8 * n + 2 * q);
                const float x0 = x.x * comp, x1 = x.y * comp;
                float v[4];
#pragma unroll
                for (int e = 0; e < 4; e++) v[e] = kNv ? sum[4 * n + e] + sum[4 * (kTp / 8 + n) + e] : sum[4 * n + e];
                acc[n][0] = __fmaf_rn(v[0], x0, acc[n][0]);
                acc[n][1] = __fmaf_rn(v[1], x1, acc[n][1]);
                acc[n][2] = __fmaf_rn(v[2], x0, acc[n][2]);
                acc[n][3] = __fmaf_rn(v[3], x1, acc[n][3]);
            }
        };
        /* the group's blocks in the chunk (a chunk other than the last holds a multiple of kStages of them, so that
         * the stages' offsets stay constants over the unrolled loop) */
        const int here = (kb1 > wg ? (kb1 - wg + ksplit - 1) >> shift : 0) - i0;
        int done = 0; /* the chunk's blocks the pipelined rounds took */
        if constexpr (kPipeOn) {
            /* block j of the chunk from the stage at ring offset rd into accumulator odd, then (prev) block j - 1's
             * finish */
            auto pipe_block = [&](auto odd, int j, uint32_t rd, bool prev) {
                constexpr int P = decltype(odd)::value ? 1 : 0;
                const int kb = wg + ((i0 + j) << shift), lb = kb - kb0;
                const uint32_t desc0 = desc_lo + lb * (4 * kGroupBytes / 16);
                if constexpr (kFp4) {
                    uint32_t w0[4], w1[4], sw[2];
                    load_fp4(rd, w0, w1, sw);
                    diag_issue(pd[P], w0, w1, desc0);
                    mx_factors(sw, kb, xs + lb * kTp, pfac[P], px[P]);
                } else {
                    float ws[2];
                    fp8_issue(pd[P], rd, desc0);
                    fp8_scales(rd, kb, ws);
                    fp8_multipliers(ws, xs + lb * kTp, pm[P]);
                }
                if (prev) { /* block j - 1's group is done once at most this one is pending */
                    moe_wgmma_wait<1>();
                    pipe_finish(moe_bool_tag<P == 0>{});
                }
            };
            done = here & ~(kStages - 1); /* whole rounds of the stages */
            for (int j0 = 0; j0 < done; j0 += kStages) {
#pragma unroll
                for (int sg = 0; sg < kStages; sg++) { /* moe_decode_k_loop's steps; sg a constant once unrolled */
                    __syncwarp();
                    issue(((sg + kStages - 1) % kStages) * kStageBytes);
                    moe_cp_async_wait<kStages - 1>();
                    __syncwarp();
                    if (sg & 1)
                        pipe_block(moe_bool_tag<true>{}, j0 + sg, sg * kStageBytes, sg > 0);
                    else
                        pipe_block(moe_bool_tag<false>{}, j0 + sg, sg * kStageBytes, sg > 0);
                }
                moe_wgmma_wait<0>(); /* the round's last block (odd: kStages is even) */
                pipe_finish(moe_bool_tag<true>{});
            }
        }
        /* the rest (all of it unpipelined), on the stages from 0 */
        moe_decode_k_loop<kStages, kStageBytes, true, false>(here - done, issue,
                                                             [&](int j, uint32_t rd) { block(i0 + done + j, rd); });
        i0 += here;
    }
    moe_cp_async_wait<0>(); /* the empty groups past nk */
    if constexpr (kDiag) {
        /* acc_d to the epilogue's layout: each (row, token) summed over the thread's scale blocks (kTp 1: both
         * columns too), then over the lanes of the quad that hold the same tokens (all 4 for kTp 1 and 2, q and q ^ 2
         * for 4); lane q keeps tokens 2q, 2q + 1 */
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            v[e] = acc_d[e];
#pragma unroll
            for (int k = 1; k < kN / 8; k++) v[e] += acc_d[4 * k + e];
        }
        if (kTp == 1) v[0] += v[1], v[2] += v[3], v[1] = v[3] = 0.0f; /* columns 2q, 2q + 1: both token 0 */
#pragma unroll
        for (int m = kTp > 1 ? kTp / 2 : 1; m < 4; m <<= 1)
#pragma unroll
            for (int e = 0; e < 4; e++) v[e] += __shfl_xor_sync(0xFFFFFFFFu, v[e], m);
#pragma unroll
        for (int e = 0; e < 4; e++) acc[0][e] = 2 * q < kTp ? v[e] : 0.0f;
    }

    /* groups 1.. hand their partial tiles to group 0 through their rings (a warp's first 1 KB: its own codes'
     * slots, which no lane reads any more), which adds them in group order */
    __syncwarp();
    if (wg > 0) {
        float *part = reinterpret_cast<float *>(smem + token_bytes(cb, kN) + wg * kRingBytes + warp * kWarpBytes);
#pragma unroll
        for (int k = 0; k < 8; k++) part[k * 32 + lane] = acc[k >> 2][k & 3];
    }
    __syncthreads();
    if (wg > 0) return;
    for (int w = 1; w < ksplit; w++) {
        const float *part =
            reinterpret_cast<const float *>(smem + token_bytes(cb, kN) + w * kRingBytes + warp * kWarpBytes);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k >> 2][k & 3] += part[k * 32 + lane];
    }
    const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
    moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, kNv ? 64.0f : 1.0f); /* NVFP4: the codes' 2^-6 (MXFP4's is in
                                                                            its factors); and the global there */
#endif
}

} // namespace
#endif /* MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_KERNEL_CUH */

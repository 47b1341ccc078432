/* grouped_gemm_fp4_rs.cu — the MEDIUM and LARGE tiles (64 and 128 rows of an expert) of the grouped GEMM for FP4
 * weights (MXFP4, NVFP4) and bf16 activations on Hopper: wgmma with the weights as A in registers ("RS", sm_90a).
 * Same contract as grouped_gemm.cu (grouped_gemm.cuh), same tile order, operand rows and epilogue (gemm_tile.cuh).
 *
 * Why: the other quantised tiles turn each K step of codes into a bf16 copy of the weights in shared memory, which
 * their warps then read back (bquant.cuh's bq_tile): for every weight a 2-byte store and, with wgmma, a 2-byte read
 * by each warpgroup, where the codes are half a byte. Mixtral-8x7B at T = 128 (32 rows an expert) ran those tiles
 * at about a third of the weights' bandwidth (docs/performance.md). Here each thread turns the codes it holds into
 * its own A fragments (fp4_codes.cuh: three integer operations a pair of codes, one bf16 multiply by the block's
 * factor; exact, the 2^8 it leaves undone in the epilogue), so the weights cross shared memory once, as codes.
 *
 * Roles swap against the other tiles: the CTA's 128 weight rows are wgmma's M (two warpgroups of 64), the tile's
 * token rows its N (m64nNk16, B from shared memory). Weight row pairs (s, s + 1) of the tile (GLU: gate and up of
 * one column) sit at M rows g and g + 8 of a warp's 16, so that a thread's accumulators hold both. A tile whose
 * second half holds nothing to compute runs at half the N: half the tensor work and token copies. LARGE is the same
 * tile at 128 token rows, one CTA an SM (rs_shape): twice the tensor work for each code converted; its CTAs are
 * persistent and walk the tiles, so that a tile's epilogue runs while the next one's first steps load (rs_walk).
 *
 * K order. A thread of an A fragment holds K slots 2q, 2q + 1 and 8 + 2q, 9 + 2q of each 16; a 32-bit word of codes
 * holds 8 consecutive K values, and fp4_pair gives the codes (n, n + 4) of a word as one bf16 pair. So within each
 * span of 32 K values the thread's codes are its natural K values 8q .. 8q + 7 (one word, read without waste), and
 * K slot 16j + 8h + 2q + e carries natural K value 8q + 2j + h + 4e. A comes in that order (moe_gemm_kperm_slot,
 * p.a_kperm): x rewritten once a forward by moe__cuda_gemm_kperm_rows (each row's 64-byte spans, bf16 pairs picked
 * with byte permutes), h written so by GEMM 1's epilogue (p.c_kperm). So a tile's token rows go from global memory
 * straight into wgmma's operand, once, where every CTA of a row tile would otherwise permute them again. The sum is
 * the same set of products; its order within a wgmma is the tensor core's.
 *
 * Pipeline: all 256 threads copy (codes, tokens) through a 4-stage cp.async ring, K steps of 128 (two sub-steps of
 * 64), with a full and an empty mbarrier a stage in place of a CTA barrier a step, so that the two warpgroups run
 * apart (one may be up to a step ahead) and no thread waits for another's copies but through the stage they fill.
 * Step kt: wait until its stage is full; convert the thread's codes into its A registers; issue the step's 8 wgmma
 * on the stage's tokens; while they run, refill the stage step kt - 1 read once every warp has released it; retire
 * the wgmma and release stage kt. A step's conversion overlaps the wgmma of the SM's other warpgroups (MEDIUM: two
 * CTAs an SM; LARGE: the CTA's other warpgroup), not its own: ptxas serialises every wgmma of a kernel that writes a
 * wgmma's input registers while another wgmma is in flight (C7513), which double-buffered A registers and
 * `wgmma.wait_group 1` ran into. */
#include <stdlib.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/moe/bquant.cuh"
#include "cuda/moe/fp4_codes.cuh"
#include "cuda/moe/gemm_tile.cuh"
#include "cuda/moe/grouped_gemm.cuh"

namespace {

constexpr int kBW = 128;                       /* weight rows a CTA: two warpgroups of wgmma's M */
constexpr int kBK = 64;                        /* K a step: two spans of 32 */
constexpr int kThreads = 256;
constexpr int kCodeStage = kBW * kBK / 2;      /* 4 KB */
/* kSub sub-steps of 64 K a step: one stage's waits and one wgmma wait for 8 wgmma. Measured on an H100 (Nsight
 * Compute, Mixtral-8x7B MXFP4 at T = 128, with a CTA barrier a step then): GEMM 1 577 us and GEMM 2 287 us, against
 * 613 and 300 with one. */
constexpr int kSub = 2;
constexpr int kCode = kSub * kCodeStage; /* a step's bytes of codes */
/* The tile of kRows token rows (MEDIUM's 64 or LARGE's 128: the tile_m, wgmma's N): a sub-step's and a step's bytes
 * of tokens; the shared memory, the token stages (1024-aligned: the 128-byte swizzle), the code stages, the
 * mbarriers, + room to align: 97 KB at 64 rows, two CTAs an SM (a CTA's conversion beside the other's wgmma), 161 KB
 * at 128, one CTA (its two warpgroups' wgmma of 64 x 128 x 128 a step, about 500 cycles each, cover each other's
 * conversion of about half that). Two CTAs an SM at 128 rows (2 stages, 128 registers: 224-296 bytes of spills) ran
 * 10-23% behind the cp.async tile on an H100 (docs/performance.md). */
template <int kRows> struct rs_shape {
    static_assert(kRows == 64 || kRows == 128, "MEDIUM or LARGE");
    static constexpr int tok_stage = kRows * kBK * 2, tok = kSub * tok_stage;
    static constexpr int stages = 4, bars = 2 * stages * 8; /* full and empty mbarriers */
    static constexpr size_t smem = (size_t)stages * (tok + kCode) + bars + 1024;
    static constexpr int ctas = kRows == 64 ? 2 : 1;
};

/* The scale rows' alignment to a 4-byte word (0, or the low bits of their first byte's address): a step's scales of
 * a row are one word load where it is 0, two half-word loads where it is 2 (GPT-OSS's 90 MXFP4 scales a row). Read by
 * the kernel and by the rule that gives it LARGE. */
#define RS_SCALE_ALIGN(p) \
    ((uint32_t)((uintptr_t)(p).bs.scale | (uint64_t)(p).bs.group_stride | (uint64_t)(p).bs.cols) & 3)

#ifdef MOE_WGMMA
/* Span sp (16 bytes) of weight row s in a code stage: span-major, odd groups of 8 rows swapped in pairs, so that a
 * warp's reads of rows 2g (or 2g + 1) for g = 0..7 fall in 8 distinct 16-byte bank groups. */
__device__ __forceinline__ uint32_t code_off(int s, int sp) {
    return (uint32_t)(sp * (kBW * 16) + ((s ^ ((s >> 3) & 1)) << 4));
}
/* Chunk c of token row r in a token stage: the 128-byte swizzle that moe_smem_desc names. */
__device__ __forceinline__ uint32_t tok_off(int r, int c) {
    return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}
/* Keeps A registers live (and unchanged) up to here: a wgmma reads them after it issues. */
template <int N> __device__ __forceinline__ void reg_fence(uint32_t (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) asm volatile("" : "+r"(a[i][j])::"memory");
}
#endif

#ifdef MOE_WGMMA
/* What a thread copies and reads for one tile: the tile; its span of codes and its token rows at its 16-byte chunk,
 * each with the bytes or elements to advance a step (0 for a row past N, past the tile's rows or on padding, which
 * reads the first byte of the codes or tokens as zeros); its two weight rows' scales (from the row's first byte, and
 * whether the row lies inside N); whether the tile's second half holds no row to compute (moe_gemm_rows_idle: its
 * group's only tile, or the end), when it runs at half wgmma's N and copies only its first half of token rows. */
template <int kRows> struct rs_src {
    moe_gemm_tile t;
    const uint8_t *c;                   /* the span's first byte, or (c_step 0) the codes' first, as zeros */
    const __nv_bfloat16 *a[kRows / 32]; /* the chunk's first element, or (a_step 0) the tokens' first, as zeros */
    uint32_t c_step, a_step[kRows / 32]; /* bytes, elements a step */
    const uint8_t *s[2];
    bool s_in[2], half;
};
template <int N> struct rs_n {
    static constexpr int value = N;
};

/* The tiles blockIdx.x, + gridDim.x, ... of the order (moe_gemm_order: a persistent CTA's walk over the row tiles
 * written, routed ones in expert bands as the bf16 TMA tile walks them) or, without `walk`, tile blockIdx.x alone.
 * In a walk the K steps count on over the tiles (step g in stage g % kStages), so that a tile's last steps refill
 * the ring with the next tile's first, which then load under the epilogue; the next tile is found after the current
 * one's first step is issued, so that its dependent loads (the expert's search, the rows' sources) wait beside that
 * step's wgmma. A walk needs a tile of at least kStages - 1 steps (the ring looks one tile ahead at most). Each tile
 * whose second half holds nothing to compute neither copies nor multiplies it (wgmma's N is then kRows / 2). smem:
 * the kernel's shared memory, 1024-aligned. */
template <bool kGlu, int F, int kRows>
__device__ __forceinline__ void rs_walk(const moe_gemm_params &p, unsigned char *smem, bool walk) {
    typedef rs_shape<kRows> S;
    constexpr int kTokStage = S::tok_stage, kTok = S::tok, kStages = S::stages, kTokRows = kRows / 32;
    /* the token stages (sub-step u at u kTokStage), then the code stages */
    const uint32_t tok_s = (uint32_t)__cvta_generic_to_shared(smem), code_s = tok_s + kStages * kTok;
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3, g = lane >> 2, q = lane & 3;
    constexpr bool kWalk = kRows == 128; /* MEDIUM: a tile a CTA (two CTAs an SM, at 128 registers) */
    const moe_gemm_order order =
        kWalk && walk ? moe_gemm_order_of(p, kRows) : moe_gemm_order{p.m_tiles, p.m_tiles * p.n_tiles};
    /* copy duty: codes span tid % 2 of weight row tid / 2; tokens chunk tid % 8 of rows tid / 8 + 32 i */
    const int cs = tid >> 1, csp = tid & 1, ac = tid & 7;
    const uint32_t cdst = code_off(cs, csp);
    /* the thread's weight rows: tile rows s0, s0 + 1 at M rows g, g + 8 of its warp */
    const int s0 = wg * 64 + 16 * warp + 2 * g;
    constexpr bool kMx = F == MOE_B_E2M1_E8M0;
    constexpr int kShift = kMx ? 5 : 4, kPerStep = (kSub * kBK) >> kShift;
    static_assert(kPerStep == (kMx ? 4 : 8), "a step's scales: one word (MXFP4) or two (NVFP4) a row");
    const int qh = q >> 1, wofs = kMx ? 0 : 4 * qh; /* the thread's word: its first byte in the step's scales */

    /* tile `index`, false past the walk's end; whole warps (moe_gemm_locate_order) */
    auto locate = [&](int64_t index, rs_src<kRows> &r) -> bool {
        if (index >= order.tiles) return false;
        if (!(kWalk && walk && p.offsets ? moe_gemm_locate_expert_band(p, kRows, order, index, r.t)
                                         : moe_gemm_locate_order(p, kRows, order, index, r.t)))
            return false;
        const moe_gemm_tile &t = r.t;
        const int64_t crow = moe_gemm_b_index<kGlu>(p, t, kBW, cs);
        r.c = static_cast<const uint8_t *>(p.b) +
              (crow < 0 ? 0 : t.group * (p.b_group_stride / 2) + crow * (p.k / 2) + csp * 16);
        r.c_step = crow < 0 ? 0 : kSub * kBK / 2;
        const int64_t mid = t.row0 + kRows / 2;
        r.half = mid >= t.row_end || moe_gemm_rows_idle(p, t, kRows, mid);
#pragma unroll
        for (int i = 0; i < kTokRows; i++) {
            const __nv_bfloat16 *const a = moe_gemm_a_row(p, t, t.row0 + (tid >> 3) + 32 * i);
            r.a[i] = a ? a + ac * 8 : p.a;
            r.a_step[i] = a ? kSub * kBK : 0;
        }
        const uint8_t *const sbase = static_cast<const uint8_t *>(p.bs.scale) + t.group * p.bs.group_stride;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t b = moe_gemm_b_index<kGlu>(p, t, kBW, s0 + h);
            r.s_in[h] = b >= 0;
            r.s[h] = sbase + (b < 0 ? 0 : (b >> p.bs.row_shift) * p.bs.cols);
        }
        return true;
    };

    const int k_tiles = (p.k + kSub * kBK - 1) / (kSub * kBK), full_steps = p.k / (kSub * kBK);
    /* Step kt of tile r into a stage, its first `rows` token rows a thread (all, or the first half). A step wholly
     * inside K reads kt steps past each source (a row past N or past the tile's rows: from the codes' or tokens'
     * first byte, as zeros); the last step of a K that ends inside it checks each code span and token chunk (K is a
     * multiple of 32: each is all in or all out). */
    auto load = [&](int stage, int kt, const rs_src<kRows> &r, int rows) {
        const uint32_t cd = code_s + stage * kCode + cdst, ad = tok_s + stage * kTok;
        if (kt < full_steps) {
            const uint8_t *const c = r.c + (uint64_t)kt * r.c_step;
#pragma unroll
            for (int u = 0; u < kSub; u++) moe_cp_async16_to(cd + u * kCodeStage, c + u * kBK / 2, r.c_step ? 16 : 0);
#pragma unroll
            for (int i = 0; i < kTokRows; i++) {
                if (i >= rows) break;
                const __nv_bfloat16 *const a = r.a[i] + (uint64_t)kt * r.a_step[i];
#pragma unroll
                for (int u = 0; u < kSub; u++)
                    moe_cp_async16_to(ad + u * kTokStage + tok_off((tid >> 3) + 32 * i, ac), a + u * kBK,
                                      r.a_step[i] ? 16 : 0);
            }
            return;
        }
#pragma unroll
        for (int u = 0; u < kSub; u++) {
            const int k = (kt * kSub + u) * kBK; /* the sub-step's first K */
            const bool cin = r.c_step && k + csp * 32 < p.k;
            moe_cp_async16_to(cd + u * kCodeStage, r.c + (cin ? k / 2 : 0), cin ? 16 : 0);
#pragma unroll
            for (int i = 0; i < kTokRows; i++) {
                if (i >= rows) break;
                const bool in = r.a_step[i] && k + ac * 8 < p.k;
                moe_cp_async16_to(ad + u * kTokStage + tok_off((tid >> 3) + 32 * i, ac), r.a[i] + (in ? k : 0),
                                  in ? 16 : 0);
            }
        }
    };
    auto rows_of = [](const rs_src<kRows> &r) { return r.half ? kTokRows / 2 : kTokRows; };

    /* Scales: MXFP4 one a 32-K block, NVFP4 one a 16-K block (the thread's 8 codes of a span lie in its block
     * 2 sp + q / 2); the fits check holds p.bs.col_shift to these. A row's scales of a step are 4 bytes (MXFP4) or 8
     * (NVFP4); a thread loads a word of them a step ahead (MXFP4 the 4, NVFP4 word q / 2 of the 8) and picks its own
     * at the step that uses them (pick), so that nothing waits on the load before then. pick gives the thread a row's
     * 4 scales of a step in one word, byte 2 u + sp for (sub-step u, span sp): MXFP4 the word, NVFP4 bytes
     * q / 2 + {0, 2, 4, 6} of the 8, the other word from the lane q ^ 2. The steps wholly inside K load with the
     * widest loads the rows' alignment allows (a row past N reads row 0's: its codes are zeros and its outputs are
     * never stored); the last step of a K that ends inside it checks each. */
    const uint32_t salign = RS_SCALE_ALIGN(p);
    auto load_scales = [&](int kt, const rs_src<kRows> &r, int h) -> uint32_t {
        uint32_t w = 0;
        if (kt < full_steps) {
            const uint8_t *const s = r.s[h] + wofs + kt * kPerStep;
            if (salign == 0) return __ldg(reinterpret_cast<const uint32_t *>(s));
            if (salign == 2) /* GPT-OSS: K 2880, 90 scales a row */
                return __ldg(reinterpret_cast<const uint16_t *>(s)) |
                       (uint32_t)__ldg(reinterpret_cast<const uint16_t *>(s) + 1) << 16;
#pragma unroll
            for (int b = 0; b < 4; b++) w |= (uint32_t)__ldg(s + b) << 8 * b;
            return w;
        }
#pragma unroll
        for (int b = 0; b < 4; b++) { /* byte wofs + b of the step: its block's first K */
            const int k = kt * kSub * kBK + ((kMx ? b : 4 * qh + b) << kShift);
            w |= bq_scale_raw<F>(r.s[h], k >> kShift, r.s_in[h] && k < p.k) << 8 * b;
        }
        return w;
    };
    auto pick = [&](uint32_t w) -> uint32_t { /* warp-wide */
        if constexpr (kMx) return w;
        else return __byte_perm(w, __shfl_xor_sync(0xFFFFFFFFu, w, 2), qh ? 0x3175 : 0x6420);
    };
    /* f(u, h, sp) for each (sub-step, row, span) of a step: the thread's blocks of 8 codes, unrolled */
    auto each_block = [](auto &&f) {
#pragma unroll
        for (int u = 0; u < kSub; u++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int sp = 0; sp < 2; sp++) f(u, h, sp);
    };

    /* the thread's A fragments of a step: [k16 step][register]. The word of a row's 8 codes (natural K 8q .. 8q + 7
     * of span sp) gives the pairs (c0, c4), (c1, c5) to k16 step 4u + 2 sp (registers 0 and 2; 1 and 3 for the
     * row s0 + 1) and (c2, c6), (c3, c7) to the next: K slot 16j + 8h + 2q + e holds natural value 8q + 2j + h + 4e.
     * Each pair is the codes times 2^-126 (fp4_pair), times the factor of its block scale: two integer operations
     * (fp4_factor_plain), unless some lane has a scale that needs more (fp4_mx_wide4, fp4_nv_odd4), when the warp
     * takes the exact path (fp4_factor; an E8M0 scale past 2^9 multiplies by 2^126 first). */
    auto convert = [&](int stage, const uint32_t(&sc)[2], uint32_t(&a)[4 * kSub][4]) {
        const uint32_t odd = kMx ? fp4_mx_wide4(sc[0]) | fp4_mx_wide4(sc[1]) : fp4_nv_odd4(sc[0]) | fp4_nv_odd4(sc[1]);
        auto words = [&](auto exact) { /* exact::value: the exact path */
            each_block([&](int u, int h, int sp) {
                const int b = 2 * u + sp;
                const uint32_t raw = sc[h] >> 8 * b & 0xFF;
                bool big = false;
                const uint32_t f =
                    decltype(exact)::value ? fp4_factor<kMx>(raw, &big) : fp4_factor_plain(kMx, sc[h], b);
                const uint32_t w = lds32(code_s + stage * kCode + u * kCodeStage + code_off(s0 + h, sp) + 4 * q);
                const uint32_t w8 = w >> 8;
                uint32_t v[4]; /* v[t]: codes (3 - t, 7 - t) */
#pragma unroll
                for (int t = 0; t < 4; t++) {
                    v[t] = fp4_pair(w, w8, t);
                    v[t] = decltype(exact)::value && big
                               ? bf16x2_mul(bf16x2_mul(v[t], kFp4Big), fp4_factor_big(raw))
                               : bf16x2_mul(v[t], f);
                }
                const int j0 = 4 * u + 2 * sp;
                a[j0][h] = v[3], a[j0][2 + h] = v[2], a[j0 + 1][h] = v[1], a[j0 + 1][2 + h] = v[0];
            });
        };
        if (__any_sync(0xFFFFFFFFu, odd != 0)) words(moe_bool_tag<true>());
        else words(moe_bool_tag<false>());
    };

    rs_src<kRows> cur, nxt;
    int64_t index = blockIdx.x;
    if (!locate(index, cur)) return; /* the whole CTA: the tile is the CTA's */
    /* stage s is full when every thread's copies into it have landed (an arrival a thread, made by its cp.async),
     * and empty when every warp has retired the wgmma that read it (an arrival a warp) */
    const moe_pipe pipe = {code_s + kStages * kCode, kStages};
    pipe.init(kThreads, kThreads / 32);
#pragma unroll
    for (int s = 0; s < kStages - 1; s++) {
        if (s < k_tiles) load(s, s, cur, rows_of(cur));
        moe_mbar_arrive_cp_async(pipe.full(s));
    }
    uint32_t sc[2], next[2]; /* the step's scales (pick) and the next step's word, a row each */
    next[0] = load_scales(0, cur, 0), next[1] = load_scales(0, cur, 1);
    /* the token stages' descriptor, low word: a stage, a sub-step and a 32-byte K step further are additions */
    const uint32_t dtok0 = (uint32_t)moe_smem_desc(tok_s);
    uint32_t step = 0; /* the walk's K steps so far */

    /* the current tile at wgmma's N = kN (kRows, or half of it) */
    auto run = [&](auto n) {
        constexpr int kN = decltype(n)::value;
        float acc[kN / 2];
#pragma unroll
        for (int i = 0; i < kN / 2; i++) acc[i] = 0.0f;
        uint32_t a[4 * kSub][4];
        bool more = false; /* a next tile in the walk (found after step 0) */
        for (int kt = 0; kt < k_tiles; kt++, step++) {
            const int st = step % kStages;
            moe_mbar_wait(pipe.full(st), (step / kStages) & 1);
            moe_fence_proxy_async(); /* every thread's copies of the stage's tokens -> this warp's wgmma reads */
            sc[0] = pick(next[0]), sc[1] = pick(next[1]);
            if (kt + 1 < k_tiles) next[0] = load_scales(kt + 1, cur, 0), next[1] = load_scales(kt + 1, cur, 1);
            else if (kWalk && more) next[0] = load_scales(0, nxt, 0), next[1] = load_scales(0, nxt, 1);
            convert(st, sc, a);
            const uint32_t dtok = dtok0 + st * (kTok >> 4);
            moe_acc_fence(acc);
            moe_wgmma_fence();
#pragma unroll
            for (int u = 0; u < kSub; u++)
#pragma unroll
                for (int kk = 0; kk < kBK / 16; kk++) /* 16 bf16 = 32 bytes further into the swizzled rows */
                    moe_wgmma_m64nNk16_ra<kN>(acc, a[4 * u + kk],
                                              moe_smem_desc_of(dtok + ((u * kTokStage + kk * 32) >> 4)));
            moe_wgmma_commit();
            if (kWalk && kt == 0) more = locate(index + gridDim.x, nxt);
            /* the refill: the walk's step + kStages - 1, into the stage step - 1 read (while the wgmma run, once
             * every warp has retired step - 1's): this tile's, or the next one's first steps */
            const int refill = kt + kStages - 1;
            if (refill < k_tiles || (kWalk && more)) {
                const uint32_t prev = step - 1, rs = (step + kStages - 1) % kStages;
                if (step > 0) moe_mbar_wait(pipe.empty(prev % kStages), (prev / kStages) & 1);
                if (refill < k_tiles) load(rs, refill, cur, kN / 32);
                else load(rs, refill - k_tiles, nxt, rows_of(nxt));
                moe_mbar_arrive_cp_async(pipe.full(rs));
            }
            moe_acc_fence(acc);
            moe_wgmma_wait<0>(); /* the A registers and the stage's tokens are free again */
            moe_acc_fence(acc);
            reg_fence(a);
            __syncwarp();
            if (lane == 0) moe_mbar_arrive(pipe.empty(st));
        }

        /* epilogue: registers 4j + {0, 1} hold weight row s0 for tokens 8j + 2q + {0, 1}; 4j + {2, 3} row s0 + 1;
         * the weights entered times 2^-8. Each thread stores 2 kN / 8 rows at the same columns: those are found once
         * (moe_gemm_cols_of), and the rows' facts (moe_gemm_row's: a routed row's source, its weight) are loaded by
         * the warp at once, lane l those of rows l + 32 i, and handed round by shuffles: one load's latency a tile
         * where a load a row waited one after another (GEMM 2 of Qwen3-30B-A3B, 6 steps a tile, spent about as long
         * in its epilogue as in its K loop; Nsight Compute, H100). */
        const moe_gemm_tile &t = cur.t;
        constexpr int kL = kN / 32;
        const bool routed = p.offsets != nullptr, weighted = kGlu && routed && p.row_weight;
        int32_t lsrc[kL];
        float lw[kL];
#pragma unroll
        for (int i = 0; i < kL; i++) {
            const int64_t r = t.row0 + lane + 32 * i;
            lsrc[i] = r >= t.row_end ? -1 : routed ? p.row_src[r] : 0; /* -1: nothing to store */
        }
#pragma unroll
        for (int i = 0; i < kL; i++) lw[i] = weighted && lsrc[i] >= 0 ? p.row_weight[lsrc[i]] : 0.0f;
        const float gf = moe_gemm_global_factor(p, t);
        const moe_gemm_cols cols = moe_gemm_cols_of<kGlu>(p, t, kBW, s0);
        auto epilogue = [&](auto kperm) { /* kperm::value: h's columns in the K order (GEMM 2's A on this tile) */
            moe_gemm_by_act<kGlu>(p.act, [&](auto act) {
#pragma unroll
                for (int j = 0; j < kN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int rl = 8 * j + 2 * q + e, from = rl & 31; /* held by lane rl % 32, as its j / 4 */
                        const int32_t src = __shfl_sync(0xFFFFFFFFu, lsrc[j >> 2], from);
                        const float w = __shfl_sync(0xFFFFFFFFu, lw[j >> 2], from);
                        const int64_t r = t.row0 + rl;
                        const moe_gemm_row_out ro = {r >= t.row_end || (!kGlu && routed && src < 0),
                                                     weighted ? w : 1.0f, gf};
                        if (ro.skip) continue;
                        moe_gemm_store_cols<kGlu, decltype(act)::value, decltype(kperm)::value>(
                            p, t, cols, r, ro, acc[4 * j + e] * kFp4Undo, acc[4 * j + 2 + e] * kFp4Undo);
                    }
            });
        };
        if (kGlu && p.c_kperm) epilogue(moe_bool_tag<true>());
        else epilogue(moe_bool_tag<false>());
        return more;
    };
    for (;;) {
        if (!(cur.half ? run(rs_n<kRows / 2>()) : run(rs_n<kRows>()))) return;
        cur = nxt, index += gridDim.x;
    }
}
#endif

template <bool kGlu, int F, int kRows>
__global__ void __launch_bounds__(kThreads, rs_shape<kRows>::ctas)
    gemm_fp4_rs_kernel(const moe_gemm_params p, bool walk) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw);
    rs_walk<kGlu, F, kRows>(p, smem_raw + (((raw + 1023u) & ~1023u) - raw), walk);
#endif
}

/* A's rows in the tile's K order, one thread a 64-byte span of 32 values: natural 16-byte chunks c = 0..3 in, out
 * chunk m (slots 8m .. 8m + 7) holds in its word c the natural values 8c + m and 8c + m + 4 (moe_gemm_kperm_slot):
 * words m / 2 and m / 2 + 2 of chunk c, their low halves for m even, high for m odd. */
__global__ void kperm_rows_kernel(const uint4 *src, uint4 *dst, int64_t spans) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < spans; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t w[4][4]; /* [chunk][word] */
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const uint4 v = src[4 * i + c];
            w[c][0] = v.x, w[c][1] = v.y, w[c][2] = v.z, w[c][3] = v.w;
        }
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const uint32_t sel = m & 1 ? 0x7632 : 0x5410;
            uint32_t o[4];
#pragma unroll
            for (int c = 0; c < 4; c++) o[c] = moe_prmt(w[c][m / 2], w[c][m / 2 + 2], sel);
            dst[4 * i + m] = make_uint4(o[0], o[1], o[2], o[3]);
        }
    }
}

template <bool kGlu, int F, int kRows>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, int64_t m_tiles, int groups, cudaStream_t st) {
    moe_gemm_params q = p;
    const int cols_per_tile = kGlu ? kBW / 2 : kBW;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + cols_per_tile - 1) / cols_per_tile;
    if (q.m_tiles * q.n_tiles > INT32_MAX) /* a grid's limit, and the tile order's 32-bit arithmetic */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: %lld tiles exceed 2^31",
                          (long long)(q.m_tiles * q.n_tiles));
    const auto kernel = gemm_fp4_rs_kernel<kGlu, F, kRows>;
    constexpr size_t kSmem = rs_shape<kRows>::smem;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmem));
    /* LARGE walks tiles: one CTA an SM, split over the dense groups (a walk needs kStages - 1 steps a tile) */
    const int64_t tiles = q.m_tiles * q.n_tiles, k_steps = (p.k + kSub * kBK - 1) / (kSub * kBK);
    const bool walk = kRows == 128 && k_steps >= rs_shape<kRows>::stages - 1;
    int64_t per_group = tiles;
    if (walk) {
        const char *cap_env = getenv("MOE_GEMM_FP4_RS_CTAS"); /* tests: fewer CTAs, each walking many tiles */
        const int64_t cap = cap_env ? atoi(cap_env) : 0;
        int64_t ctas = (int64_t)ctx->cuda.sm_count * rs_shape<kRows>::ctas / groups;
        if (cap > 0 && cap < ctas) ctas = cap;
        per_group = ctas < 1 ? 1 : ctas < tiles ? ctas : tiles;
    }
    const dim3 grid((unsigned)per_group, 1, (unsigned)groups);
    MOE_CUDA_TRY(ctx, moe_launch(false, kernel, grid, kThreads, kSmem, st, q, walk));
    return MOE_OK;
}

template <int kRows>
moe_status launch_rows(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups,
                       cudaStream_t st) {
    const bool mx = p.b_fmt == MOE_B_E2M1_E8M0;
    if (glu) return mx ? launch<true, MOE_B_E2M1_E8M0, kRows>(ctx, p, m_tiles, groups, st)
                       : launch<true, MOE_B_E2M1_E4M3, kRows>(ctx, p, m_tiles, groups, st);
    return mx ? launch<false, MOE_B_E2M1_E8M0, kRows>(ctx, p, m_tiles, groups, st)
              : launch<false, MOE_B_E2M1_E4M3, kRows>(ctx, p, m_tiles, groups, st);
}

} // namespace

bool moe__cuda_gemm_fp4_rs_fits(moe_ctx *ctx, const moe_gemm_params &p) {
    const bool mx = p.b_fmt == MOE_B_E2M1_E8M0, nv = p.b_fmt == MOE_B_E2M1_E4M3;
    if ((!mx && !nv) || p.k % 32 != 0 || getenv("MOE_GEMM_NO_FP4_RS")) return false;
    /* per-row scales of 32 (MX) or 16 (NV) values: a thread's 8 codes under one */
    if (p.bs.row_shift != 0 || p.bs.col_shift != (mx ? 5 : 4)) return false;
    /* 16-byte pieces of codes and of bf16 activations (a dense group's too) */
    if ((uintptr_t)p.b % 16 != 0 || (p.b_group_stride / 2) % 16 != 0 || (uintptr_t)p.a % 16 != 0) return false;
    if (!p.offsets && p.a_group_stride % 8 != 0) return false;
    return moe__cuda_gemm_sm90_usable(ctx);
}

bool moe__cuda_gemm_fp4_rs_takes(moe_ctx *ctx, const moe_gemm_params &p, moe_gemm_shape shape) {
    if (shape == MOE_GEMM_MEDIUM) return moe__cuda_gemm_fp4_rs_fits(ctx, p);
    if (shape != MOE_GEMM_LARGE || getenv("MOE_GEMM_NO_FP4_RS_LARGE")) return false;
    /* LARGE where K >= 1024 and each row's scales start on a 4-byte word (a step's scales one load a row). H100,
     * T = 2048 and 8192, layer against the cp.async tile, MXFP4: DeepSeek-V3 (K 7168 and 2048) -10 to -15%,
     * Mixtral-8x7B (4096, 14336) -12 to -14%, Llama-4-Scout (5120, 8192) -10 to -12%; NVFP4 likewise and GPT-OSS-120B
     * (2880, 2880) -6%. Not taken: GPT-OSS-120B MXFP4 (90 scales a row, two half-word loads) +12%; Qwen3-30B-A3B
     * (2048, 768) level (-0.6 to +1.7%). */
    if (getenv("MOE_GEMM_FP4_RS_LARGE")) return moe__cuda_gemm_fp4_rs_fits(ctx, p);
    return p.k >= 1024 && RS_SCALE_ALIGN(p) == 0 && moe__cuda_gemm_fp4_rs_fits(ctx, p);
}

moe_status moe__cuda_grouped_gemm_fp4_rs(moe_ctx *ctx, const moe_gemm_params &p, bool glu, moe_gemm_shape shape,
                                         int64_t m_tiles, int groups, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    return shape == MOE_GEMM_LARGE ? launch_rows<128>(ctx, p, glu, m_tiles, groups, stream)
                                   : launch_rows<64>(ctx, p, glu, m_tiles, groups, stream);
}

moe_status moe__cuda_gemm_kperm_rows(moe_ctx *ctx, const __nv_bfloat16 *src, __nv_bfloat16 *dst, int64_t rows, int k,
                                     cudaStream_t stream) {
    if (k % 32 != 0 || (uintptr_t)src % 16 != 0 || (uintptr_t)dst % 16 != 0)
        return moe__error(ctx, MOE_ERR_INVALID_ARG, "K order: k %d (a multiple of 32) and 16-byte aligned rows", k);
    const int64_t spans = rows * (k / 32);
    if (spans <= 0) return MOE_OK;
    const int64_t want = (spans + 255) / 256, blocks = want < 4096 ? want : 4096; /* grid-stride past that */
    MOE_CUDA_TRY(ctx, moe_launch(false, kperm_rows_kernel, (unsigned)blocks, 256, 0, stream, (const uint4 *)src,
                                 (uint4 *)dst, spans));
    return MOE_OK;
}

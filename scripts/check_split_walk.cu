/* scripts/check_split_walk.cu — the FP4 decode kernel's split walk (grouped_gemm_fp4_decode.cu, split_walk) on the
 * host, over moe_split_share as the kernel uses it (src/cuda/moe/gemm_decode.cuh, included, not copied): for random
 * tile counts, K blocks a tile, grid sizes and least blocks a worker (the walk's CTAs; "warp" in the names below,
 * as in moe_split_share's warp_of), every unit is some worker's exactly once; a tile in pieces has one piece of
 * each worker wlo .. whi and no other; the partial slots (w, first piece or last) are distinct and the adder finds
 * each piece's at the slot its worker wrote; no two tiles in pieces share a count; a whole tile is one worker's. The walk's loop is restated here in its own words (tiles, pieces, slots). Not a test
 * (seconds):
 *   nvcc -std=c++17 -Isrc -Iinclude -DMOE_WITH_CUDA scripts/check_split_walk.cu -o /tmp/check_split_walk && /tmp/check_split_walk */
#include "cuda/moe/gemm_decode.cuh"

#include <map>
#include <random>
#include <set>
#include <stdio.h>
#include <vector>

static int bad = 0;
#define CHECK(c)                                                                                                      \
    do {                                                                                                              \
        if (!(c) && bad++ < 10) fprintf(stderr, "failed: %s (line %d)\n", #c, __LINE__);                              \
    } while (0)

static void walk(uint32_t tiles, uint32_t KB, uint32_t grid_warps, uint32_t split_min) {
    const uint32_t U = tiles * KB;
    const uint32_t W = std::min(grid_warps, std::max(U / split_min, 1u));
    const moe_split_share share(U, W);
    std::vector<int> covered(U, 0);
    std::map<std::pair<uint32_t, int>, uint32_t> slot_tile; /* (warp, slot) -> tile */
    std::map<uint32_t, std::set<uint32_t>> count_tiles;     /* count index -> tiles */
    std::map<uint32_t, std::vector<uint32_t>> tile_warps;   /* tile in pieces -> its warps, in walk order */
    for (uint32_t w = 0; w < W; w++) {
        const uint32_t u0 = share.start(w), u1 = share.start(w + 1);
        CHECK(u1 > u0);
        for (uint32_t u = u0; u < u1;) {
            const uint32_t tile = u / KB, tb = tile * KB, end = std::min(u1, tb + KB);
            for (uint32_t x = u; x < end; x++) covered[x]++;
            const uint32_t wlo = share.warp_of(tb), whi = share.warp_of(tb + KB - 1);
            CHECK(share.start(wlo) <= tb && tb < share.start(wlo + 1));
            CHECK(share.start(whi) <= tb + KB - 1 && tb + KB - 1 < share.start(whi + 1));
            if (wlo != whi) {
                const std::pair<uint32_t, int> slot(w, u0 < tb);
                CHECK(!slot_tile.count(slot));
                slot_tile[slot] = tile;
                count_tiles[wlo].insert(tile);
                tile_warps[tile].push_back(w);
            } else {
                CHECK(u == tb && end == tb + KB); /* a whole tile */
            }
            u = end;
        }
    }
    for (uint32_t x = 0; x < U; x++) CHECK(covered[x] == 1);
    for (auto &c : count_tiles) CHECK(c.second.size() == 1);
    for (auto &t : tile_warps) { /* the adder's view: warps wlo .. whi, each at slot (v, start(v) < tb) */
        const uint32_t tb = t.first * KB, wlo = share.warp_of(tb), whi = share.warp_of(tb + KB - 1);
        CHECK(t.second.size() == whi - wlo + 1);
        for (uint32_t v = wlo; v <= whi; v++) {
            CHECK(t.second[v - wlo] == v);
            auto it = slot_tile.find(std::pair<uint32_t, int>(v, share.start(v) < tb));
            CHECK(it != slot_tile.end() && it->second == t.first);
        }
    }
}

int main() {
    std::mt19937 rng(12345);
    const uint32_t mins[] = {1, 2, 4, 8, 16};
    int n = 0;
    for (; n < 3000 && !bad; n++) {
        const uint32_t KB = 1 + rng() % 64, tiles = 1 + rng() % 400, grid = 1 + rng() % 3000;
        walk(tiles, KB, grid, mins[rng() % 5]);
    }
    walk(4 * 360, 23, 660, 32); /* GPT-OSS-120B's GEMM 1 at T = 1 on 132 SMs */
    walk(8 * 256, 56, 660, 32); /* DeepSeek-V3's */
    printf("%d walks, %s\n", n + 2, bad ? "FAILED" : "all checks pass");
    return bad != 0;
}

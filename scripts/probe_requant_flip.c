/* probe_requant_flip.c SEED FORMAT H I T — the CPU output (T, H) f32 on stdout of gpu_layer_w4a8's decode problem
 * at SEED (qwen3-30b-a3b routing, 8 experts top 2, SiLU GLU, FP8 1x128 activations, weights in layer_weight_formats'
 * FORMAT: 5 is MXFP4), for scripts/probe_requant_flip.sh. */
#include "layer_cases.h"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    if (argc != 6) return 4;
    uint64_t seed = strtoull(argv[1], 0, 10);
    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU;
    moe_ctx *cpu;
    if (moe_ctx_create(&o, &cpu) != MOE_OK) return 1;
    moe_qformat fmts[LAYER_WEIGHT_FORMATS];
    layer_weight_formats(fmts, NULL);
    int wf = atoi(argv[2]);
    int H = atoi(argv[3]), I = atoi(argv[4]), T = atoi(argv[5]);
    moe_layer_config c = layer_config("qwen3-30b-a3b", H, I, 8, 2, MOE_ACT_SILU_GLU);
    c.n_shared = 0, c.shared_intermediate = 128;
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    layer_problem p;
    layer_qweights q;
    layer_problem_random(&p, &c, T, 0, seed);
    if (layer_problem_quantize(cpu, &p, &fmts[wf], &q, NULL)) return 2;
    p.qw = &q;
    float *out = malloc(sizeof(float) * T * H);
    if (layer_run(cpu, &p, MOE_DTYPE_BF16, 0, out, 0) != MOE_OK) return 3;
    fwrite(out, sizeof(float), (size_t)T * H, stdout);
    free(out), layer_qweights_free(&q), layer_problem_free(&p), moe_ctx_destroy(cpu);
    return 0;
}

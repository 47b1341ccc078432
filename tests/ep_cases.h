/* ep_cases.h — one layer problem run with expert parallelism: rank r of a comm takes tokens [t0, t0 + T) and
 * experts [r E/N, (r+1) E/N) of a layer_problem (tests/ep_cases.c). */
#ifndef MOE_TEST_EP_CASES_H
#define MOE_TEST_EP_CASES_H

#include "layer_cases.h"

typedef struct ep_job {
    moe_comm *comm;
    const layer_problem *p;
    moe_dtype dtype;
    moe_ep_backend backend;
    moe_dtype wire;
    int use_logits;
    int64_t t0, T, max_tokens;
    int skip_forward;   /* the rank creates its layer but never calls forward (a hung peer) */
    int linger_ms;      /* with skip_forward: how long the hung rank keeps its layer (and buffers) alive */
    int capture;        /* GPU: capture the forward in a CUDA graph, replay it twice */
    int again;          /* call forward once more after the first (status: of the last call) */
    int n_physical;     /* EPLB slots (0: E); slot p starts with expert p mod E */
    int rebalance;      /* after the first forward: moe_ep_rebalance, then the forward again (out: the second) */
    double balance[2];  /* before and after the rebalance */
    int32_t placement[64]; /* the logical expert of each slot after the rebalance */
    int intermediate;   /* when non-zero, this rank's config claims this width (a mismatched rank) */
    float *out;         /* (all tokens, H): this rank writes its rows */
    moe_status status;  /* of the first failing call */
    char message[512];
} ep_job;

/* One rank's part: upload, create, forward, download. Fills status and message. */
void ep_job_run(ep_job *job);
/* Runs jobs[0..n) in threads of their own (the local transports). */
void ep_jobs_run_threads(ep_job *jobs, int n);
/* n jobs over comms: the tokens of p split as `split` says (NULL: evenly), max_tokens the largest part. */
void ep_jobs_make(ep_job *jobs, moe_comm **comms, int n, const layer_problem *p, const int64_t *split, float *out);

#endif

/* route_cases.h — routing golden cases (tests/data/routing.moeg, written by tests/oracle/make_routing.py), run
 * on any context, shared by the CPU and GPU tests (tests/route_cases.c). Each returns the number of cases that
 * differ from the oracle, or -1 when the file cannot be read. */
#ifndef MOE_TEST_ROUTE_CASES_H
#define MOE_TEST_ROUTE_CASES_H

#include "test.h"

int route_run_golden_routers(test_env *env, moe_ctx *ctx);
int route_run_golden_eplbmap(test_env *env, moe_ctx *ctx);
int route_run_golden_waterfill(test_env *env, moe_ctx *ctx);
int route_run_golden_permute(test_env *env, moe_ctx *ctx);
/* The router of a golden case's .cfg text (kind= score= E= k= groups= ... scale=). */
void route_config_from_cfg(const char *cfg, moe_router_config *c);
/* Host-only: the EPLB plans. */
int route_run_golden_eplb(test_env *env);

#endif

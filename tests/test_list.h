/* test_list.h — every test, in the order the runner runs them. */
#define TEST_LIST(X)              \
    X(status_strings)             \
    X(dtype_table)                \
    X(scalar_spec_vectors)        \
    X(scalar_golden_specials)     \
    X(scalar_golden_random)       \
    X(scalar_golden_decode)       \
    X(scalar_roundtrip)           \
    X(convert_cpu)                \
    X(swizzle_spec_vectors)       \
    X(swizzle_golden)             \
    X(blocks_golden)              \
    X(blocks_error_bounds)        \
    X(blocks_dequant_dtypes)      \
    X(errors_bad_input)           \
    X(route_golden)               \
    X(eplb_spec_vectors)          \
    X(route_properties)           \
    X(route_edges)                \
    X(permute_sentinels)          \
    X(expert_stats_cpu)           \
    X(route_errors)               \
    X(gpu_scalar_conversions)     \
    X(gpu_blocks_random)          \
    X(gpu_blocks_golden)          \
    X(gpu_swizzle)                \
    X(gpu_errors)                 \
    X(gpu_route_random)           \
    X(gpu_route_golden)           \
    X(gpu_permute_random)         \
    X(gpu_eplb_waterfill_stats)   \
    X(gpu_route_errors)

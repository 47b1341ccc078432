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
    X(gpu_scalar_conversions)     \
    X(gpu_blocks_random)          \
    X(gpu_blocks_golden)          \
    X(gpu_swizzle)                \
    X(gpu_errors)

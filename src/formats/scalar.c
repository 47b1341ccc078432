/* scalar.c — the public scalar conversions: thin wrappers over the inline definitions in scalar.h. */
#include "formats/scalar.h"

uint16_t moe_bf16_from_f32(float x) { return moe__bf16_from_f32(x); }
float moe_bf16_to_f32(uint16_t bits) { return moe__bf16_to_f32(bits); }
uint16_t moe_f16_from_f32(float x) { return moe__f16_from_f32(x); }
float moe_f16_to_f32(uint16_t bits) { return moe__f16_to_f32(bits); }
uint8_t moe_e4m3_from_f32(float x, int saturate) { return moe__e4m3_from_f32(x, saturate); }
float moe_e4m3_to_f32(uint8_t bits) { return moe__e4m3_to_f32(bits); }
uint8_t moe_e5m2_from_f32(float x, int saturate) { return moe__e5m2_from_f32(x, saturate); }
float moe_e5m2_to_f32(uint8_t bits) { return moe__e5m2_to_f32(bits); }
uint8_t moe_e2m1_from_f32(float x) { return moe__e2m1_from_f32(x); }
float moe_e2m1_to_f32(uint8_t nibble) { return moe__e2m1_to_f32(nibble); }
uint8_t moe_e8m0_from_f32(float x, moe_round round, int saturate) { return moe__e8m0_from_f32(x, round, saturate); }
float moe_e8m0_to_f32(uint8_t bits) { return moe__e8m0_to_f32(bits); }

// The constants the C++ and CUDA kernels share with the Python side (cign_fast/contract.py):
// the assignment op's mode ids and the Gumbel noise's multipliers and uniform. The noise keys are
// derived from the seed in Python; tests/test_contract.py holds these values to the Python ones.
#pragma once

#include <cstdint>

namespace cign_fast {

// Mode ids: cign_fast.contract.MODE_SOFT, MODE_HARD, MODE_GUMBEL.
constexpr int kModeSoft = 0;
constexpr int kModeHard = 1;
constexpr int kModeGumbel = 2;

// The "lowbias32" multipliers: cign_fast.contract.MIX_MUL_1, MIX_MUL_2.
constexpr uint32_t kMixMul1 = 0x7FEB352Du;
constexpr uint32_t kMixMul2 = 0x846CA68Bu;

// u = (bits >> 9) * kUniformStep + kUniformOffset (2^-23 steps offset by 2^-24):
// cign_fast.contract.UNIFORM_STEP, UNIFORM_OFFSET.
constexpr float kUniformStep = 1.1920928955078125e-07f;
constexpr float kUniformOffset = 5.9604644775390625e-08f;

}  // namespace cign_fast

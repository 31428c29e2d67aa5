// The counter-based Gumbel noise shared by every backend (see cign_fast/ops/gumbel.py for the
// definition). Host and device code include this header; kernels get the two 32-bit keys that
// Python derives from the seed, and the linear index e = (b * N + i) * S + s of the [B, N, S] map.
//
// Host functions have internal linkage (static), so translation units compiled for different
// instruction sets (csrc/cpu/kernels_*.cpp) never share one out-of-line copy.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CIGN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CIGN_HOST_DEVICE static inline
#endif

namespace cign_fast {

// u = (bits >> 9) * kUniformStep + kUniformOffset, i.e. 2^-23 steps offset by 2^-24.
static constexpr float kUniformStep = 1.1920928955078125e-07f;
static constexpr float kUniformOffset = 5.9604644775390625e-08f;

// "lowbias32" finaliser; U is uint32_t or a GCC/Clang vector of uint32_t (lane-wise, wrap-around).
template <typename U>
CIGN_HOST_DEVICE U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The hashed bits of element `index`; the uniform is built from their top 23 bits.
template <typename U>
CIGN_HOST_DEVICE U noise_bits(U index, uint32_t key_a, uint32_t key_b) {
  return mix32<U>(mix32<U>(index ^ key_a) ^ key_b);
}

// Uniform in [2^-24, 1 - 2^-24]: never 0 or 1, exact in float32.
CIGN_HOST_DEVICE float noise_uniform(uint32_t index, uint32_t key_a, uint32_t key_b) {
  return static_cast<float>(noise_bits<uint32_t>(index, key_a, key_b) >> 9) * kUniformStep + kUniformOffset;
}

CIGN_HOST_DEVICE float gumbel_from_uniform(float u) {
#if defined(__CUDA_ARCH__)
  return -logf(-logf(u));
#else
  return -std::log(-std::log(u));
#endif
}

}  // namespace cign_fast

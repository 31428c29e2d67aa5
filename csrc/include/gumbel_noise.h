// The counter-based Gumbel noise shared by every backend (see cign_fast/ops/gumbel.py for the
// definition). Host and device code include this header; kernels get the two 32-bit keys that
// Python derives from the seed, and the linear index e = (b * N + i) * S + s of the [B, N, S] map.
//
// Host functions have internal linkage (static), so translation units compiled for different
// instruction sets (csrc/cpu/kernels_*.cpp) never share one out-of-line copy.
#pragma once

#include <cmath>
#include <cstdint>

#include "contract.h"

#if defined(__CUDACC__)
#define CIGN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CIGN_HOST_DEVICE static inline
#endif

namespace cign_fast {

// "lowbias32" finaliser; U is uint32_t or a GCC/Clang vector of uint32_t (lane-wise, wrap-around).
template <typename U>
CIGN_HOST_DEVICE U mix32(U x) {
  x ^= x >> 16;
  x *= kMixMul1;
  x ^= x >> 15;
  x *= kMixMul2;
  x ^= x >> 16;
  return x;
}

// The hashed bits of element `index`; the uniform is built from their top 23 bits.
template <typename U>
CIGN_HOST_DEVICE U noise_bits(U index, uint32_t key_a, uint32_t key_b) {
  return mix32<U>(mix32<U>(index ^ key_a) ^ key_b);
}

// The noise index of element [b, i, s] of a local [B, N, S] map whose clip b is clip
// batch_offset + b * batch_stride of the global batch: ((batch_offset + b * batch_stride) * N + i) * S + s.
CIGN_HOST_DEVICE uint32_t noise_index(int64_t b, int64_t i, int64_t s, int64_t groups, int64_t tokens,
                                      int64_t batch_offset, int64_t batch_stride) {
  return static_cast<uint32_t>(((batch_offset + b * batch_stride) * groups + i) * tokens + s);
}

// Uniform in [2^-24, 1 - 2^-24]: never 0 or 1, exact in float32.
CIGN_HOST_DEVICE float noise_uniform(uint32_t index, uint32_t key_a, uint32_t key_b) {
  return static_cast<float>(noise_bits<uint32_t>(index, key_a, key_b) >> 9) * kUniformStep + kUniformOffset;
}

// On the device the logarithms run in double precision: --use_fast_math would turn logf into the
// approximate __logf, whose absolute error near u = 1 (2^-21) swamps -log(u) (as small as 2^-24)
// and would change the noise, and with it the hard choices, against the other backends.
CIGN_HOST_DEVICE float gumbel_from_uniform(float u) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(-log(-log(static_cast<double>(u))));
#else
  return -std::log(-std::log(u));
#endif
}

}  // namespace cign_fast

// The CPU kernels built for AVX2 + FMA (x86-64 only); dispatch.cpp picks them when the CPU has both.
// Standard headers come first, outside the target pragma (see kernels_impl.h).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if defined(CIGN_FAST_HAVE_AVX2_KERNELS)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "gumbel_noise.h"  // its functions are static: this copy is the AVX2 one
#define CIGN_CPU_ISA avx2
#define CIGN_CPU_ISA_NAME "avx2"
#include "kernels_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

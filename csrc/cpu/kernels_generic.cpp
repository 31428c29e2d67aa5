// The CPU kernels built for the compiler's baseline instruction set (SSE2 on x86-64, NEON on arm64).

// The 32-byte vectors travel between the (internal, inlined) helpers as SSE register pairs; GCC
// notes that this differs from the AVX calling convention, which does not matter here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gumbel_noise.h"
#include "kernels.h"

#define CIGN_CPU_ISA generic
#define CIGN_CPU_ISA_NAME "generic"
#include "kernels_impl.h"

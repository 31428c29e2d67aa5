// What this CUDA extension was compiled for: nvcc's __CUDA_ARCH_LIST__, the compute capabilities of the
// build (e.g. "800,900" for TORCH_CUDA_ARCH_LIST="8.0;9.0"), for `cign-fast info`.
#include <string>

namespace cign_fast {

#define CIGN_FAST_STRINGIFY_VALUE(...) #__VA_ARGS__
#define CIGN_FAST_STRINGIFY(...) CIGN_FAST_STRINGIFY_VALUE(__VA_ARGS__)

std::string compiled_archs_cuda() {
#if defined(__CUDA_ARCH_LIST__)
  return CIGN_FAST_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace cign_fast

// CUDA Gumbel noise: the same generator as the CPU and Triton backends, one thread per element.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "gumbel_noise.h"

namespace cign_fast {

__global__ void gumbel_noise_kernel(float* out, int64_t numel, uint32_t key_a, uint32_t key_b) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < numel) out[e] = gumbel_from_uniform(noise_uniform(static_cast<uint32_t>(e), key_a, key_b));
}

at::Tensor gumbel_noise_cuda(int64_t batch, int64_t groups, int64_t tokens, int64_t key_a, int64_t key_b,
                             int64_t device_index) {
  TORCH_CHECK(batch > 0 && groups > 0 && tokens > 0,
              "gumbel_noise: expected positive B, N, S, got ", batch, ", ", groups, ", ", tokens);
  const int64_t numel = batch * groups * tokens;
  TORCH_CHECK(numel < (int64_t{1} << 32), "gumbel_noise: the map has ", numel, " elements; at most 2^32 - 1 are supported");
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  auto noise = at::empty({batch, groups, tokens}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_index));
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((numel + threads - 1) / threads);
  gumbel_noise_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      noise.data_ptr<float>(), numel, static_cast<uint32_t>(key_a), static_cast<uint32_t>(key_b));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return noise;
}

}  // namespace cign_fast

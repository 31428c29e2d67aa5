// CPU Gumbel noise from the same vectorised generator the CPU kernels use (tested against Python).
#include "cpu_ops.h"

namespace cign_fast::cpu {

at::Tensor gumbel_noise(int64_t batch, int64_t groups, int64_t tokens, int64_t key_a, int64_t key_b) {
  TORCH_CHECK(batch > 0 && groups > 0 && tokens > 0,
              "gumbel_noise: expected positive B, N, S, got ", batch, ", ", groups, ", ", tokens);
  const int64_t numel = batch * groups * tokens;
  TORCH_CHECK(numel < (int64_t{1} << 32), "gumbel_noise: the map has ", numel, " elements; at most 2^32 - 1 are supported");
  TORCH_CHECK(key_a >= 0 && key_a <= 0xFFFFFFFF && key_b >= 0 && key_b <= 0xFFFFFFFF,
              "gumbel_noise: keys must be 32-bit unsigned integers, got ", key_a, ", ", key_b);
  at::Tensor noise = at::empty({batch, groups, tokens}, at::TensorOptions().dtype(at::kFloat));
  float* out = noise.data_ptr<float>();
  const KernelTable& kernels = active_kernels();
  constexpr int64_t kBlock = 1 << 14;
  parallel_items((numel + kBlock - 1) / kBlock, 4, 0, [&](int64_t block, int64_t, float*) {
    const int64_t begin = block * kBlock;
    kernels.gumbel_noise(out + begin, begin, std::min(kBlock, numel - begin), static_cast<uint32_t>(key_a),
                         static_cast<uint32_t>(key_b));
  });
  return noise;
}

}  // namespace cign_fast::cpu

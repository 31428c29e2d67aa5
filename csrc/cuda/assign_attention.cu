// assign_attention forward and backward on CUDA.
//
// Layout: the [N, S] map of a batch element is kept token-major, as [S, N] rows (one row per token
// s, the group axis i contiguous), so the softmax over groups of one token is one contiguous row:
// one warp per row, coalesced, reductions by warp shuffles. The four matrix products go to cuBLAS
// through at::bmm on torch's current stream, in float32 (float16/bfloat16 inputs are widened once),
// each reading the token-major map through a transposed view; the fused kernels do the rest:
//   forward:  logits^T = k q^T (cuBLAS) -> row kernel (noise, max/argmax, log-sum-exp, A, maps)
//             -> column kernel (row_sum = sum_s A + eps, A_n = A / row_sum, folded into A)
//             -> out = A_n v (cuBLAS; soft) or a gather of v's rows (hard/gumbel: A is one-hot)
//   backward: logits^T = k q^T, dA_n^T = v dout^T (cuBLAS) -> y = exp(z - lse) (elementwise)
//             -> row dots sum_s dA_n A_n (column kernel) -> row kernel (dA, softmax backward, dz, A_n)
//             -> dv = A_n^T dout (cuBLAS; soft) or a scatter of dout's rows (hard), dq = dz k, dk = dz^T q.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <climits>
#include <cmath>
#include <tuple>

#include "gumbel_noise.h"
#include "tensor_checks.h"

namespace cign_fast {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarp * kWarpsPerBlock;
struct MapShape {
  int64_t batch, groups, tokens;  // B, N, S
};

// Local clip b draws the Gumbel noise of global clip offset + b * stride (gumbel_noise.h).
struct NoiseBatch {
  int64_t offset, stride;
};

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The larger value, the smaller index on ties (the first maximum, as torch.argmax).
__device__ __forceinline__ void warp_argmax(float& value, int& index) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, value, offset);
    const int other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    if (other > value || (other == value && other_index < index)) {
      value = other;
      index = other_index;
    }
  }
}

unsigned blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

// The logit z = (scale * logit + g) / tau of element (b, i, s) from its raw q.k product, rounded step
// by step as the reference computes it (no contraction into an fma, a true division by tau), so
// that equal products give equal hard choices in every backend.
__device__ __forceinline__ float assignment_logit(float raw, int64_t b, int64_t i, int64_t s, const MapShape& shape,
                                                  int mode, float scale, float tau, uint32_t key_a, uint32_t key_b,
                                                  NoiseBatch noise) {
  float value = __fmul_rn(scale, raw);
  if (mode == kModeGumbel) {
    const uint32_t e = noise_index(b, i, s, shape.groups, shape.tokens, noise.offset, noise.stride);
    value = __fadd_rn(value, gumbel_from_uniform(noise_uniform(e, key_a, key_b)));
  }
  return __fdiv_rn(value, tau);
}

// One warp per token row (b, s) of logits_t [B, S, N] (raw q.k products):
// z = assignment_logit; col_argmax, col_lse over the row; the row becomes A (y or one-hot);
// the maps [B, N, S] get y and the one-hot when requested.
template <typename scalar_t>
__global__ void forward_rows_kernel(float* __restrict__ map_t, float* __restrict__ col_lse,
                                    int* __restrict__ col_argmax, scalar_t* __restrict__ hard_map,
                                    scalar_t* __restrict__ soft_map, MapShape shape, int mode, float scale,
                                    float tau, uint32_t key_a, uint32_t key_b, NoiseBatch noise) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= shape.batch * shape.tokens) return;
  const int64_t b = row / shape.tokens, s = row % shape.tokens;
  const int groups = static_cast<int>(shape.groups);
  float* z = map_t + row * groups;

  float best = -INFINITY;
  int best_index = INT_MAX;
  for (int i = lane; i < groups; i += kWarp) {
    const float value = assignment_logit(z[i], b, i, s, shape, mode, scale, tau, key_a, key_b, noise);
    z[i] = value;
    if (value > best) {
      best = value;
      best_index = i;
    }
  }
  warp_argmax(best, best_index);
  float total = 0.0f;
  for (int i = lane; i < groups; i += kWarp) total += expf(z[i] - best);
  total = warp_sum(total);
  const float lse = best + logf(total);
  if (lane == 0) {
    col_lse[row] = lse;
    col_argmax[row] = best_index;
  }
  for (int i = lane; i < groups; i += kWarp) {
    const float y = expf(z[i] - lse);
    const float hard = i == best_index ? 1.0f : 0.0f;
    z[i] = mode == kModeSoft ? y : hard;
    const int64_t map_index = (b * shape.groups + i) * shape.tokens + s;
    if (soft_map != nullptr) soft_map[map_index] = static_cast<scalar_t>(y);
    if (hard_map != nullptr) hard_map[map_index] = static_cast<scalar_t>(hard);
  }
}

// One thread per group (b, i): row_sum = sum_s A[b, s, i] + eps; A[b, :, i] /= row_sum unless sum_assign.
__global__ void normalise_columns_kernel(float* __restrict__ map_t, float* __restrict__ row_sum, MapShape shape,
                                         float eps, bool scale_map) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= shape.batch * shape.groups) return;
  const int64_t b = column / shape.groups, i = column % shape.groups;
  float* a = map_t + b * shape.tokens * shape.groups + i;
  float total = 0.0f;
  for (int64_t s = 0; s < shape.tokens; ++s) total += a[s * shape.groups];
  const float sum = total + eps;
  row_sum[column] = sum;
  if (!scale_map) return;
  const float inv = 1.0f / sum;
  for (int64_t s = 0; s < shape.tokens; ++s) a[s * shape.groups] *= inv;
}

// One block per group (b, i): out[b, i, :] = scale_i * sum of v[b, s, :] over the tokens s it owns.
template <typename scalar_t>
__global__ void gather_rows_kernel(const scalar_t* __restrict__ v, const int* __restrict__ col_argmax,
                                   const float* __restrict__ row_sum, scalar_t* __restrict__ out, MapShape shape,
                                   int64_t channels, bool sum_assign) {
  const int64_t group = blockIdx.x;  // b * N + i
  const int64_t b = group / shape.groups, i = group % shape.groups;
  const int* owner = col_argmax + b * shape.tokens;
  const float scale = sum_assign ? 1.0f : 1.0f / row_sum[group];
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    float total = 0.0f;
    for (int64_t s = 0; s < shape.tokens; ++s) {
      if (owner[s] == i) total += static_cast<float>(v[(b * shape.tokens + s) * channels + c]);
    }
    out[group * channels + c] = static_cast<scalar_t>(total * scale);
  }
}

// Elementwise over logits_t [B, S, N]: y = exp(assignment_logit - col_lse[b, s]).
__global__ void backward_probs_kernel(float* __restrict__ map_t, const float* __restrict__ col_lse, MapShape shape,
                                      int mode, float scale, float tau, uint32_t key_a, uint32_t key_b,
                                      NoiseBatch noise) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= shape.batch * shape.tokens * shape.groups) return;
  const int64_t row = index / shape.groups, i = index % shape.groups;  // row = b * S + s
  const int64_t b = row / shape.tokens, s = row % shape.tokens;
  const float value = assignment_logit(map_t[index], b, i, s, shape, mode, scale, tau, key_a, key_b, noise);
  map_t[index] = expf(value - col_lse[row]);
}

// One thread per group (b, i): row_dot = sum_s dA_n[b, s, i] * A_n[b, s, i], A_n = A / row_sum.
__global__ void row_dot_kernel(const float* __restrict__ grad_t, const float* __restrict__ probs_t,
                               const int* __restrict__ col_argmax, const float* __restrict__ row_sum,
                               float* __restrict__ row_dot, MapShape shape, bool soft) {
  const int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (column >= shape.batch * shape.groups) return;
  const int64_t b = column / shape.groups, i = column % shape.groups;
  const int64_t base = b * shape.tokens * shape.groups + i;
  float total = 0.0f;
  for (int64_t s = 0; s < shape.tokens; ++s) {
    const float assign = soft ? probs_t[base + s * shape.groups] : (col_argmax[b * shape.tokens + s] == i ? 1.0f : 0.0f);
    total += grad_t[base + s * shape.groups] * assign;
  }
  row_dot[column] = total / row_sum[column];
}

// One warp per token row (b, s): dA = (dA_n - row_dot) / row_sum (or dA_n with sum_assign),
// dz = y (dA - sum_i y dA) * scale / tau into grad_t; probs_t becomes A_n (soft mode, for dv).
__global__ void backward_rows_kernel(float* __restrict__ grad_t, float* __restrict__ probs_t,
                                     const float* __restrict__ row_dot, const float* __restrict__ row_sum,
                                     MapShape shape, bool sum_assign, bool soft, float dz_scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= shape.batch * shape.tokens) return;
  const int64_t b = row / shape.tokens;
  const int groups = static_cast<int>(shape.groups);
  float* g = grad_t + row * groups;
  float* y = probs_t + row * groups;
  const float* dots = row_dot + b * groups;
  const float* sums = row_sum + b * groups;
  float col_dot = 0.0f;
  for (int i = lane; i < groups; i += kWarp) {
    const float grad_assign = sum_assign ? g[i] : (g[i] - dots[i]) / sums[i];
    g[i] = grad_assign;
    col_dot += y[i] * grad_assign;
  }
  col_dot = warp_sum(col_dot);
  for (int i = lane; i < groups; i += kWarp) {
    g[i] = y[i] * (g[i] - col_dot) * dz_scale;
    if (soft && !sum_assign) y[i] /= sums[i];
  }
}

// One thread per element of dv [B, S, C] (hard modes): dv[b, s, :] = dout[b, owner, :] * scale_owner; 0 for an
// owner outside [0, N) (col_argmax is not range-checked on the host: that would synchronise).
template <typename scalar_t>
__global__ void scatter_rows_kernel(const scalar_t* __restrict__ grad_out, const int* __restrict__ col_argmax,
                                    const float* __restrict__ row_sum, scalar_t* __restrict__ grad_v, MapShape shape,
                                    int64_t channels, bool sum_assign) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= shape.batch * shape.tokens * channels) return;
  const int64_t row = index / channels, c = index % channels;  // row = b * S + s
  const int64_t b = row / shape.tokens;
  const int owner = col_argmax[row];
  if (owner < 0 || owner >= shape.groups) {
    grad_v[index] = static_cast<scalar_t>(0.0f);
    return;
  }
  const int64_t group = b * shape.groups + owner;
  const float scale = sum_assign ? 1.0f : 1.0f / row_sum[group];
  grad_v[index] = static_cast<scalar_t>(static_cast<float>(grad_out[group * channels + c]) * scale);
}

constexpr const char* kForward = "assign_attention_forward";
constexpr const char* kBackward = "assign_attention_backward";

void check_cuda_dtype(const at::Tensor& q, const char* op) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf, op,
              ": q must be float32, bfloat16 or float16 (cuda backend), got ", q.scalar_type());
}

// q, k, v as contiguous float32 (no copy for contiguous float32 inputs).
at::Tensor widened(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode, double tau, double eps,
    bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset, int64_t noise_batch_stride,
    bool return_maps) {
  check_assign_inputs(kForward, q, k, v, c10::DeviceType::CUDA, mode, tau, eps, key_a, key_b, noise_batch_offset,
                      noise_batch_stride);
  check_cuda_dtype(q, kForward);
  const c10::cuda::CUDAGuard guard(q.device());
  const MapShape shape{q.size(0), q.size(1), k.size(1)};
  const int64_t channels = q.size(2);
  TORCH_CHECK(shape.groups < INT_MAX, kForward, ": too many groups N = ", shape.groups);
  const at::Tensor qf = widened(q), kf = widened(k);
  const auto stat_options = q.options().dtype(at::kFloat);
  at::Tensor map_t = at::bmm(kf, qf.transpose(1, 2)).contiguous();  // [B, S, N]
  at::Tensor col_lse = at::empty({shape.batch, shape.tokens}, stat_options);
  at::Tensor col_argmax = at::empty({shape.batch, shape.tokens}, q.options().dtype(at::kInt));
  at::Tensor row_sum = at::empty({shape.batch, shape.groups}, stat_options);
  const std::vector<int64_t> map_shape = return_maps ? std::vector<int64_t>{shape.batch, shape.groups, shape.tokens}
                                                     : std::vector<int64_t>{0};
  at::Tensor hard_map = at::empty(map_shape, q.options());
  at::Tensor soft_map = at::empty(map_shape, q.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(channels)));
  const bool soft = mode == kModeSoft;
  const NoiseBatch noise{noise_batch_offset, noise_batch_stride};
  // In gumbel mode the soft map is the softmax without the noise: a soft-mode pass over a copy of the
  // products writes it (its statistics are discarded), the gumbel pass writes only the hard map.
  const bool clean_soft_map = return_maps && mode == kModeGumbel;
  at::Tensor out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "assign_attention_forward_cuda", [&] {
    const unsigned row_blocks = blocks_for(shape.batch * shape.tokens, kWarpsPerBlock);
    if (clean_soft_map) {
      at::Tensor clean_t = map_t.clone();
      at::Tensor clean_lse = at::empty_like(col_lse), clean_argmax = at::empty_like(col_argmax);
      forward_rows_kernel<scalar_t><<<row_blocks, kThreads, 0, stream>>>(
          clean_t.data_ptr<float>(), clean_lse.data_ptr<float>(), clean_argmax.data_ptr<int>(), nullptr,
          soft_map.data_ptr<scalar_t>(), shape, kModeSoft, scale, static_cast<float>(tau), 0u, 0u, noise);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    forward_rows_kernel<scalar_t><<<row_blocks, kThreads, 0, stream>>>(
        map_t.data_ptr<float>(), col_lse.data_ptr<float>(), col_argmax.data_ptr<int>(),
        return_maps ? hard_map.data_ptr<scalar_t>() : nullptr,
        return_maps && !clean_soft_map ? soft_map.data_ptr<scalar_t>() : nullptr, shape, static_cast<int>(mode), scale,
        static_cast<float>(tau), static_cast<uint32_t>(key_a), static_cast<uint32_t>(key_b), noise);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    normalise_columns_kernel<<<blocks_for(shape.batch * shape.groups, kThreads), kThreads, 0, stream>>>(
        map_t.data_ptr<float>(), row_sum.data_ptr<float>(), shape, static_cast<float>(eps), soft && !sum_assign);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (soft) {
      out = at::bmm(map_t.transpose(1, 2), widened(v)).to(q.scalar_type());
    } else {
      const at::Tensor vc = v.contiguous();
      out = at::empty({shape.batch, shape.groups, channels}, q.options());
      gather_rows_kernel<scalar_t><<<static_cast<unsigned>(shape.batch * shape.groups), 128, 0, stream>>>(
          vc.data_ptr<scalar_t>(), col_argmax.data_ptr<int>(), row_sum.data_ptr<float>(), out.data_ptr<scalar_t>(),
          shape, channels, sum_assign);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, col_lse, col_argmax, row_sum, hard_map, soft_map};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& col_lse, const at::Tensor& col_argmax, const at::Tensor& row_sum, int64_t mode, double tau,
    double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
    int64_t noise_batch_stride) {
  check_assign_inputs(kBackward, q, k, v, c10::DeviceType::CUDA, mode, tau, eps, key_a, key_b, noise_batch_offset,
                      noise_batch_stride);
  check_cuda_dtype(q, kBackward);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto statistics = checked_backward_statistics(kBackward, grad_out, q, k, col_lse, col_argmax, row_sum);
  const at::Tensor& lse = std::get<0>(statistics);
  const at::Tensor& argmax = std::get<1>(statistics);
  const at::Tensor& sums = std::get<2>(statistics);
  const MapShape shape{q.size(0), q.size(1), k.size(1)};
  const int64_t channels = q.size(2);
  const at::Tensor qf = widened(q), kf = widened(k), vf = widened(v), gf = widened(grad_out);
  at::Tensor probs_t = at::bmm(kf, qf.transpose(1, 2)).contiguous();  // logits, then y, then A_n  [B, S, N]
  at::Tensor grad_t = at::bmm(vf, gf.transpose(1, 2)).contiguous();   // dA_n, then dz            [B, S, N]
  at::Tensor row_dot = at::zeros({shape.batch, shape.groups}, q.options().dtype(at::kFloat));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const double scale = 1.0 / std::sqrt(static_cast<double>(channels));
  const bool soft = mode == kModeSoft;
  const int64_t elements = shape.batch * shape.tokens * shape.groups;

  backward_probs_kernel<<<blocks_for(elements, kThreads), kThreads, 0, stream>>>(
      probs_t.data_ptr<float>(), lse.data_ptr<float>(), shape, static_cast<int>(mode), static_cast<float>(scale),
      static_cast<float>(tau), static_cast<uint32_t>(key_a), static_cast<uint32_t>(key_b),
      NoiseBatch{noise_batch_offset, noise_batch_stride});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!sum_assign) {
    row_dot_kernel<<<blocks_for(shape.batch * shape.groups, kThreads), kThreads, 0, stream>>>(
        grad_t.data_ptr<float>(), probs_t.data_ptr<float>(), argmax.data_ptr<int>(), sums.data_ptr<float>(),
        row_dot.data_ptr<float>(), shape, soft);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  backward_rows_kernel<<<blocks_for(shape.batch * shape.tokens, kWarpsPerBlock), kThreads, 0, stream>>>(
      grad_t.data_ptr<float>(), probs_t.data_ptr<float>(), row_dot.data_ptr<float>(), sums.data_ptr<float>(), shape,
      sum_assign, soft, static_cast<float>(scale / tau));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::ScalarType dtype = q.scalar_type();
  at::Tensor grad_v;
  if (soft) {
    grad_v = at::bmm(probs_t, gf).to(dtype);  // A_n^T dout: probs_t is A_n^T already
  } else {
    const at::Tensor go = grad_out.contiguous();
    grad_v = at::empty({shape.batch, shape.tokens, channels}, q.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "assign_attention_backward_cuda", [&] {
      scatter_rows_kernel<scalar_t><<<blocks_for(shape.batch * shape.tokens * channels, kThreads), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), argmax.data_ptr<int>(), sums.data_ptr<float>(), grad_v.data_ptr<scalar_t>(), shape,
          channels, sum_assign);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor grad_q = at::bmm(grad_t.transpose(1, 2), kf).to(dtype);
  at::Tensor grad_k = at::bmm(grad_t, qf).to(dtype);
  return {grad_q, grad_k, grad_v};
}

}  // namespace cign_fast

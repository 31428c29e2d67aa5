// assign_attention forward and backward on CPU: argument checks, output allocation, and the
// per-batch kernels (kernels_impl.h) spread over ATen's threads.
#include <cmath>
#include <tuple>

#include "cpu_ops.h"

namespace cign_fast::cpu {
namespace {

constexpr const char* kForward = "assign_attention_forward";
constexpr const char* kBackward = "assign_attention_backward";

struct CheckedInputs {
  at::Tensor q, k, v;
  AssignOptions options;
};

// q [B, N, C], k and v [B, S, C] on the CPU in float32 or bfloat16 (tensor_checks.h), with unit
// channel stride; the kernels' options from the scalars.
CheckedInputs check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode,
                           double tau, double eps, bool sum_assign, int64_t key_a, int64_t key_b,
                           int64_t noise_batch_offset, int64_t noise_batch_stride) {
  check_assign_inputs(op, q, k, v, c10::DeviceType::CPU, mode, tau, eps, key_a, key_b, noise_batch_offset,
                      noise_batch_stride);
  AssignOptions options{};
  options.batch = q.size(0);
  options.groups = q.size(1);
  options.tokens = k.size(1);
  options.channels = q.size(2);
  options.mode = static_cast<int>(mode);
  options.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(options.channels)));
  options.tau = static_cast<float>(tau);
  options.eps = static_cast<float>(eps);
  options.sum_assign = sum_assign;
  options.key_a = static_cast<uint32_t>(key_a);
  options.key_b = static_cast<uint32_t>(key_b);
  options.noise_batch_offset = noise_batch_offset;
  options.noise_batch_stride = noise_batch_stride;
  options.dtype = kernel_dtype(q, op, "q");
  return {unit_last_stride(q), unit_last_stride(k), unit_last_stride(v), options};
}

// col_argmax [B, S] (contiguous int32) must hold group indices in [0, groups): the backward kernels
// index memory with them. A plain loop over host memory: no tensor op, no synchronisation.
void check_group_indices(const char* op, const at::Tensor& col_argmax, int64_t groups) {
  const int32_t* index = col_argmax.data_ptr<int32_t>();
  for (int64_t e = 0; e < col_argmax.numel(); ++e) {
    TORCH_CHECK(index[e] >= 0 && index[e] < groups, op, ": col_argmax must hold group indices in [0, ", groups,
                "), got ", index[e], " at flat position ", e);
  }
}

// Fewest batch elements worth a thread: about 2^21 multiply-adds each (tiny problems stay serial).
int64_t batches_per_thread(const AssignOptions& o) {
  return min_items_per_thread(o.groups * o.tokens * o.channels, int64_t{1} << 21);
}

}  // namespace

// Returns (out [B,N,C], col_lse [B,S] f32, col_argmax [B,S] i32, row_sum [B,N] f32, hard_map, soft_map);
// the maps are [B,N,S] with return_maps, else empty. See cign_fast.ops.reference.assign_attention_forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode, double tau, double eps,
    bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset, int64_t noise_batch_stride,
    bool return_maps) {
  const CheckedInputs in = check_inputs(kForward, q, k, v, mode, tau, eps, sum_assign, key_a, key_b,
                                        noise_batch_offset, noise_batch_stride);
  const AssignOptions& o = in.options;
  const auto stat_options = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({o.batch, o.groups, o.channels}, q.options());
  at::Tensor col_lse = at::empty({o.batch, o.tokens}, stat_options);
  at::Tensor col_argmax = at::empty({o.batch, o.tokens}, q.options().dtype(at::kInt));
  at::Tensor row_sum = at::empty({o.batch, o.groups}, stat_options);
  const std::vector<int64_t> map_shape = return_maps ? std::vector<int64_t>{o.batch, o.groups, o.tokens}
                                                     : std::vector<int64_t>{0};
  at::Tensor hard_map = at::empty(map_shape, q.options());
  at::Tensor soft_map = at::empty(map_shape, q.options());

  const AssignForwardIO io{batched_matrix(in.q), batched_matrix(in.k), batched_matrix(in.v), out.data_ptr(),
                           col_lse.data_ptr<float>(), col_argmax.data_ptr<int32_t>(), row_sum.data_ptr<float>(),
                           return_maps ? hard_map.data_ptr() : nullptr, return_maps ? soft_map.data_ptr() : nullptr};
  const KernelTable& kernels = active_kernels();
  parallel_items(o.batch, batches_per_thread(o), kernels.assign_forward_scratch(o),
                 [&](int64_t b, int64_t next, float* scratch) { kernels.assign_forward(o, io, b, next, scratch); });
  return {out, col_lse, col_argmax, row_sum, hard_map, soft_map};
}

// Returns (grad_q, grad_k, grad_v), see cign_fast.ops.reference.assign_attention_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& col_lse, const at::Tensor& col_argmax, const at::Tensor& row_sum, int64_t mode, double tau,
    double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
    int64_t noise_batch_stride) {
  const CheckedInputs in = check_inputs(kBackward, q, k, v, mode, tau, eps, sum_assign, key_a, key_b,
                                        noise_batch_offset, noise_batch_stride);
  const AssignOptions& o = in.options;
  const auto statistics = checked_backward_statistics(kBackward, grad_out, q, k, col_lse, col_argmax, row_sum);
  const at::Tensor& lse = std::get<0>(statistics);
  const at::Tensor& argmax = std::get<1>(statistics);
  const at::Tensor& sums = std::get<2>(statistics);
  check_group_indices(kBackward, argmax, o.groups);
  const at::Tensor go = unit_last_stride(grad_out);

  at::Tensor grad_q = at::empty({o.batch, o.groups, o.channels}, q.options());
  at::Tensor grad_k = at::empty({o.batch, o.tokens, o.channels}, q.options());
  at::Tensor grad_v = at::empty({o.batch, o.tokens, o.channels}, q.options());
  const AssignBackwardIO io{batched_matrix(go),        batched_matrix(in.q),        batched_matrix(in.k),
                            batched_matrix(in.v),      lse.data_ptr<float>(),       argmax.data_ptr<int32_t>(),
                            sums.data_ptr<float>(),    grad_q.data_ptr(),           grad_k.data_ptr(),
                            grad_v.data_ptr()};
  const KernelTable& kernels = active_kernels();
  parallel_items(o.batch, batches_per_thread(o), kernels.assign_backward_scratch(o),
                 [&](int64_t b, int64_t next, float* scratch) { kernels.assign_backward(o, io, b, next, scratch); });
  return {grad_q, grad_k, grad_v};
}

}  // namespace cign_fast::cpu

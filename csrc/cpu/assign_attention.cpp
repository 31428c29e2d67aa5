// assign_attention forward and backward on CPU: argument checks, the matrix products as ATen's batched
// products (BLAS / oneDNN, threaded by ATen), and between them the per-batch passes over the [N, S] maps
// (kernels_impl.h) spread over ATen's threads. The maps and their passes are float32. bfloat16 inputs:
// q k^T is a float32 product of the widened q, k (the logits, hence the hard choices, as the
// reference's); the other products multiply the map rounded to bfloat16 with the bfloat16 operand
// (float32 accumulation, a bfloat16 result, as eager PyTorch in bfloat16 does).
#include <cmath>
#include <optional>
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

// q [B, N, C], k and v [B, S, C] on the CPU in float32 or bfloat16, any strides (tensor_checks.h); the
// kernels' options from the scalars.
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
  return {q, k, v, options};
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

// Fewest batch elements worth a thread in the map passes: about 2^17 elementwise operations each
// (about 32 per map element; tiny problems stay serial).
int64_t maps_per_thread(const AssignOptions& o) { return min_items_per_thread(32 * o.groups * o.tokens, int64_t{1} << 17); }

// Fewest batch elements worth a thread in the one-hot products (one add per element of x).
int64_t rows_per_thread(const AssignOptions& o) { return min_items_per_thread(o.tokens * o.channels, int64_t{1} << 17); }

// t in float32: itself, or a widened copy (bfloat16).
at::Tensor widened(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// The float32 map as the other operand of a product with a tensor of the op's dtype.
at::Tensor map_operand(const at::Tensor& map, const AssignOptions& o) {
  return o.dtype == Dtype::kFloat32 ? map : map.to(at::kBFloat16);
}

// A one-hot product (gather: out [B, N, C] from v; scatter: dv [B, S, C] from dout) in the op's dtype.
at::Tensor one_hot_product(const AssignOptions& o, bool scatter, const at::Tensor& x, const at::Tensor& col_argmax,
                           const at::Tensor& row_sum) {
  const at::Tensor xs = unit_last_stride(x);
  at::Tensor out = at::empty({o.batch, scatter ? o.tokens : o.groups, o.channels}, xs.options().dtype(at::kFloat));
  const AssignRowsIO io{col_argmax.data_ptr<int32_t>(), row_sum.data_ptr<float>(), xs.data_ptr(),
                        xs.stride(0), xs.stride(1), out.data_ptr<float>()};
  const KernelTable& kernels = active_kernels();
  const auto kernel = scatter ? kernels.assign_scatter : kernels.assign_gather;
  parallel_items(o.batch, rows_per_thread(o), o.groups,
                 [&](int64_t b, int64_t, float* scratch) { kernel(o, io, b, scratch); });
  return out.to(x.scalar_type());
}

}  // namespace

// Returns (out [B,N,C], col_lse [B,S] f32, col_argmax [B,S] i32, row_sum [B,N] f32, hard_map, soft_map,
// probs); the maps are [B,N,S] with return_maps, else empty; probs is y [B,N,S] f32 (the softmax over
// groups of the logits, noise included) with save_probs, for the backward, else empty. See
// cign_fast.ops.reference.assign_attention_forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
assign_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode, double tau,
                         double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
                         int64_t noise_batch_stride, bool return_maps, bool save_probs) {
  const CheckedInputs in = check_inputs(kForward, q, k, v, mode, tau, eps, sum_assign, key_a, key_b,
                                        noise_batch_offset, noise_batch_stride);
  const AssignOptions& o = in.options;
  const auto stat_options = q.options().dtype(at::kFloat);
  at::Tensor map = at::bmm(widened(in.q), widened(in.k).transpose(1, 2));  // [B, N, S] contiguous float32
  at::Tensor col_lse = at::empty({o.batch, o.tokens}, stat_options);
  at::Tensor col_argmax = at::empty({o.batch, o.tokens}, q.options().dtype(at::kInt));
  at::Tensor row_sum = at::empty({o.batch, o.groups}, stat_options);
  const std::vector<int64_t> map_shape = return_maps ? std::vector<int64_t>{o.batch, o.groups, o.tokens}
                                                     : std::vector<int64_t>{0};
  at::Tensor hard_map = at::empty(map_shape, q.options());
  at::Tensor soft_map = at::empty(map_shape, q.options());
  at::Tensor probs = save_probs ? at::empty({o.batch, o.groups, o.tokens}, stat_options) : at::empty({0}, stat_options);

  const AssignMapForwardIO io{map.data_ptr<float>(),
                              col_lse.data_ptr<float>(),
                              col_argmax.data_ptr<int32_t>(),
                              row_sum.data_ptr<float>(),
                              return_maps ? hard_map.data_ptr() : nullptr,
                              return_maps ? soft_map.data_ptr() : nullptr,
                              save_probs ? probs.data_ptr<float>() : nullptr};
  const KernelTable& kernels = active_kernels();
  parallel_items(o.batch, maps_per_thread(o), kernels.assign_map_scratch(o),
                 [&](int64_t b, int64_t, float* scratch) { kernels.assign_forward_map(o, io, b, scratch); });
  // soft: out = A_n v; hard and gumbel: the one-hot A_n picks rows of v
  at::Tensor out = o.mode == kModeSoft ? at::bmm(map_operand(map, o), in.v)
                                       : one_hot_product(o, false, in.v, col_argmax, row_sum);
  return {out, col_lse, col_argmax, row_sum, hard_map, soft_map, probs};
}

// Returns (grad_q, grad_k, grad_v), see cign_fast.ops.reference.assign_attention_backward. probs: the
// forward's (save_probs), or empty or None: then y is recomputed from q k^T and the statistics.
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& col_lse, const at::Tensor& col_argmax, const at::Tensor& row_sum, int64_t mode, double tau,
    double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
    int64_t noise_batch_stride, const std::optional<at::Tensor>& probs) {
  const CheckedInputs in = check_inputs(kBackward, q, k, v, mode, tau, eps, sum_assign, key_a, key_b,
                                        noise_batch_offset, noise_batch_stride);
  const AssignOptions& o = in.options;
  const auto statistics = checked_backward_statistics(kBackward, grad_out, q, k, col_lse, col_argmax, row_sum);
  const at::Tensor& lse = std::get<0>(statistics);
  const at::Tensor& argmax = std::get<1>(statistics);
  const at::Tensor& sums = std::get<2>(statistics);
  check_group_indices(kBackward, argmax, o.groups);

  const bool saved = probs.has_value() && probs->defined() && probs->numel() > 0;
  if (saved) {
    TORCH_CHECK(probs->scalar_type() == at::kFloat && probs->dim() == 3 && probs->is_contiguous() &&
                    probs->size(0) == o.batch && probs->size(1) == o.groups && probs->size(2) == o.tokens,
                kBackward, ": probs must be contiguous float32 [", o.batch, ", ", o.groups, ", ", o.tokens,
                "] (the forward's), got ", probs->scalar_type(), " ", probs->sizes());
  }
  // q k^T, recomputed without the saved y; with it, only soft mode needs a buffer (for A_n)
  at::Tensor map = !saved ? at::bmm(widened(in.q), widened(in.k).transpose(1, 2))
                          : o.mode == kModeSoft ? at::empty({o.batch, o.groups, o.tokens}, lse.options())
                                                : at::Tensor();
  at::Tensor grad = widened(at::bmm(grad_out, in.v.transpose(1, 2))).contiguous();  // dA_n = dout v^T
  const AssignMapBackwardIO io{saved ? probs->data_ptr<float>() : nullptr,
                               map.defined() ? map.data_ptr<float>() : nullptr,
                               grad.data_ptr<float>(),
                               lse.data_ptr<float>(),
                               argmax.data_ptr<int32_t>(),
                               sums.data_ptr<float>()};
  const KernelTable& kernels = active_kernels();
  parallel_items(o.batch, maps_per_thread(o), kernels.assign_map_scratch(o),
                 [&](int64_t b, int64_t, float* scratch) { kernels.assign_backward_map(o, io, b, scratch); });
  // dv = A_n^T dout (soft), a scatter of dout's rows (hard, gumbel); dq = dz k, dk = dz^T q (scaled)
  at::Tensor grad_v = o.mode == kModeSoft ? at::bmm(map_operand(map, o).transpose(1, 2), grad_out)
                                          : one_hot_product(o, true, grad_out, argmax, sums);
  const at::Tensor dz = map_operand(grad, o);
  at::Tensor grad_q = at::bmm(dz, in.k);
  at::Tensor grad_k = at::bmm(dz.transpose(1, 2), in.q);
  return {grad_q, grad_k, grad_v};
}

}  // namespace cign_fast::cpu

// Argument checks shared by the CPU and CUDA ops: each failure is a TORCH_CHECK (a Python
// RuntimeError) whose message names the op, the argument and what was expected.
#pragma once

#include <cmath>
#include <string>
#include <tuple>

#include <torch/extension.h>

#include "contract.h"

namespace cign_fast {

// A defined tensor of the given rank on a device of the given type.
inline void check_tensor(const at::Tensor& t, const char* op, const char* name, int64_t rank, c10::DeviceType device) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " must be a ", c10::DeviceTypeName(device, true),
              " tensor, got a tensor on ", t.device());
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must have rank ", rank, ", got shape ", t.sizes());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                             const char* like_name) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have the dtype of ", like_name, " (",
              like.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                              const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on the device of ", like_name, " (",
              like.device(), "), got ", t.device());
}

// A statistic of the forward (col_lse, col_argmax, row_sum): on like's device, of the given dtype
// and shape; returned contiguous.
inline at::Tensor checked_statistic(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                                    at::ScalarType dtype, at::IntArrayRef shape) {
  check_tensor(t, op, name, static_cast<int64_t>(shape.size()), like.device().type());
  check_same_device(t, like, op, name, "q");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  return t.contiguous();
}

// The assign attention inputs q [B, N, C], k and v [B, S, C]: one device, one dtype, consistent sizes,
// non-empty, a global [B, N, S] map of < 2^32 elements (the Gumbel index), valid mode/tau/eps/keys and
// noise batch offset/stride. Metadata only: no value of a tensor is read.
inline void check_assign_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                c10::DeviceType device, int64_t mode, double tau, double eps, int64_t key_a,
                                int64_t key_b, int64_t noise_batch_offset, int64_t noise_batch_stride) {
  check_tensor(q, op, "q", 3, device);
  check_tensor(k, op, "k", 3, device);
  check_tensor(v, op, "v", 3, device);
  check_same_device(k, q, op, "k", "q");
  check_same_device(v, q, op, "v", "q");
  check_same_dtype(k, q, op, "k", "q");
  check_same_dtype(v, q, op, "v", "q");
  const int64_t batch = q.size(0), groups = q.size(1), channels = q.size(2), tokens = k.size(1);
  TORCH_CHECK(k.size(0) == batch && v.size(0) == batch, op, ": q, k, v must share the batch size B, got q ", q.sizes(),
              ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(k.size(2) == channels && v.size(2) == channels, op, ": q, k, v must share the channels C, got q ",
              q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(v.size(1) == tokens, op, ": k and v must have the same tokens S, got k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(batch > 0 && groups > 0 && tokens > 0 && channels > 0, op, ": expected non-empty q, k, v, got q ",
              q.sizes(), ", k ", k.sizes());
  TORCH_CHECK(noise_batch_offset >= 0 && noise_batch_offset < (int64_t{1} << 32) && noise_batch_stride >= 1 &&
                  noise_batch_stride < (int64_t{1} << 32),
              op, ": noise_batch_offset must be in [0, 2^32) and noise_batch_stride in [1, 2^32), got ",
              noise_batch_offset, " and ", noise_batch_stride);
  const int64_t global_batch = noise_batch_offset + (batch - 1) * noise_batch_stride + 1;
  TORCH_CHECK(global_batch * groups * tokens < (int64_t{1} << 32), op,
              ": the global [B, N, S] map must have < 2^32 elements, got ", global_batch, " x ", groups, " x ", tokens);
  TORCH_CHECK(mode == kModeSoft || mode == kModeHard || mode == kModeGumbel, op, ": mode must be ", kModeSoft,
              " (soft), ", kModeHard, " (hard) or ", kModeGumbel, " (gumbel), got ", mode);
  TORCH_CHECK(std::isfinite(tau) && tau > 0, op, ": tau must be a finite number > 0, got ", tau);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite number >= 0, got ", eps);
  TORCH_CHECK(key_a >= 0 && key_a <= 0xFFFFFFFFLL && key_b >= 0 && key_b <= 0xFFFFFFFFLL, op,
              ": Gumbel keys must be 32-bit unsigned integers, got ", key_a, ", ", key_b);
}

// The statistics passed to the backward, checked against q [B, N, C] and k [B, S, C]; returns them
// contiguous. Metadata only: whether col_argmax holds group indices is a value check, left to the
// caller (the CPU op checks it on the host; the CUDA kernels ignore an index outside [0, N)).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> checked_backward_statistics(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& col_lse,
    const at::Tensor& col_argmax, const at::Tensor& row_sum) {
  const int64_t batch = q.size(0), groups = q.size(1), tokens = k.size(1);
  check_tensor(grad_out, op, "grad_out", 3, q.device().type());
  check_same_device(grad_out, q, op, "grad_out", "q");
  check_same_dtype(grad_out, q, op, "grad_out", "q");
  TORCH_CHECK(grad_out.sizes() == q.sizes(), op, ": grad_out must have the shape of q ", q.sizes(), ", got ",
              grad_out.sizes());
  at::Tensor lse = checked_statistic(col_lse, q, op, "col_lse", at::kFloat, {batch, tokens});
  at::Tensor argmax = checked_statistic(col_argmax, q, op, "col_argmax", at::kInt, {batch, tokens});
  at::Tensor sums = checked_statistic(row_sum, q, op, "row_sum", at::kFloat, {batch, groups});
  return {lse, argmax, sums};
}

// The distillation inputs student/teacher [R, K] (any strides) and their options.
inline void check_distill_inputs(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                                 c10::DeviceType device, int64_t start, int64_t stop, double temperature,
                                 const std::string& reduction) {
  check_tensor(student, op, "student", 2, device);
  check_tensor(teacher, op, "teacher", 2, device);
  check_same_device(teacher, student, op, "teacher", "student");
  check_same_dtype(teacher, student, op, "teacher", "student");
  TORCH_CHECK(teacher.sizes() == student.sizes(), op, ": teacher must have the student's shape ", student.sizes(),
              ", got ", teacher.sizes());
  TORCH_CHECK(student.size(0) > 0, op, ": expected at least one row, got student ", student.sizes());
  TORCH_CHECK(0 <= start && start < stop && stop <= student.size(1), op,
              ": columns [start, stop) must be a non-empty range in [0, ", student.size(1), "], got [", start, ", ",
              stop, ")");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be a finite number > 0, got ",
              temperature);
  TORCH_CHECK(reduction == "batchmean" || reduction == "mean" || reduction == "sum" || reduction == "none", op,
              ": reduction must be 'batchmean', 'mean', 'sum' or 'none', got '", reduction, "'");
}

}  // namespace cign_fast

// bernoulli_distill_kl on CUDA: one warp per row, per-row losses and the student gradient in one
// launch and one sweep over the row's columns; any strides; float32 arithmetic for every input dtype.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "distill_rows.cuh"
#include "tensor_checks.h"

namespace cign_fast {
namespace {

// Per row r, on the columns: z = x / T reflected so that the teacher's is <= 0 (a = -|z_t|,
// b = +-z_s; the KL of the two Bernoullis is unchanged); row_loss[r] = T^2 sum_c [softplus(b) -
// softplus(a) - sigmoid(a) (b - a)]; grad[r, c] = grad_scale * +-(sigmoid(b) - sigmoid(a)), 0 off the columns.
// Equal logits contribute exactly 0 (nvcc contracts multiply-adds into FMAs, which may round the two
// softpluses differently).
template <typename scalar_t>
__global__ void bernoulli_rows_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                      DistillShape shape, float temperature, float grad_scale,
                                      float* __restrict__ row_loss, scalar_t* __restrict__ grad) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= shape.rows) return;
  const float inv_t = 1.0f / temperature;
  const scalar_t* s_row = student + r * shape.student_row_stride;
  const scalar_t* t_row = teacher + r * shape.teacher_row_stride;
  scalar_t* g_row = grad + r * shape.width;
  float kl = 0.0f;
  for (int64_t c = lane; c < shape.width; c += kWarp) {
    float value = 0.0f;
    if (c >= shape.start && c < shape.stop) {
      const float zs = static_cast<float>(s_row[c * shape.student_col_stride]) * inv_t;
      const float zt = static_cast<float>(t_row[c * shape.teacher_col_stride]) * inv_t;
      const bool flip = zt > 0.0f;
      const float a = flip ? -zt : zt, b = flip ? -zs : zs;
      const float exp_a = expf(a), exp_b = expf(-fabsf(b));  // both in (0, 1]
      const float sigmoid_a = exp_a / (1.0f + exp_a);
      const float sigmoid_b = (b >= 0.0f ? 1.0f : exp_b) / (1.0f + exp_b);
      if (a != b) kl += fmaxf(b, 0.0f) + log1pf(exp_b) - log1pf(exp_a) - sigmoid_a * (b - a);
      const float p_diff = sigmoid_b - sigmoid_a;
      value = grad_scale * (flip ? -p_diff : p_diff);
    }
    g_row[c] = static_cast<scalar_t>(value);
  }
  kl = warp_sum(kl);
  if (lane == 0) row_loss[r] = temperature * temperature * kl;
}

}  // namespace

// Returns (row_loss [R] float32, grad_student [R, K]): the loss of each row before the reduction
// (cign_fast.ops.native reduces it) and the gradient of the reduced loss.
std::tuple<at::Tensor, at::Tensor> bernoulli_distill_kl_rows_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                  int64_t start, int64_t stop, double temperature,
                                                                  const std::string& reduction) {
  constexpr const char* op = "bernoulli_distill_kl_rows";
  check_distill_inputs(op, student, teacher, c10::DeviceType::CUDA, start, stop, temperature, reduction);
  check_distill_cuda_dtype(op, student);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t rows = student.size(0), width = student.size(1);
  const double divisor = reduction == "batchmean" ? static_cast<double>(rows)
                         : reduction == "mean"    ? static_cast<double>(rows) * (stop - start)
                                                  : 1.0;
  const float grad_scale = static_cast<float>(temperature / divisor);
  at::Tensor grad = at::empty({rows, width}, student.options());
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "bernoulli_distill_kl_rows_cuda", [&] {
    bernoulli_rows_kernel<scalar_t><<<distill_blocks(rows), kWarp * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        student.data_ptr<scalar_t>(), teacher.data_ptr<scalar_t>(), distill_shape(student, teacher, start, stop),
        static_cast<float>(temperature), grad_scale, row_loss.data_ptr<float>(), grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {row_loss, grad};
}

}  // namespace cign_fast

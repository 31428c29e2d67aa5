// token_distill_kl forward on CUDA: one warp per row, loss and student gradient in one launch.
// Three sweeps over the row's columns (maxima; sums and the cross term; gradient), all from the
// same cache lines; any strides; float32 arithmetic for every input dtype.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "distill_rows.cuh"
#include "tensor_checks.h"

namespace cign_fast {
namespace {

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Per row r: z = x[r, start:stop] / T; row_loss[r] = T^2 KL(softmax(z_t) || softmax(z_s));
// grad[r, :] = grad_scale * (p_s - p_t) on the columns, 0 elsewhere. Every term is written in the
// shifted logits d = z - max(z) <= 0 (log p = d - log sum exp d), so a constant offset of any size
// added to a row changes nothing beyond the rounding of the inputs.
template <typename scalar_t>
__global__ void distill_rows_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                    DistillShape shape, float temperature, float grad_scale,
                                    float* __restrict__ row_loss, scalar_t* __restrict__ grad) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= shape.rows) return;
  const float inv_t = 1.0f / temperature;
  const scalar_t* s_row = student + r * shape.student_row_stride;
  const scalar_t* t_row = teacher + r * shape.teacher_row_stride;
  auto z_s = [&](int64_t c) { return static_cast<float>(s_row[c * shape.student_col_stride]) * inv_t; };
  auto z_t = [&](int64_t c) { return static_cast<float>(t_row[c * shape.teacher_col_stride]) * inv_t; };

  float max_s = -INFINITY, max_t = -INFINITY;
  for (int64_t c = shape.start + lane; c < shape.stop; c += kWarp) {
    max_s = fmaxf(max_s, z_s(c));
    max_t = fmaxf(max_t, z_t(c));
  }
  max_s = warp_max(max_s);
  max_t = warp_max(max_t);
  float sum_s = 0.0f, sum_t = 0.0f, cross = 0.0f;  // cross = sum_c e_t (d_t - d_s)
  for (int64_t c = shape.start + lane; c < shape.stop; c += kWarp) {
    const float ds = z_s(c) - max_s, dt = z_t(c) - max_t;
    const float et = __expf(dt);
    sum_s += __expf(ds);
    sum_t += et;
    cross += et * (dt - ds);
  }
  sum_s = warp_sum(sum_s);
  sum_t = warp_sum(sum_t);
  cross = warp_sum(cross);
  const float log_sum_s = __logf(sum_s), log_sum_t = __logf(sum_t);
  if (lane == 0) row_loss[r] = temperature * temperature * (cross / sum_t - log_sum_t + log_sum_s);
  scalar_t* g_row = grad + r * shape.width;
  for (int64_t c = lane; c < shape.width; c += kWarp) {
    float value = 0.0f;
    if (c >= shape.start && c < shape.stop) {
      value = grad_scale * (__expf((z_s(c) - max_s) - log_sum_s) - __expf((z_t(c) - max_t) - log_sum_t));
    }
    g_row[c] = static_cast<scalar_t>(value);
  }
}

// The reduction of the per-row losses [R] (float32), summed in float64.
at::Tensor reduce_row_losses(const at::Tensor& row_loss, const std::string& reduction) {
  if (reduction == "none") return row_loss;
  at::Tensor total = at::sum(row_loss, at::kDouble);
  if (reduction == "batchmean" || reduction == "mean") total = total / static_cast<double>(row_loss.size(0));
  return total.to(at::kFloat);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> token_distill_kl_forward_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                 int64_t start, int64_t stop, double temperature,
                                                                 const std::string& reduction) {
  constexpr const char* op = "token_distill_kl_forward";
  check_distill_inputs(op, student, teacher, c10::DeviceType::CUDA, start, stop, temperature, reduction);
  check_distill_cuda_dtype(op, student);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t rows = student.size(0), width = student.size(1);
  const DistillShape shape = distill_shape(student, teacher, start, stop);
  const bool mean = reduction == "batchmean" || reduction == "mean";
  const float grad_scale = static_cast<float>(mean ? temperature / static_cast<double>(rows) : temperature);
  at::Tensor grad = at::empty({rows, width}, student.options());
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(at::kFloat));
  const unsigned blocks = distill_blocks(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "token_distill_kl_forward_cuda", [&] {
    distill_rows_kernel<scalar_t><<<blocks, kWarp * kWarpsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
        student.data_ptr<scalar_t>(), teacher.data_ptr<scalar_t>(), shape, static_cast<float>(temperature), grad_scale,
        row_loss.data_ptr<float>(), grad.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduce_row_losses(row_loss, reduction), grad};
}

}  // namespace cign_fast

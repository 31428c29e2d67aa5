// token_distill_kl forward on CPU: loss and student gradient in one pass over the rows.
#include <cmath>
#include <string>
#include <tuple>

#include "cpu_ops.h"

namespace cign_fast::cpu {

// Returns (loss, grad_student [R, K]); see cign_fast.ops.reference.token_distill_kl_forward.
std::tuple<at::Tensor, at::Tensor> token_distill_kl_forward(const at::Tensor& student, const at::Tensor& teacher,
                                                           int64_t start, int64_t stop, double temperature,
                                                           const std::string& reduction) {
  constexpr const char* op = "token_distill_kl_forward";
  check_distill_inputs(op, student, teacher, c10::DeviceType::CPU, start, stop, temperature, reduction);
  const Dtype dtype = kernel_dtype(student, op, "student");
  const int64_t rows = student.size(0);
  const bool mean = reduction == "batchmean" || reduction == "mean";
  const double grad_scale = mean ? temperature / static_cast<double>(rows) : temperature;
  auto [row_loss, grad] =
      run_distill_rows(student, teacher, start, stop, temperature, grad_scale, dtype, active_kernels().distill_rows);
  if (reduction == "none") return {row_loss, grad};
  const float* losses = row_loss.data_ptr<float>();
  double total = 0.0;  // summed in row order: the same result for any number of threads
  for (int64_t r = 0; r < rows; ++r) total += losses[r];
  if (mean) total /= static_cast<double>(rows);
  return {at::scalar_tensor(total, row_loss.options()), grad};
}

}  // namespace cign_fast::cpu

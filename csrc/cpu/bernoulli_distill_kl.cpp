// bernoulli_distill_kl on CPU: per-row losses and the student gradient in one pass over the rows.
#include <string>
#include <tuple>

#include "cpu_ops.h"

namespace cign_fast::cpu {

// Returns (row_loss [R] float32, grad_student [R, K]): the loss of each row before the reduction
// (cign_fast.ops.native reduces it) and the gradient of the reduced loss; see
// cign_fast.ops.reference.bernoulli_distill_kl_forward.
std::tuple<at::Tensor, at::Tensor> bernoulli_distill_kl_rows(const at::Tensor& student, const at::Tensor& teacher,
                                                             int64_t start, int64_t stop, double temperature,
                                                             const std::string& reduction) {
  constexpr const char* op = "bernoulli_distill_kl_rows";
  check_distill_inputs(op, student, teacher, c10::DeviceType::CPU, start, stop, temperature, reduction);
  const Dtype dtype = kernel_dtype(student, op, "student");
  const double rows = static_cast<double>(student.size(0));
  const double divisor = reduction == "batchmean" ? rows : reduction == "mean" ? rows * (stop - start) : 1.0;
  return run_distill_rows(student, teacher, start, stop, temperature, temperature / divisor, dtype,
                          active_kernels().bernoulli_rows);
}

}  // namespace cign_fast::cpu

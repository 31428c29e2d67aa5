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
  const int64_t rows = student.size(0), width = student.size(1);
  const bool mean = reduction == "batchmean" || reduction == "mean";
  at::Tensor grad = at::empty({rows, width}, student.options());
  at::Tensor row_loss = at::empty({rows}, student.options().dtype(at::kFloat));
  DistillIO io{};
  io.student = student.data_ptr();
  io.teacher = teacher.data_ptr();
  io.rows = rows;
  io.width = width;
  io.start = start;
  io.stop = stop;
  io.student_row_stride = student.stride(0);
  io.student_col_stride = student.stride(1);
  io.teacher_row_stride = teacher.stride(0);
  io.teacher_col_stride = teacher.stride(1);
  io.temperature = static_cast<float>(temperature);
  io.grad_scale = static_cast<float>(mean ? temperature / static_cast<double>(rows) : temperature);
  io.dtype = dtype;
  io.row_loss = row_loss.data_ptr<float>();
  io.grad = grad.data_ptr();
  const KernelTable& kernels = active_kernels();
  constexpr int64_t kBlockRows = 64;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  parallel_items(blocks, min_items_per_thread(kBlockRows * (stop - start), int64_t{1} << 17), kernels.distill_scratch(io),
                 [&](int64_t block, int64_t, float* scratch) {
                   kernels.distill_rows(io, block * kBlockRows, std::min(rows, (block + 1) * kBlockRows), scratch);
                 });
  if (reduction == "none") return {row_loss, grad};
  double total = 0.0;  // summed in row order: the same result for any number of threads
  for (int64_t r = 0; r < rows; ++r) total += io.row_loss[r];
  if (mean) total /= static_cast<double>(rows);
  return {at::scalar_tensor(total, row_loss.options()), grad};
}

}  // namespace cign_fast::cpu

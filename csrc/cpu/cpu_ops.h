// Helpers of the CPU ops' host code (torch-aware; never included by the kernel translation units).
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <tuple>

#include <ATen/Parallel.h>

#include "kernels.h"
#include "tensor_checks.h"

namespace cign_fast::cpu {

// The kernels' dtype for a float32 / bfloat16 tensor; other dtypes are refused.
inline Dtype kernel_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ", name,
              " must be float32 or bfloat16 (cpp backend), got ", t.scalar_type());
  return t.scalar_type() == at::kFloat ? Dtype::kFloat32 : Dtype::kBFloat16;
}

// t with unit stride along its last dimension (a copy only when it is strided there).
inline at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// Runs kernel(item, next_item, scratch) for every item in [0, count) on ATen's threads (at most
// torch.get_num_threads(), and no more than count / min_items_per_thread of them: small problems run
// inline, without a parallel region). Items are handed out one at a time from a shared counter, so
// a thread the OS holds back (a busy machine) leaves its share to the others; next_item is the item
// the same thread does next (-1 if none), for prefetching. Each thread has its own scratch of
// scratch_floats floats.
template <typename Kernel>
void parallel_items(int64_t count, int64_t min_items_per_thread, int64_t scratch_floats, const Kernel& kernel) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count / min_items_per_thread));
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    std::unique_ptr<float[]> scratch(new float[std::max<int64_t>(scratch_floats, 1)]);
    for (int64_t item = next.fetch_add(1); item < count;) {
      const int64_t following = next.fetch_add(1);
      kernel(item, following < count ? following : -1, scratch.get());
      item = following;
    }
  };
  if (workers == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, workers, 1, work);
  }
}

// Fewest items worth a thread of their own when one item costs item_work (arbitrary units) and a
// thread should get at least min_thread_work of them.
inline int64_t min_items_per_thread(int64_t item_work, int64_t min_thread_work) {
  return std::max<int64_t>(1, (min_thread_work + item_work - 1) / std::max<int64_t>(item_work, 1));
}

using DistillRowsKernel = void (*)(const DistillIO&, int64_t row_begin, int64_t row_end, float* scratch);

// A distillation kernel (KernelTable::distill_rows or bernoulli_rows) over student/teacher [R, K]
// (any strides; checked by check_distill_inputs) on blocks of 64 rows spread over ATen's threads.
// Returns (row_loss [R] float32, grad [R, K] contiguous in the student's dtype); grad_scale is T
// divided by what the reduction divides the summed loss by.
inline std::tuple<at::Tensor, at::Tensor> run_distill_rows(const at::Tensor& student, const at::Tensor& teacher,
                                                          int64_t start, int64_t stop, double temperature,
                                                          double grad_scale, Dtype dtype, DistillRowsKernel rows_kernel) {
  const int64_t rows = student.size(0), width = student.size(1);
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
  io.grad_scale = static_cast<float>(grad_scale);
  io.dtype = dtype;
  io.row_loss = row_loss.data_ptr<float>();
  io.grad = grad.data_ptr();
  constexpr int64_t kBlockRows = 64;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  parallel_items(blocks, min_items_per_thread(kBlockRows * (stop - start), int64_t{1} << 17),
                 active_kernels().distill_scratch(io), [&](int64_t block, int64_t, float* scratch) {
                   rows_kernel(io, block * kBlockRows, std::min(rows, (block + 1) * kBlockRows), scratch);
                 });
  return {row_loss, grad};
}

}  // namespace cign_fast::cpu

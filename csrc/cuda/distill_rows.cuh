// What the CUDA distillation kernels (token_distill_kl.cu, bernoulli_distill_kl.cu) share: one warp
// per row of student/teacher logits [R, K] with any strides, kWarpsPerBlock rows per block.
#pragma once

#include <torch/extension.h>

namespace cign_fast {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

struct DistillShape {
  int64_t rows, width, start, stop;
  int64_t student_row_stride, student_col_stride, teacher_row_stride, teacher_col_stride;
};

inline DistillShape distill_shape(const at::Tensor& student, const at::Tensor& teacher, int64_t start, int64_t stop) {
  return {student.size(0), student.size(1), start, stop, student.stride(0), student.stride(1), teacher.stride(0),
          teacher.stride(1)};
}

// The grid of a launch over rows: one warp per row.
inline unsigned distill_blocks(int64_t rows) { return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// The dtypes the CUDA distillation kernels take.
inline void check_distill_cuda_dtype(const char* op, const at::Tensor& student) {
  TORCH_CHECK(student.scalar_type() == at::kFloat || student.scalar_type() == at::kBFloat16 ||
                  student.scalar_type() == at::kHalf,
              op, ": student must be float32, bfloat16 or float16 (cuda backend), got ", student.scalar_type());
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace cign_fast

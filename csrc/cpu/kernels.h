// The CPU kernels' interface: plain structs of raw pointers and sizes, no torch types, so that the
// kernel translation units (kernels_avx2.cpp, kernels_generic.cpp) can be compiled for different
// instruction sets without sharing any inline function with the torch-aware code.
//
// The kernels work on one batch element (assign attention) or a range of rows (distillation) at a
// time; the callers in assign_attention.cpp / token_distill_kl.cpp / bernoulli_distill_kl.cpp spread
// them over threads with at::parallel_for. All arithmetic is float32; bfloat16 inputs are widened on load.
#pragma once

#include <cstdint>

#include "contract.h"

namespace cign_fast::cpu {

enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1 };

// A batch of row-major matrices with unit column stride: element (b, r, c) lives at
// data + b * batch_stride + r * row_stride + c (in elements of the dtype).
struct BatchedMatrix {
  const void* data;
  int64_t batch_stride;
  int64_t row_stride;
};

struct AssignOptions {
  int64_t batch, groups, tokens, channels;  // B, N, S, C
  int mode;                                 // kModeSoft / kModeHard / kModeGumbel (contract.h)
  float scale;                              // C^-0.5
  float tau, eps;
  bool sum_assign;
  uint32_t key_a, key_b;                    // Gumbel keys (gumbel_noise.h)
  int64_t noise_batch_offset;               // local clip b draws the noise of global clip
  int64_t noise_batch_stride;               //   noise_batch_offset + b * noise_batch_stride
  Dtype dtype;                              // of q, k, v, grad_out and of every output but the statistics
};

// Forward outputs are contiguous: out [B, N, C]; col_lse, col_argmax [B, S]; row_sum [B, N];
// hard_map, soft_map [B, N, S] or nullptr.
struct AssignForwardIO {
  BatchedMatrix q, k, v;
  void* out;
  float* col_lse;
  int32_t* col_argmax;
  float* row_sum;
  void* hard_map;
  void* soft_map;
};

// Backward inputs: grad_out [B, N, C] and the forward's statistics (contiguous); outputs contiguous.
struct AssignBackwardIO {
  BatchedMatrix grad_out, q, k, v;
  const float* col_lse;
  const int32_t* col_argmax;
  const float* row_sum;
  void* grad_q;
  void* grad_k;
  void* grad_v;
};

// Distillation of rows [R, K], columns [start, stop); student/teacher with any strides (elements).
struct DistillIO {
  const void* student;
  const void* teacher;
  int64_t rows, width, start, stop;
  int64_t student_row_stride, student_col_stride, teacher_row_stride, teacher_col_stride;
  float temperature;
  float grad_scale;  // T, divided by what the reduction divides the summed loss by (R for batchmean)
  Dtype dtype;
  float* row_loss;   // [R]: T^2 * KL per row
  void* grad;        // [R, K] contiguous, dtype: d(loss)/d(student), zero outside the columns
};

struct KernelTable {
  const char* isa;
  // Floats of per-thread scratch each kernel needs.
  int64_t (*assign_forward_scratch)(const AssignOptions&);
  int64_t (*assign_backward_scratch)(const AssignOptions&);
  int64_t (*distill_scratch)(const DistillIO&);
  // Batch element batch_index; next_index (or -1) is the one this thread does next: its inputs are
  // prefetched meanwhile.
  void (*assign_forward)(const AssignOptions&, const AssignForwardIO&, int64_t batch_index, int64_t next_index,
                         float* scratch);
  void (*assign_backward)(const AssignOptions&, const AssignBackwardIO&, int64_t batch_index, int64_t next_index,
                          float* scratch);
  // Rows [row_begin, row_end) of the distillation ops (softmax KL, per-class Bernoulli KL); both take
  // distill_scratch floats of scratch.
  void (*distill_rows)(const DistillIO&, int64_t row_begin, int64_t row_end, float* scratch);
  void (*bernoulli_rows)(const DistillIO&, int64_t row_begin, int64_t row_end, float* scratch);
  // Gumbel noise of elements [first, first + count) into out[0, count).
  void (*gumbel_noise)(float* out, int64_t first, int64_t count, uint32_t key_a, uint32_t key_b);
};

#if defined(__x86_64__) || defined(_M_X64)
#define CIGN_FAST_HAVE_AVX2_KERNELS 1
namespace avx2 {
const KernelTable& kernels();
}
#endif
namespace generic {
const KernelTable& kernels();
}

// The kernels in use: AVX2+FMA when this CPU has them, else the generic build (see select_kernels).
const KernelTable& active_kernels();

// Switch the kernels in use: "auto", "avx2" or "generic" (for tests and benchmarks); returns the ISA chosen.
const char* select_kernels(const char* name);

}  // namespace cign_fast::cpu

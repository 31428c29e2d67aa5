// The CPU kernels' interface: plain structs of raw pointers and sizes, no torch types, so that the
// kernel translation units (kernels_avx2.cpp, kernels_generic.cpp) can be compiled for different
// instruction sets without sharing any inline function with the torch-aware code.
//
// The kernels work on one batch element (assign attention's passes over its maps) or a range of rows
// (distillation) at a time; the callers in assign_attention.cpp / token_distill_kl.cpp /
// bernoulli_distill_kl.cpp spread them over threads with at::parallel_for. All arithmetic is float32;
// bfloat16 inputs are widened on load (assign attention: by ATen before its products).
#pragma once

#include <cstdint>

#include "contract.h"

namespace cign_fast::cpu {

enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1 };

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

// The passes of assign attention over one batch element's [N, S] float32 maps; the matrix products
// around them are ATen's batched products (assign_attention.cpp). Every map is contiguous [B, N, S].
struct AssignMapForwardIO {
  float* map;           // q k^T on entry; the normalised assignment A_n on exit (soft mode; else the logits' exp)
  float* col_lse;       // [B, S] out: log-sum-exp over groups of the logits
  int32_t* col_argmax;  // [B, S] out: first group of the largest logit
  float* row_sum;       // [B, N] out: sum_s A + eps
  void* hard_map;       // [B, N, S] in the dtype, or nullptr
  void* soft_map;       // [B, N, S] in the dtype, or nullptr
  float* probs;         // [B, N, S] out: y, the softmax over groups of the logits (for the backward), or nullptr
};

struct AssignMapBackwardIO {
  const float* probs;  // y saved by the forward, or nullptr: then recomputed from q k^T in map
  float* map;          // q k^T on entry when probs is null; A_n on exit in soft mode (for dv = A_n^T dout)
  float* grad;         // dA_n = dout v^T on entry; scale * dz (dz: the gradient of the logits) on exit
  const float* col_lse;
  const int32_t* col_argmax;
  const float* row_sum;
};

// The one-hot products of the hard modes: out[i] = r_i * sum_{s: argmax(s) = i} x[s] (gather: x = v,
// out [B, N, C]) or out[s] = r_argmax(s) * x[argmax(s)] (scatter: x = dout, out = dv [B, S, C]), with
// r_i = 1 / row_sum[i] (1 with sum_assign). x in the options' dtype with unit column stride (bfloat16 is
// widened as it is read), out contiguous float32.
struct AssignRowsIO {
  const int32_t* col_argmax;
  const float* row_sum;
  const void* x;
  int64_t x_batch_stride, x_row_stride;
  float* out;
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
  // Floats of per-thread scratch each kernel needs (assign_map_scratch: both map passes and the rows kernels).
  int64_t (*assign_map_scratch)(const AssignOptions&);
  int64_t (*distill_scratch)(const DistillIO&);
  // Batch element batch_index of the map passes and of the one-hot products.
  void (*assign_forward_map)(const AssignOptions&, const AssignMapForwardIO&, int64_t batch_index, float* scratch);
  void (*assign_backward_map)(const AssignOptions&, const AssignMapBackwardIO&, int64_t batch_index, float* scratch);
  void (*assign_gather)(const AssignOptions&, const AssignRowsIO&, int64_t batch_index, float* scratch);
  void (*assign_scatter)(const AssignOptions&, const AssignRowsIO&, int64_t batch_index, float* scratch);
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

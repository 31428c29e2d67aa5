// Helpers of the CPU ops' host code (torch-aware; never included by the kernel translation units).
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>

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

inline BatchedMatrix batched_matrix(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1)}; }

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

}  // namespace cign_fast::cpu

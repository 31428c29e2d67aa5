// Run-time choice between the AVX2 and the generic build of the CPU kernels.
#include <atomic>
#include <cstring>

#include <c10/util/Exception.h>

#include "kernels.h"

namespace cign_fast::cpu {
namespace {

bool cpu_has_avx2_fma() {
#if defined(CIGN_FAST_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const KernelTable& best_kernels() {
#if defined(CIGN_FAST_HAVE_AVX2_KERNELS)
  if (cpu_has_avx2_fma()) return avx2::kernels();
#endif
  return generic::kernels();
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

const KernelTable& active_kernels() {
  const KernelTable* table = active.load(std::memory_order_acquire);
  if (table == nullptr) {
    table = &best_kernels();
    active.store(table, std::memory_order_release);
  }
  return *table;
}

const char* select_kernels(const char* name) {
  const KernelTable* table = nullptr;
  if (std::strcmp(name, "auto") == 0) {
    table = &best_kernels();
  } else if (std::strcmp(name, "generic") == 0) {
    table = &generic::kernels();
  } else if (std::strcmp(name, "avx2") == 0) {
    TORCH_CHECK(cpu_has_avx2_fma(), "select_kernels: this CPU (or build) has no AVX2+FMA kernels");
#if defined(CIGN_FAST_HAVE_AVX2_KERNELS)
    table = &avx2::kernels();
#endif
  } else {
    TORCH_CHECK(false, "select_kernels: expected 'auto', 'avx2' or 'generic', got '", name, "'");
  }
  active.store(table, std::memory_order_release);
  return table->isa;
}

}  // namespace cign_fast::cpu

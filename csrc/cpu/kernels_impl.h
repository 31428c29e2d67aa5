// The CPU kernels, written once and compiled once per instruction set: kernels_avx2.cpp and
// kernels_generic.cpp include this file after defining CIGN_CPU_ISA (the namespace to put them in)
// and, for AVX2, a target pragma. It has no #include of its own: the including file brings the
// standard headers in *before* the pragma, so no inline function is ever shared between the builds.
//
// Vectors are GCC/Clang vector extensions of 8 floats: one AVX register in the AVX2 build, a pair
// of SSE/NEON registers in the generic one. Maps [N, S] are row-major; every pass over them runs
// along the token axis s, so the column reductions of the softmax over groups are vertical vector
// operations. Assign attention's matrix products (q k^T, A_n v; dout v^T, A_n^T dout, dz k, dz^T q)
// are ATen's batched products (BLAS), in assign_attention.cpp; what lies between them is here, one
// pass per batch element over its [N, S] maps while they are in cache: the logits, the softmax over
// groups with its statistics and argmax, the normalisation over tokens (forward), and the
// normalisation and softmax backward (backward). The one-hot products of the hard modes are gathers.

namespace cign_fast::cpu::CIGN_CPU_ISA {
namespace {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

inline f32x8 splat(float s) { return f32x8{s, s, s, s, s, s, s, s}; }
inline i32x8 splat_i(int32_t s) { return i32x8{s, s, s, s, s, s, s, s}; }

inline f32x8 load(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }

// The first n (<= kLanes) elements; missing lanes are zero.
template <typename V, typename T>
inline V load_part(const T* p, int64_t n) {
  V v = {};
  if (n >= kLanes) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (int64_t j = 0; j < n; ++j) v[j] = p[j];
  }
  return v;
}

template <typename V, typename T>
inline void store_part(T* p, V v, int64_t n) {
  if (n >= kLanes) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (int64_t j = 0; j < n; ++j) p[j] = v[j];
  }
}

// body(offset, count) over [0, n) in chunks of kLanes (the last one may be shorter).
template <typename Body>
inline void for_each_chunk(int64_t n, Body&& body) {
  for (int64_t s = 0; s < n; s += kLanes) body(s, min_i64(kLanes, n - s));
}

inline f32x8 select(i32x8 mask, f32x8 a, f32x8 b) {
  return (f32x8)(((i32x8)a & mask) | ((i32x8)b & ~mask));
}

inline f32x8 vmax(f32x8 a, f32x8 b) { return select(a > b, a, b); }

inline float hsum(f32x8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

inline float hmax(f32x8 v) {
  float m = v[0];
  for (int j = 1; j < kLanes; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

// exp(x) for x <= 88 (Cephes' range reduction and polynomial, ~1 ulp); 0 below -87.3.
inline f32x8 exp8(f32x8 x) {
  const f32x8 lowest = splat(-87.33654f);
  const f32x8 xc = vmax(x, lowest);
  const f32x8 round_magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const f32x8 n = (xc * 1.44269504088896341f + round_magic) - round_magic;
  const f32x8 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  f32x8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f32x8 y = p * (r * r) + r + 1.0f;
  const i32x8 two_to_n = (__builtin_convertvector(n, i32x8) + 127) << 23;
  return select(x < lowest, splat(0.0f), y * (f32x8)two_to_n);
}

// Natural log of positive normal floats (Cephes' decomposition and polynomial, ~1 ulp).
inline f32x8 log8(f32x8 x) {
  const i32x8 bits = (i32x8)x;
  i32x8 exponent = ((bits >> 23) & 0xFF) - 126;
  f32x8 m = (f32x8)((bits & 0x007FFFFF) | 0x3F000000);  // x = m * 2^exponent, m in [0.5, 1)
  const i32x8 small = m < 0.707106781186547524f;
  exponent += small;                                      // the mask is -1 where small
  m = m + select(small, m, splat(0.0f)) - 1.0f;           // 2m - 1 or m - 1, in [-0.29, 0.41]
  const f32x8 z = m * m;
  f32x8 p = splat(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const f32x8 e = __builtin_convertvector(exponent, f32x8);
  f32x8 y = p * m * z + e * -2.12194440e-4f - 0.5f * z;
  return m + y + e * 0.693359375f;
}

// Gumbel noise of the elements first .. first + 7 (gumbel_noise.h, with the vector logarithm).
inline f32x8 gumbel8(uint32_t first, uint32_t key_a, uint32_t key_b) {
  const u32x8 index = u32x8{0, 1, 2, 3, 4, 5, 6, 7} + first;
  const u32x8 bits = noise_bits<u32x8>(index, key_a, key_b) >> 9;
  const f32x8 u = __builtin_convertvector((i32x8)bits, f32x8) * kUniformStep + kUniformOffset;
  return -log8(-log8(u));
}

// ---------------------------------------------------------------------------------------------
// dtype conversion

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, NaN to the canonical quiet NaN (as c10::BFloat16 does).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

inline const void* advance(const void* base, Dtype dtype, int64_t elements) {
  return static_cast<const char*>(base) + elements * (dtype == Dtype::kFloat32 ? 4 : 2);
}

inline void* advance(void* base, Dtype dtype, int64_t elements) {
  return static_cast<char*>(base) + elements * (dtype == Dtype::kFloat32 ? 4 : 2);
}

// dst[j] = src[j * stride] as float, j < n.
inline void widen_row(const void* src, Dtype dtype, int64_t stride, int64_t n, float* dst) {
  if (dtype == Dtype::kFloat32) {
    const float* s = static_cast<const float*>(src);
    if (stride == 1) {
      std::memcpy(dst, s, n * sizeof(float));
    } else {
      for (int64_t j = 0; j < n; ++j) dst[j] = s[j * stride];
    }
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(s[j * stride]);
  }
}

// Contiguous dst[0, n) = src in the dtype.
inline void narrow_row(const float* src, void* dst, Dtype dtype, int64_t n) {
  if (dtype == Dtype::kFloat32) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t j = 0; j < n; ++j) d[j] = float_to_bf16(src[j]);
  }
}

inline void zero_row(void* dst, Dtype dtype, int64_t n) {
  std::memset(dst, 0, n * (dtype == Dtype::kFloat32 ? 4 : 2));
}

// Per-thread scratch handed out in 64-byte aligned slices; with a null base it only measures.
struct Arena {
  float* base;
  int64_t used = 0;
  float* take(int64_t count) {
    float* slice = base == nullptr ? nullptr : base + used;
    used += round_up(count, 16);
    return slice;
  }
};

// Column statistics of map [N, S] over the group axis: col_max, col_argmax (first maximum; skipped
// when null), and map <- exp(map - col_max) with col_sum its column sums.
void exp_columns(float* map, int64_t groups, int64_t tokens, float* col_max, float* col_sum, int32_t* col_argmax) {
  for_each_chunk(tokens, [&](int64_t s, int64_t n) {
    f32x8 best = load_part<f32x8>(map + s, n);
    i32x8 best_row = splat_i(0);
    for (int64_t i = 1; i < groups; ++i) {
      const f32x8 z = load_part<f32x8>(map + i * tokens + s, n);
      const i32x8 better = z > best;
      best = select(better, z, best);
      best_row = (better & splat_i(static_cast<int32_t>(i))) | (~better & best_row);
    }
    store_part(col_max + s, best, n);
    if (col_argmax != nullptr) store_part(col_argmax + s, best_row, n);
    store_part(col_sum + s, splat(0.0f), n);
  });
  for (int64_t i = 0; i < groups; ++i) {
    float* row = map + i * tokens;
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      const f32x8 e = exp8(load_part<f32x8>(row + s, n) - load_part<f32x8>(col_max + s, n));
      store_part(row + s, e, n);
      store_part(col_sum + s, load_part<f32x8>(col_sum + s, n) + e, n);
    });
  }
}

// map[i, s] *= col_scale[s]; returns nothing, writes row sums into row_total when not null.
void scale_columns(float* map, int64_t groups, int64_t tokens, const float* col_scale, float* row_total) {
  for (int64_t i = 0; i < groups; ++i) {
    float* row = map + i * tokens;
    f32x8 total = splat(0.0f);
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      const f32x8 y = load_part<f32x8>(row + s, n) * load_part<f32x8>(col_scale + s, n);
      store_part(row + s, y, n);
      total += y;
    });
    if (row_total != nullptr) row_total[i] = hsum(total);
  }
}

// row_sum[i] = number of tokens whose argmax is group i.
void count_owners(const int32_t* col_argmax, int64_t groups, int64_t tokens, float* row_sum) {
  for (int64_t i = 0; i < groups; ++i) row_sum[i] = 0.0f;
  for (int64_t s = 0; s < tokens; ++s) row_sum[col_argmax[s]] += 1.0f;
}

// out[i, :] = map[i, :] * row_scale[i] (out may be map).
void scale_rows(const float* map, int64_t groups, int64_t tokens, const float* row_scale, float* out) {
  for (int64_t i = 0; i < groups; ++i) {
    const f32x8 scale = splat(row_scale[i]);
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      store_part(out + i * tokens + s, load_part<f32x8>(map + i * tokens + s, n) * scale, n);
    });
  }
}

// grad [N, S]: dA_n -> dA = (dA_n - sum_t dA_n[i, t] A_n[i, t]) / r_i, with A_n = A * row_scale.
void normalise_backward(float* grad, const float* probs, const int32_t* argmax, int64_t groups, int64_t tokens,
                        bool soft, const float* row_scale, float* row_dot) {
  if (soft) {
    for (int64_t i = 0; i < groups; ++i) {
      const float* y = probs + i * tokens;
      const float* g = grad + i * tokens;
      f32x8 dot = splat(0.0f);
      for_each_chunk(tokens, [&](int64_t s, int64_t n) { dot += load_part<f32x8>(g + s, n) * load_part<f32x8>(y + s, n); });
      row_dot[i] = hsum(dot) * row_scale[i];
    }
  } else {  // A is one-hot per token: only the owning group's entry counts
    for (int64_t i = 0; i < groups; ++i) row_dot[i] = 0.0f;
    for (int64_t s = 0; s < tokens; ++s) row_dot[argmax[s]] += grad[argmax[s] * tokens + s];
    for (int64_t i = 0; i < groups; ++i) row_dot[i] *= row_scale[i];
  }
  for (int64_t i = 0; i < groups; ++i) {
    float* g = grad + i * tokens;
    const float shift = row_dot[i], scale = row_scale[i];
    for_each_chunk(tokens, [&](int64_t s, int64_t n) { store_part(g + s, (load_part<f32x8>(g + s, n) - shift) * scale, n); });
  }
}

// grad [N, S]: dA -> dz * scale, dz = y (dA - sum_j y_j dA_j) (the softmax over groups, per token).
void softmax_backward(float* grad, const float* probs, int64_t groups, int64_t tokens, float scale, float* col_dot) {
  for (int64_t s = 0; s < tokens; ++s) col_dot[s] = 0.0f;
  for (int64_t i = 0; i < groups; ++i) {
    const float* y = probs + i * tokens;
    const float* g = grad + i * tokens;
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      store_part(col_dot + s, load_part<f32x8>(col_dot + s, n) + load_part<f32x8>(y + s, n) * load_part<f32x8>(g + s, n), n);
    });
  }
  for (int64_t i = 0; i < groups; ++i) {
    const float* y = probs + i * tokens;
    float* g = grad + i * tokens;
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      const f32x8 dz = load_part<f32x8>(y + s, n) * (load_part<f32x8>(g + s, n) - load_part<f32x8>(col_dot + s, n));
      store_part(g + s, dz * scale, n);
    });
  }
}

// map [N, S] <- (scale * p + g) / tau for batch element b, from the product p = q k^T in map; g is the
// Gumbel noise when with_noise, else 0. The scaled product is stored by one sweep and the noise added
// by another, so the compiler cannot contract them into a fused multiply-add, and the division is a
// true one (not a product with 1 / tau): the logits round as the reference's.
void logits_from_product(const AssignOptions& o, int64_t b, float* map, bool with_noise) {
  const int64_t groups = o.groups, tokens = o.tokens;
  const f32x8 scale = splat(o.scale);
  for_each_chunk(groups * tokens, [&](int64_t e, int64_t n) { store_part(map + e, load_part<f32x8>(map + e, n) * scale, n); });
  if (!with_noise && o.tau == 1.0f) return;
  const f32x8 tau = splat(o.tau);
  for (int64_t i = 0; i < groups; ++i) {
    float* row = map + i * tokens;
    const uint32_t first = noise_index(b, i, 0, groups, tokens, o.noise_batch_offset, o.noise_batch_stride);
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      f32x8 z = load_part<f32x8>(row + s, n);
      if (with_noise) z += gumbel8(first + static_cast<uint32_t>(s), o.key_a, o.key_b);
      store_part(row + s, z / tau, n);
    });
  }
}

// row_scale[i] = 1 / row_sum[i], or 1 with sum_assign (the normalisation over tokens).
void row_scales(const AssignOptions& o, const float* row_sum, float* row_scale) {
  for (int64_t i = 0; i < o.groups; ++i) row_scale[i] = o.sum_assign ? 1.0f : 1.0f / row_sum[i];
}

// Floats of per-thread scratch of the map passes and of the one-hot products.
int64_t assign_map_scratch(const AssignOptions& o) {
  Arena arena{nullptr};
  arena.take(o.tokens);             // column maxima / dot products
  arena.take(o.tokens);             // column sums
  arena.take(o.groups);             // row scales
  arena.take(o.groups);             // row dot products
  arena.take(o.groups * o.tokens);  // the noise-free soft map (gumbel mode with the maps)
  return arena.used;
}

// Writes map [N, S] (float32) at batch element b of a [B, N, S] map output in the dtype.
void write_map(const AssignOptions& o, const float* map, void* out, int64_t b) {
  narrow_row(map, advance(out, o.dtype, b * o.groups * o.tokens), o.dtype, o.groups * o.tokens);
}

// Batch element b of the forward: from q k^T, the column statistics (col_lse, col_argmax), the row sums
// and, in soft mode, map <- A_n = y * row_scale (what ATen multiplies with v); the maps when asked for.
void assign_forward_map(const AssignOptions& o, const AssignMapForwardIO& io, int64_t b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, size = groups * tokens;
  Arena arena{scratch};
  float* col_max = arena.take(tokens);
  float* col_sum = arena.take(tokens);
  float* row_scale = arena.take(groups);
  arena.take(groups);
  float* clean = arena.take(size);
  float* map = io.map + b * size;
  float* lse = io.col_lse + b * tokens;
  int32_t* argmax = io.col_argmax + b * tokens;
  float* row_sum = io.row_sum + b * groups;
  const bool soft = o.mode == kModeSoft, noisy = o.mode == kModeGumbel;

  if (io.soft_map != nullptr && noisy) {  // the soft map is the softmax without the noise
    std::memcpy(clean, map, size * sizeof(float));
    logits_from_product(o, b, clean, false);
    exp_columns(clean, groups, tokens, col_max, col_sum, nullptr);
    for (int64_t s = 0; s < tokens; ++s) col_sum[s] = 1.0f / col_sum[s];
    scale_columns(clean, groups, tokens, col_sum, nullptr);
    write_map(o, clean, io.soft_map, b);
  }
  logits_from_product(o, b, map, noisy);
  exp_columns(map, groups, tokens, col_max, col_sum, argmax);
  for (int64_t s = 0; s < tokens; ++s) {
    lse[s] = col_max[s] + std::log(col_sum[s]);
    col_sum[s] = 1.0f / col_sum[s];
  }
  const bool soft_map_here = io.soft_map != nullptr && !noisy;
  if (soft || soft_map_here || io.probs != nullptr) {  // map <- y (the hard modes need it only for these)
    scale_columns(map, groups, tokens, col_sum, soft ? row_sum : nullptr);
  }
  if (soft_map_here) write_map(o, map, io.soft_map, b);
  if (io.probs != nullptr) std::memcpy(io.probs + b * size, map, size * sizeof(float));
  if (!soft) count_owners(argmax, groups, tokens, row_sum);
  for (int64_t i = 0; i < groups; ++i) row_sum[i] += o.eps;
  if (io.hard_map != nullptr) {
    for (int64_t i = 0; i < groups; ++i) {
      float* row = clean + i * tokens;
      for (int64_t s = 0; s < tokens; ++s) row[s] = argmax[s] == i ? 1.0f : 0.0f;
    }
    write_map(o, clean, io.hard_map, b);
  }
  if (soft && !o.sum_assign) {
    row_scales(o, row_sum, row_scale);
    scale_rows(map, groups, tokens, row_scale, map);
  }
}

// Batch element b of the backward: from q k^T and dA_n = dout v^T, grad <- scale * dz / tau (dz: the
// gradient of the logits; grad is that of the product q k^T, what ATen multiplies with k and q) and,
// in soft mode, map <- A_n (what ATen multiplies with dout for dv).
void assign_backward_map(const AssignOptions& o, const AssignMapBackwardIO& io, int64_t b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, size = groups * tokens;
  Arena arena{scratch};
  float* col_dot = arena.take(tokens);
  arena.take(tokens);
  float* row_scale = arena.take(groups);
  float* row_dot = arena.take(groups);
  float* map = io.map == nullptr ? nullptr : io.map + b * size;  // q k^T or nothing, then A_n (soft mode)
  float* grad = io.grad + b * size;                               // dA_n, then dA, then scale * dz / tau
  const float* lse = io.col_lse + b * tokens;
  const int32_t* argmax = io.col_argmax + b * tokens;
  const bool soft = o.mode == kModeSoft;

  const float* probs = io.probs == nullptr ? map : io.probs + b * size;  // y
  if (io.probs == nullptr) {  // recompute y from q k^T and the column statistics
    logits_from_product(o, b, map, o.mode == kModeGumbel);
    for (int64_t i = 0; i < groups; ++i) {
      float* row = map + i * tokens;
      for_each_chunk(tokens, [&](int64_t s, int64_t n) {
        store_part(row + s, exp8(load_part<f32x8>(row + s, n) - load_part<f32x8>(lse + s, n)), n);
      });
    }
  }
  row_scales(o, io.row_sum + b * groups, row_scale);
  if (!o.sum_assign) normalise_backward(grad, probs, argmax, groups, tokens, soft, row_scale, row_dot);
  softmax_backward(grad, probs, groups, tokens, o.scale / o.tau, col_dot);
  if (soft) scale_rows(probs, groups, tokens, row_scale, map);
}

// out[b, i, :] = r_i * sum of the rows x[b, s, :] with argmax(s) == i (out [N, C] of batch element b).
void assign_gather(const AssignOptions& o, const AssignRowsIO& io, int64_t b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  const int32_t* owner = io.col_argmax + b * tokens;
  float* row_scale = scratch;
  row_scales(o, io.row_sum + b * groups, row_scale);
  float* out = io.out + b * groups * channels;
  std::memset(out, 0, groups * channels * sizeof(float));
  for (int64_t s = 0; s < tokens; ++s) {
    float* __restrict o_row = out + owner[s] * channels;
    const void* x = advance(io.x, o.dtype, b * io.x_batch_stride + s * io.x_row_stride);
    if (o.dtype == Dtype::kFloat32) {
      const float* __restrict xf = static_cast<const float*>(x);
      for (int64_t j = 0; j < channels; ++j) o_row[j] += xf[j];
    } else {
      const uint16_t* __restrict xh = static_cast<const uint16_t*>(x);
      for (int64_t j = 0; j < channels; ++j) o_row[j] += bf16_to_float(xh[j]);
    }
  }
  if (o.sum_assign) return;
  for (int64_t i = 0; i < groups; ++i) {
    float* __restrict o_row = out + i * channels;
    const float scale = row_scale[i];
    for (int64_t j = 0; j < channels; ++j) o_row[j] *= scale;
  }
}

// out[b, s, :] = r_argmax(s) * x[b, argmax(s), :] (out [S, C] of batch element b).
void assign_scatter(const AssignOptions& o, const AssignRowsIO& io, int64_t b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  const int32_t* owner = io.col_argmax + b * tokens;
  float* row_scale = scratch;
  row_scales(o, io.row_sum + b * groups, row_scale);
  for (int64_t s = 0; s < tokens; ++s) {
    const void* x = advance(io.x, o.dtype, b * io.x_batch_stride + owner[s] * io.x_row_stride);
    float* __restrict o_row = io.out + (b * tokens + s) * channels;
    const float scale = row_scale[owner[s]];
    if (o.dtype == Dtype::kFloat32) {
      const float* __restrict xf = static_cast<const float*>(x);
      for (int64_t j = 0; j < channels; ++j) o_row[j] = scale * xf[j];
    } else {
      const uint16_t* __restrict xh = static_cast<const uint16_t*>(x);
      for (int64_t j = 0; j < channels; ++j) o_row[j] = scale * bf16_to_float(xh[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Class-token distillation

int64_t distill_scratch(const DistillIO& io) { return 2 * round_up(io.stop - io.start, 16); }

// The first n lanes set.
inline i32x8 lanes_below(int64_t n) { return i32x8{0, 1, 2, 3, 4, 5, 6, 7} < static_cast<int32_t>(n); }

// Row r of a distillation input from column `start` on, as float32: the input itself when it is
// float32 with unit column stride, else widened into buffer.
inline const float* distill_row(const void* base, int64_t row_stride, int64_t col_stride, const DistillIO& io, int64_t r,
                                float* buffer) {
  const void* first = advance(base, io.dtype, r * row_stride + io.start * col_stride);
  if (io.dtype == Dtype::kFloat32 && col_stride == 1) return static_cast<const float*>(first);
  widen_row(first, io.dtype, col_stride, io.stop - io.start, buffer);
  return buffer;
}

// Per row r: z = x[r, start:stop] / T for student and teacher, the loss T^2 KL(p_t || p_s) and the
// gradient grad_scale * (p_s - p_t) on the columns (zero elsewhere). Three sweeps over the row:
// maxima; exponentials, their sums and sum_c e_t (d_t - d_s); gradient. Every term is written in the
// shifted logits d = z - max(z) <= 0 (log p = d - log sum exp d), never in z itself, so a constant
// offset of any size added to a row changes nothing beyond the rounding of the inputs.
void distill_rows(const DistillIO& io, int64_t row_begin, int64_t row_end, float* scratch) {
  const int64_t width = io.stop - io.start;
  const Dtype dtype = io.dtype;
  float* exp_s = scratch;
  float* exp_t = scratch + round_up(width, 16);
  const float inv_t = 1.0f / io.temperature;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* xs = distill_row(io.student, io.student_row_stride, io.student_col_stride, io, r, exp_s);
    const float* xt = distill_row(io.teacher, io.teacher_row_stride, io.teacher_col_stride, io, r, exp_t);
    f32x8 max_s = splat(-3.0e38f), max_t = splat(-3.0e38f);
    for_each_chunk(width, [&](int64_t c, int64_t n) {
      const i32x8 valid = lanes_below(n);
      max_s = select(valid, vmax(max_s, load_part<f32x8>(xs + c, n)), max_s);
      max_t = select(valid, vmax(max_t, load_part<f32x8>(xt + c, n)), max_t);
    });
    const float ms = hmax(max_s), mt = hmax(max_t);
    f32x8 sum_s = splat(0.0f), sum_t = splat(0.0f), cross = splat(0.0f);
    for_each_chunk(width, [&](int64_t c, int64_t n) {
      const f32x8 ds = (load_part<f32x8>(xs + c, n) - ms) * inv_t, dt = (load_part<f32x8>(xt + c, n) - mt) * inv_t;
      const i32x8 valid = lanes_below(n);
      const f32x8 es = select(valid, exp8(ds), splat(0.0f));
      const f32x8 et = select(valid, exp8(dt), splat(0.0f));
      sum_s += es;
      sum_t += et;
      cross += select(valid, et * (dt - ds), splat(0.0f));
      store_part(exp_s + c, es, n);
      store_part(exp_t + c, et, n);
    });
    const double total_s = hsum(sum_s), total_t = hsum(sum_t);
    const double kl = hsum(cross) / total_t - std::log(total_t) + std::log(total_s);
    io.row_loss[r] = static_cast<float>(static_cast<double>(io.temperature) * io.temperature * kl);
    const float gs = static_cast<float>(io.grad_scale / total_s), gt = static_cast<float>(io.grad_scale / total_t);
    void* grad_row = advance(io.grad, dtype, r * io.width);
    float* grad = dtype == Dtype::kFloat32 ? static_cast<float*>(advance(grad_row, dtype, io.start)) : exp_s;
    for_each_chunk(width, [&](int64_t c, int64_t n) {
      store_part(grad + c, load_part<f32x8>(exp_s + c, n) * gs - load_part<f32x8>(exp_t + c, n) * gt, n);
    });
    if (dtype != Dtype::kFloat32) narrow_row(exp_s, advance(grad_row, dtype, io.start), dtype, width);
    zero_row(grad_row, dtype, io.start);
    zero_row(advance(grad_row, dtype, io.stop), dtype, io.width - io.stop);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-class Bernoulli distillation

inline f32x8 abs8(f32x8 x) { return (f32x8)((i32x8)x & 0x7FFFFFFF); }

// log(1 + u) for u in [0, 1]: 2 atanh(y), y = u / (2 + u) <= 1/3, by its series up to y^13 (the
// next term is below float32's rounding of the sum).
inline f32x8 log1p8(f32x8 u) {
  const f32x8 y = u / (u + 2.0f);
  const f32x8 y2 = y * y;
  f32x8 series = splat(1.0f / 13.0f);
  series = series * y2 + 1.0f / 11.0f;
  series = series * y2 + 1.0f / 9.0f;
  series = series * y2 + 1.0f / 7.0f;
  series = series * y2 + 1.0f / 5.0f;
  series = series * y2 + 1.0f / 3.0f;
  series = series * y2 + 1.0f;
  return 2.0f * y * series;
}

// Per row r, on the columns: z = x / T reflected so that the teacher's is <= 0 (a = -|z_t|,
// b = +-z_s; the KL of the two Bernoullis is unchanged), the loss T^2 sum_c [softplus(b) -
// softplus(a) - sigmoid(a) (b - a)] and the gradient grad_scale * +-(sigmoid(b) - sigmoid(a)),
// zero elsewhere; from two exponentials per element, e^a and e^-|b|, in one sweep over the row.
// Equal logits contribute exactly 0 (the compiler may contract one of the two softpluses into an FMA
// and not the other).
void bernoulli_rows(const DistillIO& io, int64_t row_begin, int64_t row_end, float* scratch) {
  const int64_t width = io.stop - io.start;
  const Dtype dtype = io.dtype;
  float* student_buffer = scratch;
  float* teacher_buffer = scratch + round_up(width, 16);
  const float inv_t = 1.0f / io.temperature;
  const f32x8 zero = splat(0.0f), one = splat(1.0f);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* xs = distill_row(io.student, io.student_row_stride, io.student_col_stride, io, r, student_buffer);
    const float* xt = distill_row(io.teacher, io.teacher_row_stride, io.teacher_col_stride, io, r, teacher_buffer);
    void* grad_row = advance(io.grad, dtype, r * io.width);
    // float32: straight into the output; bfloat16: over the widened student row, chunk by chunk after reading it.
    float* grad = dtype == Dtype::kFloat32 ? static_cast<float*>(advance(grad_row, dtype, io.start)) : student_buffer;
    f32x8 total = zero;
    for_each_chunk(width, [&](int64_t c, int64_t n) {
      const f32x8 zs = load_part<f32x8>(xs + c, n) * inv_t, zt = load_part<f32x8>(xt + c, n) * inv_t;
      const i32x8 flip = zt > 0.0f;
      const f32x8 a = select(flip, -zt, zt), b = select(flip, -zs, zs);
      const f32x8 exp_a = exp8(a), exp_b = exp8(-abs8(b));
      const f32x8 sigmoid_a = exp_a / (exp_a + 1.0f);
      const f32x8 sigmoid_b = select(b >= 0.0f, one, exp_b) / (exp_b + 1.0f);
      const f32x8 kl = vmax(b, zero) + log1p8(exp_b) - log1p8(exp_a) - sigmoid_a * (b - a);
      total += select(lanes_below(n) & (a != b), kl, zero);  // equal logits: exactly 0, whatever FMAs contract
      const f32x8 p_diff = sigmoid_b - sigmoid_a;
      store_part(grad + c, select(flip, -p_diff, p_diff) * io.grad_scale, n);
    });
    io.row_loss[r] = static_cast<float>(static_cast<double>(io.temperature) * io.temperature * hsum(total));
    if (dtype != Dtype::kFloat32) narrow_row(student_buffer, advance(grad_row, dtype, io.start), dtype, width);
    zero_row(grad_row, dtype, io.start);
    zero_row(advance(grad_row, dtype, io.stop), dtype, io.width - io.stop);
  }
}

void gumbel_noise(float* out, int64_t first, int64_t count, uint32_t key_a, uint32_t key_b) {
  for_each_chunk(count, [&](int64_t s, int64_t n) {
    store_part(out + s, gumbel8(static_cast<uint32_t>(first + s), key_a, key_b), n);
  });
}

}  // namespace
}  // namespace cign_fast::cpu::CIGN_CPU_ISA

namespace cign_fast::cpu::CIGN_CPU_ISA {

const KernelTable& kernels() {
  static const KernelTable table{
      CIGN_CPU_ISA_NAME, assign_map_scratch, distill_scratch, assign_forward_map, assign_backward_map,
      assign_gather,     assign_scatter,     distill_rows,    bernoulli_rows,     gumbel_noise,
  };
  return table;
}

}  // namespace cign_fast::cpu::CIGN_CPU_ISA

// The CPU kernels, written once and compiled once per instruction set: kernels_avx2.cpp and
// kernels_generic.cpp include this file after defining CIGN_CPU_ISA (the namespace to put them in)
// and, for AVX2, a target pragma. It has no #include of its own: the including file brings the
// standard headers in *before* the pragma, so no inline function is ever shared between the builds.
//
// Vectors are GCC/Clang vector extensions of 8 floats: one AVX register in the AVX2 build, a pair
// of SSE/NEON registers in the generic one. Maps [N, S] are row-major; every pass over them runs
// along the token axis s, so the column reductions of the softmax over groups are vertical vector
// operations. The two matrix-product shapes are register-blocked micro-kernels:
//   dot_nt:  out[m, n] = alpha * <a[m, :], b[n, :]>           (logits q k^T, dA_n = dout v^T)
//   axpy:    out[m, :] = scale[m] * sum_l p(m, l) * x[l, :]    (A_n v, A_n^T dout, dz k, dz^T q)
// The normalisation over tokens and the softmax backward are the elementwise passes in between, all
// on one batch element's [N, S] map while it is in cache.

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

// A float32 matrix with leading dimension ld.
struct Matrix {
  const float* data;
  int64_t ld;
};

// Batch element b of m ([rows, cols]) as float32: the input itself when it is float32, else
// widened into buffer (rows * cols floats).
inline Matrix batch_matrix(const BatchedMatrix& m, Dtype dtype, int64_t b, int64_t rows, int64_t cols, float* buffer) {
  if (dtype == Dtype::kFloat32) return {static_cast<const float*>(m.data) + b * m.batch_stride, m.row_stride};
  for (int64_t r = 0; r < rows; ++r) {
    widen_row(advance(m.data, dtype, b * m.batch_stride + r * m.row_stride), dtype, 1, cols, buffer + r * cols);
  }
  return {buffer, cols};
}

// dst[0, n) = src with stores that bypass the caches where the build has them (outputs are not
// read again by the kernel: streaming them saves reading each line before it is written).
inline void stream_row(const float* src, float* dst, int64_t n) {
#if defined(CIGN_CPU_STREAM_STORES)
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 31) != 0; ++j) dst[j] = src[j];
  for (; j + kLanes <= n; j += kLanes) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
  for (; j < n; ++j) dst[j] = src[j];
#else
  std::memcpy(dst, src, n * sizeof(float));
#endif
}

// Orders the streaming stores before anything this thread does next.
inline void finish_streaming() {
#if defined(CIGN_CPU_STREAM_STORES)
  _mm_sfence();
#endif
}

// Writes `count` output floats, computed in buffer, at element `offset` of out in the dtype.
inline void copy_out(const float* buffer, void* out, Dtype dtype, int64_t offset, int64_t count) {
  if (dtype == Dtype::kFloat32) {
    stream_row(buffer, static_cast<float*>(out) + offset, count);
  } else {
    narrow_row(buffer, advance(out, dtype, offset), dtype, count);
  }
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

// Software prefetch of the next batch element's inputs, spread over the current element's
// matrix-product tiles (step() once per tile), so that their loads from memory overlap arithmetic.
class Prefetcher {
 public:
  // Batch element b of m, [rows, cols] in the dtype.
  void add(const BatchedMatrix& m, Dtype dtype, int64_t b, int64_t rows, int64_t cols) {
    const int64_t size = dtype == Dtype::kFloat32 ? 4 : 2;
    Region region{static_cast<const char*>(advance(m.data, dtype, b * m.batch_stride)), rows, cols * size,
                  m.row_stride * size};
    if (region.stride == region.row_bytes) {  // contiguous rows: one long row
      region.row_bytes *= rows;
      region.rows = 1;
    }
    regions_[count_++] = region;
    lines_ += region.rows * ((region.row_bytes + kLine - 1) / kLine);
  }

  // Spread the lines over about `steps` calls of step().
  void plan(int64_t steps) { per_step_ = (lines_ + steps - 1) / (steps > 0 ? steps : 1); }

  void step() {
    for (int64_t n = 0; n < per_step_ && region_ < count_; ++n) {
      const Region& r = regions_[region_];
      __builtin_prefetch(r.base + row_ * r.stride + offset_, 0, 2);
      offset_ += kLine;
      if (offset_ >= r.row_bytes) {
        offset_ = 0;
        if (++row_ == r.rows) {
          row_ = 0;
          ++region_;
        }
      }
    }
  }

 private:
  static constexpr int64_t kLine = 64;
  struct Region {
    const char* base;
    int64_t rows, row_bytes, stride;
  };
  Region regions_[4] = {};
  int count_ = 0, region_ = 0;
  int64_t row_ = 0, offset_ = 0, lines_ = 0, per_step_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Matrix-product micro-kernels

constexpr int kDotRows = 3;   // rows of a per dot tile
constexpr int kDotCols = 3;   // rows of b per dot tile (3 x 3 keeps a, b and the sums in registers)
constexpr int64_t kDotPanel = 64;  // rows of b kept in cache while all of a streams past
constexpr int kAxpyRows = 4;     // output rows per axpy tile
constexpr int kAxpyVectors = 3;  // output vectors (of kLanes columns) per axpy tile

template <int MR, int NR>
inline void dot_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float alpha, float* out,
                     int64_t ldo) {
  f32x8 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = splat(0.0f);
  int64_t k = 0;
  for (; k + kLanes <= depth; k += kLanes) {
    f32x8 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = load(b + j * ldb + k);
    for (int i = 0; i < MR; ++i) {
      const f32x8 av = load(a + i * lda + k);
      for (int j = 0; j < NR; ++j) acc[i][j] += av * bv[j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float sum = hsum(acc[i][j]);
      for (int64_t t = k; t < depth; ++t) sum += a[i * lda + t] * b[j * ldb + t];
      out[i * ldo + j] = alpha * sum;
    }
  }
}

template <int NR>
inline void dot_rows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float alpha,
                     float* out, int64_t ldo) {
  static_assert(kDotRows == 3, "dot_rows dispatches 1..3 rows");
  if (rows == 3) {
    dot_tile<3, NR>(a, lda, b, ldb, depth, alpha, out, ldo);
  } else if (rows == 2) {
    dot_tile<2, NR>(a, lda, b, ldb, depth, alpha, out, ldo);
  } else {
    dot_tile<1, NR>(a, lda, b, ldb, depth, alpha, out, ldo);
  }
}

// out[m, n] = alpha * sum_k a[m, k] * b[n, k]; a [m_rows, depth], b [n_rows, depth], out [m_rows, n_rows].
void dot_nt(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t m_rows, int64_t n_rows, int64_t depth,
            float alpha, float* out, int64_t ldo, Prefetcher* prefetch) {
  for (int64_t n0 = 0; n0 < n_rows; n0 += kDotPanel) {
    const int64_t n_end = min_i64(n_rows, n0 + kDotPanel);
    for (int64_t m = 0; m < m_rows; m += kDotRows) {
      const int64_t rows = min_i64(kDotRows, m_rows - m);
      int64_t n = n0;
      for (; n + kDotCols <= n_end; n += kDotCols) {
        dot_rows<kDotCols>(rows, a + m * lda, lda, b + n * ldb, ldb, depth, alpha, out + m * ldo + n, ldo);
        if (prefetch != nullptr) prefetch->step();
      }
      for (; n < n_end; ++n) dot_rows<1>(rows, a + m * lda, lda, b + n * ldb, ldb, depth, alpha, out + m * ldo + n, ldo);
    }
  }
}

// The coefficient matrix of axpy: p(m, l) = p[m * row_stride + l * col_stride] (row_stride 1 reads
// a row-major matrix transposed).
struct Coefficients {
  const float* p;
  int64_t row_stride;
  int64_t col_stride;
};

template <int MR, int NV>
inline void axpy_tile(Coefficients c, const float* x, int64_t ldx, int64_t depth, const float* row_scale, float* out,
                      int64_t ldo) {
  f32x8 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = splat(0.0f);
  for (int64_t l = 0; l < depth; ++l) {
    f32x8 xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = load(x + l * ldx + v * kLanes);
    for (int i = 0; i < MR; ++i) {
      const f32x8 pv = splat(c.p[i * c.row_stride + l * c.col_stride]);
      for (int v = 0; v < NV; ++v) acc[i][v] += pv * xv[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    const float s = row_scale == nullptr ? 1.0f : row_scale[i];
    for (int v = 0; v < NV; ++v) store(out + i * ldo + v * kLanes, acc[i][v] * s);
  }
}

template <int NV>
inline void axpy_column_block(Coefficients c, const float* x, int64_t ldx, int64_t m_rows, int64_t depth,
                              const float* row_scale, float* out, int64_t ldo, Prefetcher* prefetch) {
  static_assert(kAxpyRows == 4, "axpy_column_block dispatches 1..4 rows");
  for (int64_t m = 0; m < m_rows; m += kAxpyRows) {
    const Coefficients cm{c.p + m * c.row_stride, c.row_stride, c.col_stride};
    const float* scale = row_scale == nullptr ? nullptr : row_scale + m;
    float* o = out + m * ldo;
    switch (min_i64(kAxpyRows, m_rows - m)) {
      case 4: axpy_tile<4, NV>(cm, x, ldx, depth, scale, o, ldo); break;
      case 3: axpy_tile<3, NV>(cm, x, ldx, depth, scale, o, ldo); break;
      case 2: axpy_tile<2, NV>(cm, x, ldx, depth, scale, o, ldo); break;
      default: axpy_tile<1, NV>(cm, x, ldx, depth, scale, o, ldo); break;
    }
    if (prefetch != nullptr) prefetch->step();
  }
}

// out[m, :cols] = row_scale[m] * sum_l p(m, l) * x[l, :cols]; x [depth, cols] (ldx), out [m_rows, cols]
// (ldo); row_scale may be null (all ones).
void axpy(Coefficients c, const float* x, int64_t ldx, int64_t m_rows, int64_t depth, int64_t cols,
          const float* row_scale, float* out, int64_t ldo, Prefetcher* prefetch) {
  int64_t col = 0;
  for (; col + kAxpyVectors * kLanes <= cols; col += kAxpyVectors * kLanes) {
    axpy_column_block<kAxpyVectors>(c, x + col, ldx, m_rows, depth, row_scale, out + col, ldo, prefetch);
  }
  for (; col + kLanes <= cols; col += kLanes) {
    axpy_column_block<1>(c, x + col, ldx, m_rows, depth, row_scale, out + col, ldo, prefetch);
  }
  for (int64_t m = 0; m < m_rows && col < cols; ++m) {
    const float s = row_scale == nullptr ? 1.0f : row_scale[m];
    for (int64_t j = col; j < cols; ++j) {
      float sum = 0.0f;
      for (int64_t l = 0; l < depth; ++l) sum += c.p[m * c.row_stride + l * c.col_stride] * x[l * ldx + j];
      out[m * ldo + j] = s * sum;
    }
  }
}

// About how many tiles (Prefetcher steps) dot_nt and axpy take.
inline int64_t dot_tiles(int64_t m_rows, int64_t n_rows) { return (m_rows / kDotRows + 1) * (n_rows / kDotCols); }
inline int64_t axpy_tiles(int64_t m_rows, int64_t cols) { return (m_rows / kAxpyRows + 1) * (cols / kLanes / kAxpyVectors + 1); }

// out[i, :] = row_scale[i] * sum of the rows x[s, :] with owner[s] == i; out [rows, cols] contiguous.
void gather_rows(const int32_t* owner, const float* x, int64_t ldx, int64_t tokens, int64_t rows, int64_t cols,
                 const float* row_scale, float* out) {
  std::memset(out, 0, rows * cols * sizeof(float));
  for (int64_t s = 0; s < tokens; ++s) {
    float* __restrict o = out + owner[s] * cols;
    const float* __restrict xs = x + s * ldx;
    for (int64_t j = 0; j < cols; ++j) o[j] += xs[j];
  }
  for (int64_t i = 0; i < rows; ++i) {
    float* __restrict o = out + i * cols;
    const float s = row_scale[i];
    for (int64_t j = 0; j < cols; ++j) o[j] *= s;
  }
}

// out[s, :] = row_scale[owner[s]] * x[owner[s], :]; out [tokens, cols] contiguous.
void scatter_rows(const int32_t* owner, const float* x, int64_t ldx, int64_t tokens, int64_t cols,
                  const float* row_scale, float* out) {
  for (int64_t s = 0; s < tokens; ++s) {
    const float* __restrict xi = x + owner[s] * ldx;
    float* __restrict o = out + s * cols;
    const float scale = row_scale[owner[s]];
    for (int64_t j = 0; j < cols; ++j) o[j] = scale * xi[j];
  }
}

// ---------------------------------------------------------------------------------------------
// Assign attention

// map [N, S] <- (scale * q k^T + g) / tau for batch element b; g is the Gumbel noise when with_noise, else 0.
// A true division by tau (not a product with 1 / tau): equal products round to the reference's logits.
void compute_logits(const AssignOptions& o, int64_t b, Matrix q, Matrix k, float* map, Prefetcher* prefetch,
                    bool with_noise) {
  const int64_t groups = o.groups, tokens = o.tokens;
  dot_nt(q.data, q.ld, k.data, k.ld, groups, tokens, o.channels, o.scale, map, tokens, prefetch);
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

// map [N, S] <- softmax over groups of (scale * q k^T) / tau, without noise (the soft map that
// return_maps gives in gumbel mode); col_max and col_sum are scratch of S floats.
void clean_soft_map(const AssignOptions& o, int64_t b, Matrix q, Matrix k, float* map, float* col_max, float* col_sum) {
  compute_logits(o, b, q, k, map, nullptr, false);
  exp_columns(map, o.groups, o.tokens, col_max, col_sum, nullptr);
  for (int64_t s = 0; s < o.tokens; ++s) col_sum[s] = 1.0f / col_sum[s];
  scale_columns(map, o.groups, o.tokens, col_sum, nullptr);
}

struct ForwardScratch {
  float *map, *col_max, *col_sum, *row, *row_scale, *q, *k, *v, *out;
};

ForwardScratch forward_scratch(const AssignOptions& o, Arena& arena) {
  const bool widen = o.dtype != Dtype::kFloat32;
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  ForwardScratch w{};
  w.map = arena.take(groups * tokens);
  w.col_max = arena.take(tokens);
  w.col_sum = arena.take(tokens);
  w.row = arena.take(tokens);
  w.row_scale = arena.take(groups);
  w.out = arena.take(groups * channels);
  if (widen) {
    w.q = arena.take(groups * channels);
    w.k = arena.take(tokens * channels);
    w.v = arena.take(tokens * channels);
  }
  return w;
}

int64_t assign_forward_scratch(const AssignOptions& o) {
  Arena arena{nullptr};
  forward_scratch(o, arena);
  return arena.used;
}

void assign_forward(const AssignOptions& o, const AssignForwardIO& io, int64_t b, int64_t next_b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  const Dtype dtype = o.dtype;
  Arena arena{scratch};
  const ForwardScratch w = forward_scratch(o, arena);
  const Matrix q = batch_matrix(io.q, dtype, b, groups, channels, w.q);
  const Matrix k = batch_matrix(io.k, dtype, b, tokens, channels, w.k);
  const Matrix v = batch_matrix(io.v, dtype, b, tokens, channels, w.v);
  float* lse = io.col_lse + b * tokens;
  int32_t* argmax = io.col_argmax + b * tokens;
  float* row_sum = io.row_sum + b * groups;
  const bool soft = o.mode == kModeSoft;
  Prefetcher prefetch;
  if (next_b >= 0) {
    prefetch.add(io.q, dtype, next_b, groups, channels);
    prefetch.add(io.k, dtype, next_b, tokens, channels);
    prefetch.add(io.v, dtype, next_b, tokens, channels);
    prefetch.plan(dot_tiles(groups, tokens) + (soft ? axpy_tiles(groups, channels) : 0));
  }
  Prefetcher* next = next_b >= 0 ? &prefetch : nullptr;

  const bool noisy = o.mode == kModeGumbel;
  compute_logits(o, b, q, k, w.map, next, noisy);
  exp_columns(w.map, groups, tokens, w.col_max, w.col_sum, argmax);
  for (int64_t s = 0; s < tokens; ++s) {
    lse[s] = w.col_max[s] + std::log(w.col_sum[s]);
    w.col_sum[s] = 1.0f / w.col_sum[s];
  }
  if (soft || (io.soft_map != nullptr && !noisy)) {
    scale_columns(w.map, groups, tokens, w.col_sum, soft ? row_sum : nullptr);
  }
  if (!soft) count_owners(argmax, groups, tokens, row_sum);
  for (int64_t i = 0; i < groups; ++i) {
    row_sum[i] += o.eps;
    w.row_scale[i] = o.sum_assign ? 1.0f : 1.0f / row_sum[i];
  }

  if (io.soft_map != nullptr) {
    if (noisy) clean_soft_map(o, b, q, k, w.map, w.col_max, w.col_sum);  // the output needs only argmax from here
    narrow_row(w.map, advance(io.soft_map, dtype, b * groups * tokens), dtype, groups * tokens);
  }
  if (io.hard_map != nullptr) {
    for (int64_t i = 0; i < groups; ++i) {
      for (int64_t s = 0; s < tokens; ++s) w.row[s] = argmax[s] == i ? 1.0f : 0.0f;
      narrow_row(w.row, advance(io.hard_map, dtype, (b * groups + i) * tokens), dtype, tokens);
    }
  }

  if (soft) {
    axpy({w.map, tokens, 1}, v.data, v.ld, groups, tokens, channels, w.row_scale, w.out, channels, next);
  } else {
    gather_rows(argmax, v.data, v.ld, tokens, groups, channels, w.row_scale, w.out);
  }
  copy_out(w.out, io.out, dtype, b * groups * channels, groups * channels);
  finish_streaming();
}

// map[i, :] *= row_scale[i].
void scale_rows(float* map, int64_t groups, int64_t tokens, const float* row_scale) {
  for (int64_t i = 0; i < groups; ++i) {
    float* __restrict row = map + i * tokens;
    const float s = row_scale[i];
    for (int64_t j = 0; j < tokens; ++j) row[j] *= s;
  }
}

struct BackwardScratch {
  float *probs, *grad, *col_dot, *row_dot, *row_scale, *grad_out, *q, *k, *v, *grad_q, *grad_k, *grad_v;
};

BackwardScratch backward_scratch(const AssignOptions& o, Arena& arena) {
  const bool widen = o.dtype != Dtype::kFloat32;
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  BackwardScratch w{};
  w.probs = arena.take(groups * tokens);
  w.grad = arena.take(groups * tokens);
  w.col_dot = arena.take(tokens);
  w.row_dot = arena.take(groups);
  w.row_scale = arena.take(groups);
  if (widen) {
    w.grad_out = arena.take(groups * channels);
    w.q = arena.take(groups * channels);
    w.k = arena.take(tokens * channels);
    w.v = arena.take(tokens * channels);
  }
  w.grad_q = arena.take(groups * channels);
  w.grad_k = arena.take(tokens * channels);
  w.grad_v = arena.take(tokens * channels);
  return w;
}

int64_t assign_backward_scratch(const AssignOptions& o) {
  Arena arena{nullptr};
  backward_scratch(o, arena);
  return arena.used;
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

void assign_backward(const AssignOptions& o, const AssignBackwardIO& io, int64_t b, int64_t next_b, float* scratch) {
  const int64_t groups = o.groups, tokens = o.tokens, channels = o.channels;
  const Dtype dtype = o.dtype;
  Arena arena{scratch};
  const BackwardScratch w = backward_scratch(o, arena);
  const Matrix grad_out = batch_matrix(io.grad_out, dtype, b, groups, channels, w.grad_out);
  const Matrix q = batch_matrix(io.q, dtype, b, groups, channels, w.q);
  const Matrix k = batch_matrix(io.k, dtype, b, tokens, channels, w.k);
  const Matrix v = batch_matrix(io.v, dtype, b, tokens, channels, w.v);
  const float* lse = io.col_lse + b * tokens;
  const int32_t* argmax = io.col_argmax + b * tokens;
  const float* row_sum = io.row_sum + b * groups;
  const bool soft = o.mode == kModeSoft;
  float* probs = w.probs;  // y, later A_n (soft mode)
  float* grad = w.grad;    // dA_n, then dA, then scale * dz / tau
  Prefetcher prefetch;
  if (next_b >= 0) {
    prefetch.add(io.grad_out, dtype, next_b, groups, channels);
    prefetch.add(io.q, dtype, next_b, groups, channels);
    prefetch.add(io.k, dtype, next_b, tokens, channels);
    prefetch.add(io.v, dtype, next_b, tokens, channels);
    prefetch.plan(2 * dot_tiles(groups, tokens) + (soft ? 3 : 2) * axpy_tiles(groups, channels));
  }
  Prefetcher* next = next_b >= 0 ? &prefetch : nullptr;

  compute_logits(o, b, q, k, probs, next, o.mode == kModeGumbel);
  for (int64_t i = 0; i < groups; ++i) {
    float* row = probs + i * tokens;
    for_each_chunk(tokens, [&](int64_t s, int64_t n) {
      store_part(row + s, exp8(load_part<f32x8>(row + s, n) - load_part<f32x8>(lse + s, n)), n);
    });
  }
  for (int64_t i = 0; i < groups; ++i) w.row_scale[i] = o.sum_assign ? 1.0f : 1.0f / row_sum[i];

  dot_nt(grad_out.data, grad_out.ld, v.data, v.ld, groups, tokens, channels, 1.0f, grad, tokens, next);  // dA_n = dout v^T
  if (!o.sum_assign) normalise_backward(grad, probs, argmax, groups, tokens, soft, w.row_scale, w.row_dot);
  softmax_backward(grad, probs, groups, tokens, o.scale / o.tau, w.col_dot);

  if (soft) {  // dv = A_n^T dout
    scale_rows(probs, groups, tokens, w.row_scale);
    axpy({probs, 1, tokens}, grad_out.data, grad_out.ld, tokens, groups, channels, nullptr, w.grad_v, channels, next);
  } else {
    scatter_rows(argmax, grad_out.data, grad_out.ld, tokens, channels, w.row_scale, w.grad_v);
  }
  axpy({grad, tokens, 1}, k.data, k.ld, groups, tokens, channels, nullptr, w.grad_q, channels, next);  // dq = dz k
  axpy({grad, 1, tokens}, q.data, q.ld, tokens, groups, channels, nullptr, w.grad_k, channels, next);  // dk = dz^T q
  const int64_t q_offset = b * groups * channels, kv_offset = b * tokens * channels;
  copy_out(w.grad_q, io.grad_q, dtype, q_offset, groups * channels);
  copy_out(w.grad_k, io.grad_k, dtype, kv_offset, tokens * channels);
  copy_out(w.grad_v, io.grad_v, dtype, kv_offset, tokens * channels);
  finish_streaming();
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
      CIGN_CPU_ISA_NAME, assign_forward_scratch, assign_backward_scratch, distill_scratch, assign_forward,
      assign_backward,   distill_rows,           bernoulli_rows,          gumbel_noise,
  };
  return table;
}

}  // namespace cign_fast::cpu::CIGN_CPU_ISA

// The fused CUDA path of loss_values without selection (docs/gpu.md). S = Z Z^T is never
// written to memory: tiles of it are formed in registers from Z tiles staged in shared memory.
//   forward:  softmax -> per-row sums over candidate-tile splits -> stats -> terms and losses
//   backward: per-row dL/dS coefficients -> dZ partials per split, S recomputed, dS never
//             stored -> sum of the splits and the softmax backward
// Seven launches a step, no host copies, no synchronisation, allocations sized by shapes only
// (CUDA-graph capturable), no atomics (bitwise repeatable). The arithmetic that is not
// GPU-specific lives in ../fused_loss_math.h and is tested on the CPU. Products are plain FP32
// (or FP64) FMAs: the fused path never uses TF32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <tuple>
#include <type_traits>

#include "../fused_loss_math.h"

namespace hycon_ext {
namespace cuda {
namespace fused_path {

using fused::kCoefs;
using fused::kCounts;
using fused::kLanes;
using fused::kSums;

constexpr int kThreads = kLanes * kLanes;  // a 16 x 16 grid of threads
constexpr int kDepth = 16;                 // feature columns staged per step of a product
constexpr int kStatsTileA = 64;            // forward: anchors per block (4 per thread)
constexpr int kGradTileA = 32;             // backward: anchors per block (2 per thread)
constexpr int kTileC = 64;                 // candidates per tile (4 per thread)
constexpr int kRowSums = kSums + kCounts;  // one row's partial: sums, then counts
// The backward holds a block's dZ rows in registers: d <= kMaxDim.
constexpr int64_t kMaxDim = 256;

// A tile of rows r0 .. r0 + rows_in_tile of Z (rows x d), staged transposed: dst[kk][r] holds
// Z[r0 + r][k0 + kk], zero outside Z.
template <typename T, int kRows, int kPitch>
__device__ __forceinline__ void stage_tile(const T* __restrict__ z, int64_t rows, int64_t d,
                                           int64_t r0, int64_t k0, T (*dst)[kPitch]) {
#pragma unroll
  for (int q = 0; q < kRows * kDepth / kThreads; ++q) {
    const int e = threadIdx.x + kThreads * q;
    const int r = e / kDepth, kk = e % kDepth;
    const int64_t row = r0 + r, col = k0 + kk;
    dst[kk][r] = (row < rows && col < d) ? z[row * d + col] : T(0);
  }
}

// Candidate descriptors of one tile: modality and sample from the row index, class from labels.
struct TileRows {
  int64_t cls[kTileC];
  int modality[kTileC];
  int sample[kTileC];
};

__device__ __forceinline__ void load_tile_rows(TileRows& t, const int64_t* __restrict__ labels,
                                               int64_t k, int64_t rows, int64_t c0) {
  if (threadIdx.x < kTileC) {
    const int64_t c = c0 + threadIdx.x;
    const bool valid = c < rows;
    const int64_t sample = valid ? fused::row_sample(c, k) : 0;
    t.cls[threadIdx.x] = valid ? labels[sample] : 0;
    t.modality[threadIdx.x] = valid ? static_cast<int>(fused::row_modality(c, k)) : -1;
    t.sample[threadIdx.x] = static_cast<int>(sample);
  }
}

// The kA anchors one thread scores: rows a0 + ty + 16 i of the block's anchor tile.
template <int kA>
struct AnchorRows {
  int64_t cls[kA];
  int modality[kA], sample[kA];
  bool valid[kA];
};

template <int kA>
__device__ __forceinline__ void load_anchor_rows(AnchorRows<kA>& a,
                                                 const int64_t* __restrict__ labels, int64_t k,
                                                 int64_t rows, int64_t a0, int ty) {
#pragma unroll
  for (int i = 0; i < kA; ++i) {
    const int64_t r = fused::lane_row(a0, ty, i);
    a.valid[i] = r < rows;
    a.sample[i] = a.valid[i] ? static_cast<int>(fused::row_sample(r, k)) : 0;
    a.modality[i] = a.valid[i] ? static_cast<int>(fused::row_modality(r, k)) : -2;
    a.cls[i] = a.valid[i] ? labels[a.sample[i]] : 0;
  }
}

// The relation (fused::pair_relation) of the thread's anchor i and the tile's candidate c, or
// -1 when either row lies outside Z.
template <int kA>
__device__ __forceinline__ int tile_relation(const AnchorRows<kA>& a, int i, const TileRows& cand,
                                             int c) {
  if (!a.valid[i] || cand.modality[c] < 0) return -1;
  return fused::pair_relation(a.modality[i] == cand.modality[c], a.sample[i] == cand.sample[c],
                              a.cls[i] == cand.cls[c]);
}

// s[i][j] = <Z[a0 + ty + 16 i], Z[c0 + tx + 16 j]>: the block's tile of S in registers, Z staged
// kDepth feature columns at a time in sa / sb (shared).
template <typename T, int kTileA, int kA, int kC>
__device__ __forceinline__ void tile_similarities(const T* __restrict__ z, int64_t rows, int64_t d,
                                                  int64_t a0, int64_t c0, T (*sa)[kTileA + 1],
                                                  T (*sb)[kTileC + 1], T (&s)[kA][kC]) {
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  for (int64_t k0 = 0; k0 < d; k0 += kDepth) {
    stage_tile<T, kTileA>(z, rows, d, a0, k0, sa);
    stage_tile<T, kTileC>(z, rows, d, c0, k0, sb);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      T av[kA], bv[kC];
#pragma unroll
      for (int i = 0; i < kA; ++i) av[i] = sa[kk][ty + kLanes * i];
#pragma unroll
      for (int j = 0; j < kC; ++j) bv[j] = sb[kk][tx + kLanes * j];
#pragma unroll
      for (int i = 0; i < kA; ++i) {
#pragma unroll
        for (int j = 0; j < kC; ++j) s[i][j] = fma(av[i], bv[j], s[i][j]);
      }
    }
    __syncthreads();
  }
}

// ---- forward ----

// One warp a row: z[r] = softmax(x_m[i]) in T, r = m K + i.
template <typename TI, typename T>
__global__ void softmax_rows_kernel(const TI* __restrict__ x_l, const TI* __restrict__ x_a,
                                    const TI* __restrict__ x_v, int64_t k, int64_t d,
                                    T* __restrict__ z) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= 3 * k) return;
  const int64_t m = fused::row_modality(r, k);
  const TI* x = (m == 0 ? x_l : m == 1 ? x_a : x_v) + fused::row_sample(r, k) * d;
  T mx = -INFINITY;
  for (int64_t j = lane; j < d; j += 32) mx = max(mx, static_cast<T>(x[j]));
  for (int o = 16; o > 0; o >>= 1) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  T sum = 0;
  for (int64_t j = lane; j < d; j += 32) sum += exp(static_cast<T>(x[j]) - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  for (int64_t j = lane; j < d; j += 32) z[r * d + j] = exp(static_cast<T>(x[j]) - mx) / sum;
}

// Per-row partial sums of split blockIdx.y over its candidate tiles: part (splits, rows,
// kRowSums) in double. Sums of one candidate tile are added in T, then flushed to double.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_sums_kernel(const T* __restrict__ z, const int64_t* __restrict__ labels, int64_t k,
                    int64_t d, T alpha, int64_t splits, double* __restrict__ part) {
  __shared__ T sa[kDepth][kStatsTileA + 1];
  __shared__ T sb[kDepth][kTileC + 1];
  __shared__ TileRows cand;
  constexpr int kA = kStatsTileA / kLanes, kC = kTileC / kLanes;
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  const int64_t rows = 3 * k, a0 = int64_t(blockIdx.x) * kStatsTileA;
  const int64_t tiles = fused::tile_count(rows, kTileC);
  const int64_t t_first = fused::split_first(blockIdx.y, splits, tiles);
  const int64_t t_last = fused::split_first(blockIdx.y + 1, splits, tiles);

  AnchorRows<kA> anchors;
  load_anchor_rows(anchors, labels, k, rows, a0, ty);
  double acc[kA][kSums] = {};
  int count[kA][kCounts] = {};

  for (int64_t t = t_first; t < t_last; ++t) {
    const int64_t c0 = t * kTileC;
    __syncthreads();  // the previous tile's descriptors are no longer read
    load_tile_rows(cand, labels, k, rows, c0);
    T s[kA][kC] = {};
    tile_similarities<T, kStatsTileA>(z, rows, d, a0, c0, sa, sb, s);
#pragma unroll
    for (int i = 0; i < kA; ++i) {
      T tile_sum[kSums] = {};
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int rel = tile_relation(anchors, i, cand, tx + kLanes * j);
        if (rel >= 0) fused::add_pair(rel, s[i][j], alpha, tile_sum, count[i]);
      }
#pragma unroll
      for (int q = 0; q < kSums; ++q) acc[i][q] += tile_sum[q];
    }
  }

  // The 16 threads of a row reduce in a fixed butterfly; lane 0 writes the row's partial.
#pragma unroll
  for (int i = 0; i < kA; ++i) {
#pragma unroll
    for (int o = kLanes / 2; o > 0; o >>= 1) {
#pragma unroll
      for (int q = 0; q < kSums; ++q) acc[i][q] += __shfl_xor_sync(0xffffffffu, acc[i][q], o);
#pragma unroll
      for (int q = 0; q < kCounts; ++q) count[i][q] += __shfl_xor_sync(0xffffffffu, count[i][q], o);
    }
    if (tx == 0 && anchors.valid[i]) {
      double* out = part + (int64_t(blockIdx.y) * rows + fused::lane_row(a0, ty, i)) * kRowSums;
#pragma unroll
      for (int q = 0; q < kSums; ++q) out[q] = acc[i][q];
#pragma unroll
      for (int q = 0; q < kCounts; ++q) out[kSums + q] = count[i][q];
    }
  }
}

// stats (rows, 3, 4) from the splits' partials, added in split order.
template <typename T>
__global__ void row_stats_kernel(const double* __restrict__ part, int64_t rows, int64_t splits,
                                 T* __restrict__ stats) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double sum[kSums] = {};
  int64_t count[kCounts] = {};
  for (int64_t p = 0; p < splits; ++p) {
    const double* in = part + (p * rows + r) * kRowSums;
#pragma unroll
    for (int q = 0; q < kSums; ++q) sum[q] += in[q];
#pragma unroll
    for (int q = 0; q < kCounts; ++q) count[q] += static_cast<int64_t>(in[kSums + q]);
  }
  fused::row_stats(sum, count, stats + r * 12);
}

// One block: terms (2, 3) and the four losses from stats, summed in a fixed order.
constexpr int kEpilogueThreads = 256;
template <typename T>
__global__ void __launch_bounds__(kEpilogueThreads)
    epilogue_kernel(const T* __restrict__ stats, int64_t rows, fused::LossWeights w,
                    T* __restrict__ terms, T* total, T* scl, T* iamcl, T* iemcl) {
  __shared__ double red[kEpilogueThreads][6];
  double v[6] = {};
  for (int64_t r = threadIdx.x; r < rows; r += kEpilogueThreads) {
#pragma unroll
    for (int m = 0; m < 3; ++m) {
      const T* st = stats + (r * 3 + m) * 4;
      v[m] += fused::anchor_term(st, m, w.refinement);
      v[3 + m] += st[2] != T(0);
    }
  }
#pragma unroll
  for (int q = 0; q < 6; ++q) red[threadIdx.x][q] = v[q];
  __syncthreads();
  for (int stride = kEpilogueThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
#pragma unroll
      for (int q = 0; q < 6; ++q) red[threadIdx.x][q] += red[threadIdx.x + stride][q];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    T t[6];
#pragma unroll
    for (int q = 0; q < 6; ++q) t[q] = terms[q] = static_cast<T>(red[0][q]);
    fused::losses_from_terms(t, w, total, scl, iamcl, iemcl);
  }
}

// ---- backward ----

// coef (rows, kCoefs): each row's dL/dS coefficients from grad_losses (4,), terms and stats.
template <typename T>
__global__ void coefficients_kernel(const T* __restrict__ grad_losses, const T* __restrict__ terms,
                                    const T* __restrict__ stats, int64_t rows, fused::LossWeights w,
                                    T* __restrict__ coef) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  T g[3];
#pragma unroll
  for (int m = 0; m < 3; ++m) g[m] = fused::grad_term(grad_losses, terms, w, m);
  fused::row_coefficients(stats + r * 12, g, w, coef + r * kCoefs);
}

// dZ partial of split blockIdx.y for a tile of kGradTileA anchors: sum over its candidates j of
// (dS[a, j] + dS[j, a]) Z_j, with S recomputed a tile at a time and dS formed in shared memory.
// part (splits, rows, d). kDim: the dZ columns held per row (>= d, a multiple of kZCols).
template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads)
    grad_rows_kernel(const T* __restrict__ z, const int64_t* __restrict__ labels,
                     const T* __restrict__ coef, int64_t k, int64_t d, int64_t splits,
                     T* __restrict__ part) {
  constexpr int kA = kGradTileA / kLanes, kC = kTileC / kLanes;
  constexpr int kZCols = 256 / sizeof(T);  // Z columns staged per step of dS Z
  constexpr int kPerLane = kDim / kLanes;
  static_assert(kDim % kZCols == 0, "kDim must be a multiple of kZCols");
  struct Product {
    T sa[kDepth][kGradTileA + 1];
    T sb[kDepth][kTileC + 1];
  };
  __shared__ union {
    Product mm;
    T zc[kTileC][kZCols];
  } stage;
  __shared__ T g[kGradTileA][kTileC + 1];
  __shared__ T coef_a[kGradTileA][kCoefs];
  __shared__ T coef_c[kTileC][kCoefs];
  __shared__ TileRows cand;

  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  const int64_t rows = 3 * k, a0 = int64_t(blockIdx.x) * kGradTileA;
  const int64_t tiles = fused::tile_count(rows, kTileC);
  const int64_t t_first = fused::split_first(blockIdx.y, splits, tiles);
  const int64_t t_last = fused::split_first(blockIdx.y + 1, splits, tiles);

  for (int e = threadIdx.x; e < kGradTileA * kCoefs; e += kThreads) {
    const int64_t a = a0 + e / kCoefs;
    coef_a[e / kCoefs][e % kCoefs] = a < rows ? coef[a * kCoefs + e % kCoefs] : T(0);
  }
  AnchorRows<kA> anchors;
  load_anchor_rows(anchors, labels, k, rows, a0, ty);
  T acc[kA][kPerLane] = {};

  for (int64_t t = t_first; t < t_last; ++t) {
    const int64_t c0 = t * kTileC;
    __syncthreads();  // the previous tile's rows, coefficients and Z columns are no longer read
    load_tile_rows(cand, labels, k, rows, c0);
    for (int e = threadIdx.x; e < kTileC * kCoefs; e += kThreads) {
      const int64_t c = c0 + e / kCoefs;
      coef_c[e / kCoefs][e % kCoefs] = c < rows ? coef[c * kCoefs + e % kCoefs] : T(0);
    }
    T s[kA][kC] = {};
    tile_similarities<T, kGradTileA>(z, rows, d, a0, c0, stage.mm.sa, stage.mm.sb, s);
#pragma unroll
    for (int i = 0; i < kA; ++i) {
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int c = tx + kLanes * j, ar = ty + kLanes * i;
        const int rel = tile_relation(anchors, i, cand, c);
        g[ar][c] = rel >= 0 ? fused::pair_grad(rel, s[i][j], coef_a[ar], coef_c[c]) : T(0);
      }
    }
#pragma unroll
    for (int cz = 0; cz < kDim; cz += kZCols) {
      __syncthreads();  // g is complete; the staging buffer is free
      for (int e = threadIdx.x; e < kTileC * kZCols; e += kThreads) {
        const int j = e / kZCols, col = e % kZCols;
        const int64_t c = c0 + j, zcol = cz + col;
        stage.zc[j][col] = (c < rows && zcol < d) ? z[c * d + zcol] : T(0);
      }
      __syncthreads();
      for (int j = 0; j < kTileC; ++j) {
        T gv[kA];
#pragma unroll
        for (int i = 0; i < kA; ++i) gv[i] = g[ty + kLanes * i][j];
#pragma unroll
        for (int q = 0; q < kZCols / kLanes; ++q) {
          const T zv = stage.zc[j][tx + kLanes * q];
#pragma unroll
          for (int i = 0; i < kA; ++i) {
            acc[i][cz / kLanes + q] = fma(gv[i], zv, acc[i][cz / kLanes + q]);
          }
        }
      }
    }
  }

  // Column tx + 16 q of a row is acc[i][q] (columns of step cz are cz + tx + 16 q').
#pragma unroll
  for (int i = 0; i < kA; ++i) {
    if (!anchors.valid[i]) continue;
    T* out = part + (int64_t(blockIdx.y) * rows + fused::lane_row(a0, ty, i)) * d;
#pragma unroll
    for (int q = 0; q < kPerLane; ++q) {
      const int64_t col = (q / (kZCols / kLanes)) * kZCols + tx + kLanes * (q % (kZCols / kLanes));
      if (col < d) out[col] = acc[i][q];
    }
  }
}

// One warp a row: dZ = the splits' partials added in split order, then the softmax backward
// dx = z (dZ - <dZ, z>) written into the row's modality block in the inputs' dtype.
template <typename T, typename TO>
__global__ void softmax_backward_kernel(const T* __restrict__ part, const T* __restrict__ z,
                                        int64_t k, int64_t d, int64_t splits, TO* __restrict__ gx_l,
                                        TO* __restrict__ gx_a, TO* __restrict__ gx_v) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = 3 * k;
  if (r >= rows) return;
  auto dz = [&](int64_t j) {
    T v = 0;
    for (int64_t p = 0; p < splits; ++p) v += part[(p * rows + r) * d + j];
    return v;
  };
  double dot = 0;
  for (int64_t j = lane; j < d; j += 32) dot += static_cast<double>(dz(j)) * z[r * d + j];
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  const T mean = static_cast<T>(dot);
  const int64_t m = fused::row_modality(r, k);
  TO* out = (m == 0 ? gx_l : m == 1 ? gx_a : gx_v) + fused::row_sample(r, k) * d;
  for (int64_t j = lane; j < d; j += 32) {
    out[j] = static_cast<TO>(z[r * d + j] * (dz(j) - mean));
  }
}

// ---- host side ----

// f(T{}) for the inputs' (and gradients') dtype T: float64 rows compute in float64, the others
// in float32 (fused_dtypes_match says which pairs the backward takes).
template <typename F>
void with_io_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kDouble:
      f(double{});
      break;
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(at::Half{});
      break;
    case at::kBFloat16:
      f(at::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "the fused loss takes float16, bfloat16, float32 or float64, got ", t);
  }
}

// Gradient dtypes the fused backward writes from compute dtype `ct`: float64 from float64, the
// others from float32 (as the forward produces them).
inline bool fused_dtypes_match(at::ScalarType ct, at::ScalarType dtype) {
  return ct == at::kDouble ? dtype == at::kDouble
                           : ct == at::kFloat && (dtype == at::kFloat || dtype == at::kHalf ||
                                                  dtype == at::kBFloat16);
}

inline int64_t multiprocessors() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

inline unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>(fused::tile_count(n, per_block));
}

// (total, scl, iamcl, iemcl, z, terms, stats): inputs checked by the caller, d <= kMaxDim not
// required here (the forward takes any d).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                  at::Tensor>
loss_forward(const at::Tensor& x_l, const at::Tensor& x_a, const at::Tensor& x_v,
             const at::Tensor& labels, const fused::LossWeights& w) {
  const c10::cuda::CUDAGuard guard(x_l.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::ScalarType ct = x_l.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t k = x_l.size(0), d = x_l.size(1), rows = 3 * k;
  const at::Tensor xl = x_l.contiguous(), xa = x_a.contiguous(), xv = x_v.contiguous();
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  const auto opts = xl.options().dtype(ct);
  at::Tensor z = at::empty({rows, d}, opts);
  at::Tensor stats = at::empty({rows, 3, 4}, opts);
  at::Tensor terms = at::empty({2, 3}, opts);
  at::Tensor total = at::empty({}, opts), scl = at::empty({}, opts);
  at::Tensor iamcl = at::empty({}, opts), iemcl = at::empty({}, opts);
  const int64_t a_tiles = fused::tile_count(rows, kStatsTileA);
  const int64_t splits =
      fused::candidate_splits(a_tiles, fused::tile_count(rows, kTileC), multiprocessors());
  at::Tensor part = at::empty({splits, rows, kRowSums}, opts.dtype(at::kDouble));

  with_io_type(xl.scalar_type(), [&](auto in) {
    using TI = decltype(in);
    using T = std::conditional_t<std::is_same_v<TI, double>, double, float>;
    softmax_rows_kernel<TI, T><<<blocks_for(rows * 32, 256), 256, 0, stream>>>(
        xl.data_ptr<TI>(), xa.data_ptr<TI>(), xv.data_ptr<TI>(), k, d, z.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES(ct, "hycon_ext_fused_forward", [&] {
    const dim3 grid(static_cast<unsigned>(a_tiles), static_cast<unsigned>(splits));
    row_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(), k, d, static_cast<scalar_t>(w.alpha),
        splits, part.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_stats_kernel<scalar_t><<<blocks_for(rows, 256), 256, 0, stream>>>(
        part.data_ptr<double>(), rows, splits, stats.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    epilogue_kernel<scalar_t><<<1, kEpilogueThreads, 0, stream>>>(
        stats.data_ptr<scalar_t>(), rows, w, terms.data_ptr<scalar_t>(), total.data_ptr<scalar_t>(),
        scl.data_ptr<scalar_t>(), iamcl.data_ptr<scalar_t>(), iemcl.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {total, scl, iamcl, iemcl, z, terms, stats};
}

// The gradients of (x_l, x_a, x_v) in `dtype`; arguments checked by the caller, d <= kMaxDim.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_backward(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z,
    const at::Tensor& terms, const at::Tensor& stats, const fused::LossWeights& w,
    at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(z.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::ScalarType ct = z.scalar_type();
  const int64_t rows = z.size(0), k = rows / 3, d = z.size(1);
  const at::Tensor zc = z.contiguous(), lab = labels.to(at::kLong).contiguous();
  const at::Tensor g = grad_losses.to(ct).contiguous(), tc = terms.to(ct).contiguous();
  const at::Tensor st = stats.to(ct).contiguous();
  at::Tensor coef = at::empty({rows, kCoefs}, zc.options());
  const int64_t a_tiles = fused::tile_count(rows, kGradTileA);
  const int64_t splits =
      fused::candidate_splits(a_tiles, fused::tile_count(rows, kTileC), multiprocessors());
  at::Tensor part = at::empty({splits, rows, d}, zc.options());
  const auto out_opts = zc.options().dtype(dtype);
  at::Tensor gx_l = at::empty({k, d}, out_opts), gx_a = at::empty({k, d}, out_opts);
  at::Tensor gx_v = at::empty({k, d}, out_opts);

  AT_DISPATCH_FLOATING_TYPES(ct, "hycon_ext_fused_backward", [&] {
    using T = scalar_t;
    coefficients_kernel<T><<<blocks_for(rows, 256), 256, 0, stream>>>(
        g.data_ptr<T>(), tc.data_ptr<T>(), st.data_ptr<T>(), rows, w, coef.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(static_cast<unsigned>(a_tiles), static_cast<unsigned>(splits));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(zc.data_ptr<T>(), lab.data_ptr<int64_t>(),
                                            coef.data_ptr<T>(), k, d, splits, part.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (d <= 64) {
      launch(grad_rows_kernel<T, 64>);
    } else if (d <= 128) {
      launch(grad_rows_kernel<T, 128>);
    } else {
      launch(grad_rows_kernel<T, 256>);
    }
    with_io_type(dtype, [&](auto out) {
      using TO = decltype(out);
      if constexpr (std::is_same_v<TO, double> == std::is_same_v<T, double>) {
        softmax_backward_kernel<T, TO><<<blocks_for(rows * 32, 256), 256, 0, stream>>>(
            part.data_ptr<T>(), zc.data_ptr<T>(), k, d, splits, gx_l.data_ptr<TO>(),
            gx_a.data_ptr<TO>(), gx_v.data_ptr<TO>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        TORCH_CHECK(false, "the fused loss backward cannot write ", dtype, " gradients from ", ct,
                    " rows");
      }
    });
  });
  return {gx_l, gx_a, gx_v};
}

}  // namespace fused_path
}  // namespace cuda
}  // namespace hycon_ext

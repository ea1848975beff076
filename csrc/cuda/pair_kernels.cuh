// Device building blocks shared by the CUDA pair_sums and hard_pair_sums kernels: mode tables,
// block reductions, the order-preserving float keys and the block-wide radix select.
// One thread block handles one anchor row; every helper here is called by the whole block.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <type_traits>

#include "../pair_common.h"

namespace hycon_ext {
namespace cuda {

constexpr int kThreads = 256;  // threads per block (one anchor row); a multiple of 32
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Modes handled by one kernel launch; more modes are processed in groups of this size.
constexpr int kModesPerLaunch = 4;
// Bound on one chunk's similarity workspace (chunk rows * M elements).
constexpr int64_t kChunkElements = int64_t(1) << 25;

// The modes of one launch, passed by value to the kernels.
template <typename T>
struct ModeGroup {
  int n;                                   // modes in this group (<= kModesPerLaunch)
  int64_t mode[kModesPerLaunch];           // INTRA / INTER / SAME_SAMPLE
  T target[kModesPerLaunch];               // refinement target
  bool select_positives[kModesPerLaunch];  // positives selected and softmax-weighted
  bool select_negatives[kModesPerLaunch];  // negatives selected and softmax-weighted
};

// Builds the group of modes [first, first + n) of the op's mode list. Selection never applies
// to SAME_SAMPLE (docs/design.md).
template <typename T>
ModeGroup<T> make_mode_group(at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t first,
                             bool select_positives, bool select_negatives) {
  ModeGroup<T> g{};
  g.n = static_cast<int>(std::min<int64_t>(kModesPerLaunch, modes.size() - first));
  for (int k = 0; k < g.n; ++k) {
    g.mode[k] = modes[first + k];
    g.target[k] = static_cast<T>(targets[first + k]);
    g.select_positives[k] = select_positives && g.mode[k] != SAME_SAMPLE;
    g.select_negatives[k] = select_negatives && g.mode[k] != SAME_SAMPLE;
  }
  return g;
}

// Anchor rows per chunk so that chunk * M stays within kChunkElements.
inline int64_t chunk_rows(int64_t n, int64_t m) {
  return std::max<int64_t>(1, std::min<int64_t>(n, kChunkElements / std::max<int64_t>(m, 1)));
}

// Candidate descriptors (M, 3) -> (3, M) so the kernels read each column coalesced.
inline at::Tensor columns_of(const at::Tensor& c_ids) {
  return c_ids.t().contiguous();
}

struct Candidate {
  int64_t cls, modality, sample;
};

__device__ __forceinline__ Candidate load_candidate(const int64_t* __restrict__ c_cols, int64_t m,
                                                    int64_t j) {
  return {c_cols[j], c_cols[m + j], c_cols[2 * m + j]};
}

__device__ __forceinline__ int classify(int64_t mode, const Candidate& a, const Candidate& c) {
  return classify_pair(mode, a.cls, a.modality, a.sample, c.cls, c.modality, c.sample);
}

// ---- block reductions (all threads of the block get the result) ----

struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};
struct MinOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return b < a ? b : a;
  }
};

// Reduces NV values per thread across the block; smem holds kWarps * NV values.
template <typename V, int NV, typename Op>
__device__ void block_reduce(V (&v)[NV], V* smem, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    for (int offset = 16; offset > 0; offset >>= 1) {
      v[i] = op(v[i], __shfl_xor_sync(kFullMask, v[i], offset));
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) smem[warp * NV + i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    V r = smem[i];
    for (int w = 1; w < kWarps; ++w) r = op(r, smem[w * NV + i]);
    v[i] = r;
  }
  __syncthreads();  // smem may be reused right after
}

// ---- order-preserving keys: key(a) < key(b) as unsigned iff a < b as floats ----

template <typename T>
struct KeyTraits;
template <>
struct KeyTraits<float> {
  using Key = uint32_t;
  static __device__ Key bits(float v) { return __float_as_uint(v); }
  static __device__ float value(Key b) { return __uint_as_float(b); }
  static __device__ float inf() { return __uint_as_float(0x7f800000u); }
  static __device__ float nan() { return __uint_as_float(0x7fc00000u); }
};
template <>
struct KeyTraits<double> {
  using Key = unsigned long long;
  static __device__ Key bits(double v) { return __double_as_longlong(v); }
  static __device__ double value(Key b) { return __longlong_as_double(b); }
  static __device__ double inf() { return __longlong_as_double(0x7ff0000000000000ll); }
  static __device__ double nan() { return __longlong_as_double(0x7ff8000000000000ll); }
};

// Flips the sign bit of non-negatives and all bits of negatives; -0 is folded into +0 so equal
// floats get equal keys. NaN has no order: callers leave it out of every selection.
template <typename T>
__device__ __forceinline__ typename KeyTraits<T>::Key order_key(T v) {
  using Key = typename KeyTraits<T>::Key;
  constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
  const Key b = KeyTraits<T>::bits(v == T(0) ? T(0) : v);
  return (b & sign) ? ~b : (b | sign);
}

template <typename T>
__device__ __forceinline__ T key_value(typename KeyTraits<T>::Key k) {
  using Key = typename KeyTraits<T>::Key;
  constexpr Key sign = Key(1) << (sizeof(Key) * 8 - 1);
  return KeyTraits<T>::value((k & sign) ? (k & ~sign) : ~k);
}

// Shared scratch of the block-wide select.
struct SelectScratch {
  unsigned hist[256];
  unsigned warp_count[kWarps];
  unsigned bin;
  unsigned rank;
  int64_t index;
};

// Finds the k-th (1-based) member of a candidate set in the order (key ascending, index
// ascending). in_set(j, key) says whether candidate j is a member and sets its key. Requires
// 1 <= k <= set size. Radix select, 8 bits a pass from the top, with a 256-bin shared histogram;
// then the members whose key equals the k-th key are counted in index order (ties go to the lower
// index). Returns the key and writes the index to *index.
template <typename Key, typename InSet>
__device__ Key block_select(int64_t m, unsigned k, InSet in_set, SelectScratch& sh,
                            int64_t* index) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Key prefix = 0, mask = 0;
  for (int shift = int(sizeof(Key)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < m; j += kThreads) {
      Key key;
      if (in_set(j, key) && (key & mask) == prefix) {
        atomicAdd(&sh.hist[unsigned(key >> shift) & 0xffu], 1u);
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns bins 8l .. 8l+7; an inclusive warp scan finds the bin holding rank k.
      unsigned local[8], own = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        local[i] = sh.hist[lane * 8 + i];
        own += local[i];
      }
      unsigned incl = own;
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned up = __shfl_up_sync(kFullMask, incl, offset);
        if (lane >= offset) incl += up;
      }
      unsigned before = incl - own;
      if (before < k && k <= incl) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (before + local[i] >= k) {
            sh.bin = lane * 8 + i;
            sh.rank = k - before;
            break;
          }
          before += local[i];
        }
      }
    }
    __syncthreads();
    prefix |= Key(sh.bin) << shift;
    mask |= Key(0xffu) << shift;
    k = sh.rank;
    __syncthreads();  // sh.bin / sh.rank are rewritten by the next pass
  }

  // k is now the rank of the wanted member among those with key == prefix, in index order.
  unsigned seen = 0;
  for (int64_t base = 0; base < m; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    Key key;
    const bool hit = j < m && in_set(j, key) && key == prefix;
    const unsigned ballot = __ballot_sync(kFullMask, hit);
    if (lane == 0) sh.warp_count[warp] = __popc(ballot);
    __syncthreads();
    unsigned offset = 0, total = 0;
    for (int w = 0; w < kWarps; ++w) {
      offset += w < warp ? sh.warp_count[w] : 0u;
      total += sh.warp_count[w];
    }
    const unsigned rank = seen + offset + __popc(ballot & ((2u << lane) - 1u));
    if (hit && rank == k) sh.index = j;
    seen += total;
    __syncthreads();       // sh.index is visible; warp_count may be rewritten
    if (seen >= k) break;  // block-uniform
  }
  *index = sh.index;
  return prefix;
}

// Keep tests of docs/design.md's state: positives up to (t_p, j_p), negatives down to (t_n, j_n).
// A NaN similarity is never kept (as on the CPU: it never enters a selection). The index is
// compared in double, as on the CPU: float32 is exact only up to 2^24 candidates.
template <typename T>
__device__ __forceinline__ bool kept_positive(T s, int64_t j, T tp, T jp) {
  return s < tp || (s == tp && static_cast<double>(j) <= static_cast<double>(jp));
}
template <typename T>
__device__ __forceinline__ bool kept_negative(T s, int64_t j, T tn, T jn) {
  return s > tn || (s == tn && static_cast<double>(j) <= static_cast<double>(jn));
}

inline void check_launch() {
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace hycon_ext

// The streaming CUDA path of pair_sums (kSelect = false) and hard_pair_sums (kSelect = true):
// anchor rows are walked in chunks; a chunk's similarities come from at::mm (cuBLAS) and one
// kernel, one block per anchor row, reduces them to the row's stats (forward) or turns them
// into dL/dS (backward, which recomputes the chunk). docs/design.md fixes the semantics.
#pragma once

#include "pair_kernels.cuh"

#include <tuple>

namespace hycon_ext {
namespace cuda {

// Layout of the per-row tables seen by one launch: the chunk's first row and the group's first
// mode; consecutive rows are n_modes * cols apart.
template <typename T>
struct RowTable {
  T* data;
  int64_t n_modes;
  __device__ T* at(int64_t row, int k, int64_t cols) const {
    return data + (row * n_modes + k) * cols;
  }
};

// Per-mode selection state of one row (docs/design.md, state columns).
template <typename T>
struct Threshold {
  T tp, jp, tn, jn, mp;
};

__device__ __forceinline__ Candidate load_anchor(const int64_t* __restrict__ a_ids, int64_t row) {
  return {a_ids[row * 3 + kDescClass], a_ids[row * 3 + kDescModality],
          a_ids[row * 3 + kDescSample]};
}

// Forward with selection, pass 1: per mode, the sizes of the selectable (non-NaN) positive and
// negative sets and the smallest positive similarity, reduced over the block.
template <typename T>
__device__ __forceinline__ void selectable_sets(const T* __restrict__ s_row, int64_t m,
                                                const Candidate& a,
                                                const int64_t* __restrict__ c_cols,
                                                const ModeGroup<T>& g,
                                                int (&sizes)[2 * kModesPerLaunch],
                                                T (&min_pos)[kModesPerLaunch], T* red, int* ired) {
  constexpr int K = kModesPerLaunch;
#pragma unroll
  for (int k = 0; k < K; ++k) min_pos[k] = KeyTraits<T>::inf();
  for (int64_t j = threadIdx.x; j < m; j += kThreads) {
    const T s = s_row[j];
    if (isnan(s)) continue;
    const Candidate c = load_candidate(c_cols, m, j);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k >= g.n) break;
      const int cls = classify(g.mode[k], a, c);
      if (cls == kPositive) {
        ++sizes[2 * k];
        min_pos[k] = s < min_pos[k] ? s : min_pos[k];
      } else if (cls == kNegative) {
        ++sizes[2 * k + 1];
      }
    }
  }
  block_reduce(sizes, ired, SumOp());
  block_reduce(min_pos, red, MinOp());
}

// Forward with selection, pass 2: the thresholds of the kept pairs, mode by mode
// (block-uniform branches), into thr (shared).
template <typename T>
__device__ __forceinline__ void select_thresholds(
    const T* __restrict__ s_row, int64_t m, const Candidate& a, const int64_t* __restrict__ c_cols,
    const ModeGroup<T>& g, int64_t h, double gamma, const int (&sizes)[2 * kModesPerLaunch],
    const T (&min_pos)[kModesPerLaunch], SelectScratch& scratch, Threshold<T>* thr) {
  using Key = typename KeyTraits<T>::Key;
  for (int k = 0; k < g.n; ++k) {
    const int64_t mode = g.mode[k];
    const int n_pos = sizes[2 * k], n_neg = sizes[2 * k + 1];
    if (g.select_positives[k] && n_pos > 0 && threadIdx.x == 0) {
      // Rounded to the state dtype from double, as the CPU kernel does.
      thr[k].mp = T(1.0 / (double(min_pos[k]) + gamma));
    }
    if (g.select_positives[k] && n_pos > h) {
      auto positive = [&](int64_t j, Key& key) {
        const T s = s_row[j];
        if (isnan(s) || classify(mode, a, load_candidate(c_cols, m, j)) != kPositive) {
          return false;
        }
        key = order_key(s);
        return true;
      };
      int64_t index;
      const Key key = block_select<Key>(m, unsigned(h), positive, scratch, &index);
      if (threadIdx.x == 0) {
        thr[k].tp = key_value<T>(key);
        thr[k].jp = T(index);
      }
    }
    if (g.select_negatives[k] && n_neg > h) {
      // Descending similarity = ascending inverted key.
      auto negative = [&](int64_t j, Key& key) {
        const T s = s_row[j];
        if (isnan(s) || classify(mode, a, load_candidate(c_cols, m, j)) != kNegative) {
          return false;
        }
        key = ~order_key(s);
        return true;
      };
      int64_t index;
      const Key key = block_select<Key>(m, unsigned(h), negative, scratch, &index);
      if (threadIdx.x == 0) {
        thr[k].tn = key_value<T>(~key);
        thr[k].jn = T(index);
      }
    }
  }
}

// Pass 3: this thread's sums over the kept pairs of every mode. Only a selected side filters:
// the other keeps every pair, a NaN one too (so the sums are NaN, as on the CPU).
// acc per mode: pos_num, pos_norm, neg_num, neg_norm, refine_sum; counts: positives, NaN flag.
template <typename T>
__device__ __forceinline__ void kept_pair_sums(
    const T* __restrict__ s_row, int64_t m, const Candidate& a, const int64_t* __restrict__ c_cols,
    const ModeGroup<T>& g, double gamma, const Threshold<T> (&t)[kModesPerLaunch],
    const bool (&select_positives)[kModesPerLaunch],
    const bool (&select_negatives)[kModesPerLaunch], T (&acc)[kModesPerLaunch * 5],
    int (&counts)[kModesPerLaunch * 2]) {
  constexpr int K = kModesPerLaunch;
  for (int64_t j = threadIdx.x; j < m; j += kThreads) {
    const T s = s_row[j];
    const Candidate c = load_candidate(c_cols, m, j);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k >= g.n) break;
      const int cls = classify(g.mode[k], a, c);
      if (cls == kIgnored) continue;
      if (isnan(s)) counts[2 * k + 1] = 1;
      if (cls == kPositive) {
        ++counts[2 * k];
        if (select_positives[k] && !kept_positive(s, j, t[k].tp, t[k].jp)) continue;
        const T diff = s - g.target[k];
        acc[5 * k + 4] += diff * diff;
        if (select_positives[k]) {
          const T e = exp(T(1) / (s + T(gamma)) - t[k].mp);
          acc[5 * k] += s * e;
          acc[5 * k + 1] += e;
        } else {
          acc[5 * k] += s;
        }
      } else {
        if (select_negatives[k] && !kept_negative(s, j, t[k].tn, t[k].jn)) continue;
        if (select_negatives[k]) {
          const T e = exp(s);
          acc[5 * k + 2] += s * e;
          acc[5 * k + 3] += e;
        } else {
          acc[5 * k + 2] += s;
        }
      }
    }
  }
}

// Pass 4 (one thread): the row's stats and, with selection, state from the block's sums, with
// the NaN rule.
template <typename T, bool kSelect>
__device__ __forceinline__ void write_row_stats(int64_t row, const ModeGroup<T>& g, int64_t h,
                                                const Threshold<T> (&t)[kModesPerLaunch],
                                                const bool (&select_positives)[kModesPerLaunch],
                                                const bool (&select_negatives)[kModesPerLaunch],
                                                const T (&acc)[kModesPerLaunch * 5],
                                                const int (&counts)[kModesPerLaunch * 2],
                                                RowTable<T> stats, RowTable<T> state) {
  const T nan = KeyTraits<T>::nan();
  for (int k = 0; k < g.n; ++k) {
    const T* v = acc + 5 * k;
    T sum_p = select_positives[k] ? v[1] : T(1), sum_n = select_negatives[k] ? v[3] : T(1),
      mp = t[k].mp;
    T* out = stats.at(row, k, kStatCols);
    out[kPosSum] = select_positives[k] ? (v[1] > 0 ? v[0] / v[1] : T(0)) : v[0];
    out[kNegSum] = select_negatives[k] ? (v[3] > 0 ? v[2] / v[3] : T(0)) : v[2];
    const int64_t n_pos = counts[2 * k];
    out[kPosCount] = T(select_positives[k] && n_pos > h ? h : n_pos);
    out[kRefineSum] = v[4];
    if (counts[2 * k + 1] > 0) {
      // A NaN similarity among the row's pairs poisons its sums; pos_count stays a count.
      out[kPosSum] = out[kNegSum] = out[kRefineSum] = nan;
      if (select_positives[k]) mp = sum_p = nan;
      if (select_negatives[k]) sum_n = nan;
    }
    if constexpr (kSelect) {
      T* st = state.at(row, k, kStateCols);
      st[kStateTp] = t[k].tp;
      st[kStateJp] = t[k].jp;
      st[kStateTn] = t[k].tn;
      st[kStateJn] = t[k].jn;
      st[kStateMp] = mp;
      st[kStateSumP] = sum_p;
      st[kStateSumN] = sum_n;
    }
  }
}

// One block per anchor row: the row's per-mode stats (and state with kSelect).
template <typename T, bool kSelect>
__global__ void __launch_bounds__(kThreads)
    pair_stats_kernel(const T* __restrict__ sim, int64_t m, const int64_t* __restrict__ a_ids,
                      const int64_t* __restrict__ c_cols, ModeGroup<T> g, int64_t h, double gamma,
                      RowTable<T> stats, RowTable<T> state) {
  constexpr int K = kModesPerLaunch;
  __shared__ T red[kWarps * K * 5];
  __shared__ int ired[kWarps * K * 2];
  __shared__ Threshold<T> thr[K];
  __shared__ SelectScratch scratch;

  const int64_t row = blockIdx.x;
  const T* __restrict__ s_row = sim + row * m;
  const Candidate a = load_anchor(a_ids, row);
  const T inf = KeyTraits<T>::inf();

  if (threadIdx.x < K) thr[threadIdx.x] = {inf, T(m), -inf, T(m), T(0)};
  __syncthreads();

  if constexpr (kSelect) {
    int sizes[2 * K] = {};
    T min_pos[K];
    selectable_sets(s_row, m, a, c_cols, g, sizes, min_pos, red, ired);
    select_thresholds(s_row, m, a, c_cols, g, h, gamma, sizes, min_pos, scratch, thr);
    __syncthreads();
  }

  Threshold<T> t[K];
  bool select_positives[K], select_negatives[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    t[k] = thr[k];
    select_positives[k] = kSelect && k < g.n && g.select_positives[k];
    select_negatives[k] = kSelect && k < g.n && g.select_negatives[k];
  }
  T acc[K * 5] = {};
  int counts[K * 2] = {};
  kept_pair_sums(s_row, m, a, c_cols, g, gamma, t, select_positives, select_negatives, acc, counts);
  block_reduce(acc, red, SumOp());
  block_reduce(counts, ired, SumOp());
  if (threadIdx.x == 0) {
    write_row_stats<T, kSelect>(row, g, h, t, select_positives, select_negatives, acc, counts,
                                stats, state);
  }
}

// dL/dS of one chunk. grad_stats columns: pos_sum, neg_sum, (pos_count: no gradient), refine.
// dsim = dL/dS, or dsim += dL/dS when accumulate (later mode groups).
template <typename T, bool kSelect>
__global__ void __launch_bounds__(kThreads)
    pair_grad_kernel(const T* __restrict__ sim, T* __restrict__ dsim, int64_t m,
                     const int64_t* __restrict__ a_ids, const int64_t* __restrict__ c_cols,
                     ModeGroup<T> g, T gamma, RowTable<const T> grad, RowTable<const T> state,
                     bool accumulate) {
  constexpr int K = kModesPerLaunch;
  __shared__ T red[kWarps * K];

  const int64_t row = blockIdx.x;
  const T* __restrict__ s_row = sim + row * m;
  const Candidate a = load_anchor(a_ids, row);
  const T inf = KeyTraits<T>::inf();

  T g_pos[K], g_neg[K], g_ref[K];
  Threshold<T> t[K];
  T sum_p[K], sum_n[K];
  bool select_positives[K], select_negatives[K];
  bool any_select_negatives = false;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const bool on = k < g.n;
    const T* gr = on ? grad.at(row, k, kStatCols) : nullptr;
    g_pos[k] = on ? gr[kPosSum] : T(0);
    g_neg[k] = on ? gr[kNegSum] : T(0);
    g_ref[k] = on ? gr[kRefineSum] : T(0);
    t[k] = {inf, T(m), -inf, T(m), T(0)};
    sum_p[k] = sum_n[k] = T(1);
    select_positives[k] = kSelect && on && g.select_positives[k];
    select_negatives[k] = kSelect && on && g.select_negatives[k];
    any_select_negatives = any_select_negatives || select_negatives[k];
    if (kSelect && on) {
      const T* st = state.at(row, k, kStateCols);
      t[k] = {st[kStateTp], st[kStateJp], st[kStateTn], st[kStateJn], st[kStateMp]};
      sum_p[k] = st[kStateSumP];
      sum_n[k] = st[kStateSumN];
    }
  }

  // Pass A (weighted negatives only): neg_sum = sum_kept s e^s / sum_n, needed by
  // d neg_sum / d s_j = w_j (1 + s_j - neg_sum).
  T neg_sum[K] = {};
  if (kSelect && any_select_negatives) {
    for (int64_t j = threadIdx.x; j < m; j += kThreads) {
      const T s = s_row[j];
      const Candidate c = load_candidate(c_cols, m, j);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (k >= g.n) break;
        if (select_negatives[k] && classify(g.mode[k], a, c) == kNegative &&
            kept_negative(s, j, t[k].tn, t[k].jn)) {
          neg_sum[k] += s * exp(s);
        }
      }
    }
    block_reduce(neg_sum, red, SumOp());
#pragma unroll
    for (int k = 0; k < K; ++k) neg_sum[k] = sum_n[k] > 0 ? neg_sum[k] / sum_n[k] : T(0);
  }

  // Pass B: dL/dS_j summed over the modes (kept-pair tests on selected sides only, as in the
  // forward: a NaN pair of an unselected side passes its NaN on, as on the CPU).
  T* __restrict__ d_row = dsim + row * m;
  for (int64_t j = threadIdx.x; j < m; j += kThreads) {
    const T s = s_row[j];
    const Candidate c = load_candidate(c_cols, m, j);
    T d = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k >= g.n) break;
      const int cls = classify(g.mode[k], a, c);
      if (cls == kPositive) {
        if (select_positives[k] && !kept_positive(s, j, t[k].tp, t[k].jp)) continue;
        // w_p is detached: d pos_sum / d s_j = w_j.
        const T w = select_positives[k] ? exp(T(1) / (s + gamma) - t[k].mp) / sum_p[k] : T(1);
        d += g_pos[k] * w + g_ref[k] * T(2) * (s - g.target[k]);
      } else if (cls == kNegative) {
        if (select_negatives[k] && !kept_negative(s, j, t[k].tn, t[k].jn)) continue;
        d +=
            select_negatives[k] ? g_neg[k] * exp(s) / sum_n[k] * (T(1) + s - neg_sum[k]) : g_neg[k];
      }
    }
    d_row[j] = accumulate ? d_row[j] + d : d;
  }
}

// Forward of pair_sums / hard_pair_sums. za, zc: (N, d), (M, d); returns (stats, state) in the
// compute dtype: float32 for float16 / bfloat16 / float32 inputs, float64 for float64, as on the
// CPU and in the fake kernels (state undefined unless kSelect). Inputs are checked by the caller.
template <bool kSelect>
std::tuple<at::Tensor, at::Tensor> pair_stats_forward(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives) {
  const c10::cuda::CUDAGuard guard(za.device());
  const auto ct = compute_dtype(za.scalar_type());
  // Upcast once: float16 / bfloat16 rows are multiplied and reduced in float32.
  const at::Tensor za_c = as_dtype(za, ct).contiguous(), zc_c = as_dtype(zc, ct).contiguous();
  const at::Tensor a_rows = a_ids.contiguous(), c_cols = columns_of(c_ids);
  const int64_t n = za.size(0), m = zc.size(0), n_modes = modes.size();
  at::Tensor stats = at::empty({n, n_modes, kStatCols}, za_c.options());
  at::Tensor state = kSelect ? at::empty({n, n_modes, kStateCols}, za_c.options()) : at::Tensor();
  const int64_t chunk = chunk_rows(n, m);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(ct, "hycon_ext_pair_stats_cuda", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t rows = std::min(chunk, n - r0);
      const at::Tensor sim = at::mm(za_c.narrow(0, r0, rows), zc_c.t()).contiguous();
      for (int64_t first = 0; first < n_modes; first += kModesPerLaunch) {
        const auto group =
            make_mode_group<scalar_t>(modes, targets, first, select_positives, select_negatives);
        RowTable<scalar_t> stats_rows{
            stats.data_ptr<scalar_t>() + (r0 * n_modes + first) * kStatCols, n_modes};
        RowTable<scalar_t> state_rows{
            kSelect ? state.data_ptr<scalar_t>() + (r0 * n_modes + first) * kStateCols : nullptr,
            n_modes};
        pair_stats_kernel<scalar_t, kSelect><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
            sim.data_ptr<scalar_t>(), m, a_rows.data_ptr<int64_t>() + r0 * kDescCols,
            c_cols.data_ptr<int64_t>(), group, h, gamma, stats_rows, state_rows);
        check_launch();
      }
    }
  });
  return {stats, state};
}

// Backward: (grad_za, grad_zc) in the inputs' dtypes. grad_stats and state are (N, n_modes, 4|7).
// The last constant_rows rows of zc are constants: their gradient is zero and is not computed.
template <bool kSelect>
std::tuple<at::Tensor, at::Tensor> pair_stats_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows) {
  const c10::cuda::CUDAGuard guard(za.device());
  const auto ct = compute_dtype(za.scalar_type());
  const at::Tensor za_c = as_dtype(za, ct).contiguous(), zc_c = as_dtype(zc, ct).contiguous();
  const at::Tensor grad_c = as_dtype(grad_stats, ct).contiguous();
  const at::Tensor state_c = kSelect ? as_dtype(state, ct).contiguous() : at::Tensor();
  const at::Tensor a_rows = a_ids.contiguous(), c_cols = columns_of(c_ids);
  const int64_t n = za.size(0), m = zc.size(0), n_modes = modes.size();
  at::Tensor grad_za = at::empty_like(za_c);
  at::Tensor grad_zc = at::zeros_like(zc_c);
  const int64_t grad_rows = m - constant_rows;
  at::Tensor grad_zc_rows = grad_zc.narrow(0, 0, grad_rows);
  const int64_t chunk = chunk_rows(n, m);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(ct, "hycon_ext_pair_stats_backward_cuda", [&] {
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t rows = std::min(chunk, n - r0);
      const at::Tensor za_rows = za_c.narrow(0, r0, rows);
      const at::Tensor sim = at::mm(za_rows, zc_c.t()).contiguous();
      at::Tensor dsim = at::empty_like(sim);
      for (int64_t first = 0; first < n_modes; first += kModesPerLaunch) {
        const auto group =
            make_mode_group<scalar_t>(modes, targets, first, select_positives, select_negatives);
        RowTable<const scalar_t> grad_rows{
            grad_c.data_ptr<scalar_t>() + (r0 * n_modes + first) * kStatCols, n_modes};
        RowTable<const scalar_t> state_rows{
            kSelect ? state_c.data_ptr<scalar_t>() + (r0 * n_modes + first) * kStateCols : nullptr,
            n_modes};
        pair_grad_kernel<scalar_t, kSelect><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
            sim.data_ptr<scalar_t>(), dsim.data_ptr<scalar_t>(), m,
            a_rows.data_ptr<int64_t>() + r0 * kDescCols, c_cols.data_ptr<int64_t>(), group,
            static_cast<scalar_t>(gamma), grad_rows, state_rows, first > 0);
        check_launch();
      }
      if (n_modes == 0) dsim.zero_();
      at::Tensor grad_za_rows = grad_za.narrow(0, r0, rows);
      at::mm_out(grad_za_rows, dsim, zc_c);
      grad_zc_rows.addmm_(dsim.narrow(1, 0, grad_rows).t(), za_rows);
    }
  });
  return {as_dtype(grad_za, za.scalar_type()), as_dtype(grad_zc, zc.scalar_type())};
}

}  // namespace cuda
}  // namespace hycon_ext

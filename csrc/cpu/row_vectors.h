// Vector versions of the engine's two per-pair loops for float rows: the relation sums of the
// forward and dL/ds of pairs without selection in the backward. The scalar loops classify every
// pair from three int64 compares and scatter into 8 relation buckets; here the
// candidates come as int32 columns in runs of one modality, so within a run a pair's relation
// is fixed by two compares (same class? same sample?) and the 4 cases are accumulated with
// masks in 4 float lanes (GCC/Clang vector extensions: SSE2, the x86-64 baseline, or NEON).
// Internal to pair_engine.cpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "../pair_common.h"

namespace hycon_ext::cpu {

// GCC and Clang (which defines __GNUC__ too) have the vector extensions; elsewhere the
// engine's scalar loops run.
#if defined(__GNUC__)
#define HYCON_ROW_VECTORS 1
#else
#define HYCON_ROW_VECTORS 0
#endif

// A pair's case within a run: bit 0 same class, bit 1 same sample (relation bits 0 and 2).
constexpr int kCases = 4;
inline int case_relation(int c, bool same_modality) {
  return (c & 1) | static_cast<int>(same_modality) << 1 | (c >> 1) << 2;
}

// Candidate descriptors as int32 columns plus the runs of consecutive equal modality.
struct CandidateColumns {
  struct Run {
    int64_t begin, end, modality;
  };
  std::vector<int32_t> cls, smp;
  std::vector<Run> runs;
};

// Runs shorter than this on average leave the vector loops nothing to gain.
constexpr int64_t kMinMeanRun = 16;

inline bool ids_fit_int32(const int64_t* ids, int64_t rows) {
  for (int64_t i = 0; i < rows; ++i) {
    for (const int64_t col : {kDescClass, kDescSample}) {
      const int64_t v = ids[i * kDescCols + col];
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return false;
      }
    }
  }
  return true;
}

// nullopt when the scalar loops must run: no vector support, a class or sample id of the
// anchors (n rows) or candidates (m rows) outside int32, or modalities interleaved into short
// runs. The ids are contiguous (rows, 3) descriptors. Besides the float vector loops, the
// engine reads relations and, with selection, the runs to scan from them for any dtype.
inline std::optional<CandidateColumns> candidate_columns(const int64_t* a_ids, int64_t n,
                                                         const int64_t* c_ids, int64_t m) {
  if (!HYCON_ROW_VECTORS || !ids_fit_int32(a_ids, n) || !ids_fit_int32(c_ids, m)) {
    return std::nullopt;
  }
  CandidateColumns out;
  out.cls.resize(m);
  out.smp.resize(m);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t* row = c_ids + j * kDescCols;
    out.cls[j] = static_cast<int32_t>(row[kDescClass]);
    out.smp[j] = static_cast<int32_t>(row[kDescSample]);
    if (out.runs.empty() || out.runs.back().modality != row[kDescModality]) {
      out.runs.push_back({j, j + 1, row[kDescModality]});
    } else {
      out.runs.back().end = j + 1;
    }
  }
  if (static_cast<int64_t>(out.runs.size()) * kMinMeanRun > m) return std::nullopt;
  return out;
}

#if HYCON_ROW_VECTORS
using VecF = float __attribute__((vector_size(16)));
using VecI = int32_t __attribute__((vector_size(16)));
constexpr int64_t kVec = 4;

inline VecF load_f(const float* p) {
  VecF v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline VecI load_i(const int32_t* p) {
  VecI v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
// Case masks (all bits set where a lane has that case, else 0) of 4 candidates.
inline void case_masks(const int32_t* cls, const int32_t* smp, int32_t a_cls, int32_t a_smp,
                       VecI masks[kCases]) {
  const VecI same_class = load_i(cls) == a_cls;
  const VecI same_sample = load_i(smp) == a_smp;
  masks[0] = ~same_class & ~same_sample;
  masks[1] = same_class & ~same_sample;
  masks[2] = ~same_class & same_sample;
  masks[3] = same_class & same_sample;
}
#endif

inline int pair_case(int32_t c_cls, int32_t c_smp, int32_t a_cls, int32_t a_smp) {
  return static_cast<int>(c_cls == a_cls) | static_cast<int>(c_smp == a_smp) << 1;
}

// Sums of s and s^2 and the counts of each case over candidates [begin, end). Masking is by
// bits, so a NaN or inf similarity only reaches its own case, as in the scalar loop. Partial
// sums stay in float for at most kFlush pairs a lane before going into the double totals.
inline void case_sums(const float* s, const int32_t* cls, const int32_t* smp, int64_t begin,
                      int64_t end, int32_t a_cls, int32_t a_smp, double sum[kCases],
                      double sq[kCases], int64_t count[kCases]) {
  std::fill(sum, sum + kCases, 0.0);
  std::fill(sq, sq + kCases, 0.0);
  std::fill(count, count + kCases, 0);
  int64_t j = begin;
#if HYCON_ROW_VECTORS
  constexpr int64_t kFlush = 256;
  while (end - j >= kVec) {
    VecF vsum[kCases] = {}, vsq[kCases] = {};
    VecI vcount[kCases] = {};
    const int64_t stop = std::min(end, j + kFlush * kVec);
    for (; stop - j >= kVec; j += kVec) {
      VecI masks[kCases];
      case_masks(cls + j, smp + j, a_cls, a_smp, masks);
      const VecF v = load_f(s + j);
      const VecI bits = reinterpret_cast<VecI>(v);
      const VecI bits_sq = reinterpret_cast<VecI>(v * v);
      for (int c = 0; c < kCases; ++c) {
        vsum[c] += reinterpret_cast<VecF>(bits & masks[c]);
        vsq[c] += reinterpret_cast<VecF>(bits_sq & masks[c]);
        vcount[c] -= masks[c];
      }
    }
    for (int c = 0; c < kCases; ++c) {
      for (int lane = 0; lane < kVec; ++lane) {
        sum[c] += vsum[c][lane];
        sq[c] += vsq[c][lane];
        count[c] += vcount[c][lane];
      }
    }
  }
#endif
  for (; j < end; ++j) {
    const int c = pair_case(cls[j], smp[j], a_cls, a_smp);
    const double v = s[j];
    sum[c] += v;
    sq[c] += v * v;
    ++count[c];
  }
}

// d[j] = lin[c] + slope[c] * s[j] over candidates [begin, end) (d may be s), where c is the
// pair's case; cases with sloped[c] false add nothing, so a NaN similarity there stays out.
inline void case_linear(const float* s, float* d, const int32_t* cls, const int32_t* smp,
                        int64_t begin, int64_t end, int32_t a_cls, int32_t a_smp,
                        const float lin[kCases], const float slope[kCases],
                        const bool sloped[kCases]) {
  int64_t j = begin;
#if HYCON_ROW_VECTORS
  VecI lin_bits[kCases], slope_bits[kCases], sloped_bits[kCases];
  for (int c = 0; c < kCases; ++c) {
    const VecF l = {lin[c], lin[c], lin[c], lin[c]};
    const VecF k = {slope[c], slope[c], slope[c], slope[c]};
    lin_bits[c] = reinterpret_cast<VecI>(l);
    slope_bits[c] = reinterpret_cast<VecI>(k);
    sloped_bits[c] = VecI{} - static_cast<int32_t>(sloped[c]);
  }
  for (; end - j >= kVec; j += kVec) {
    VecI masks[kCases];
    case_masks(cls + j, smp + j, a_cls, a_smp, masks);
    VecI l = {}, k = {}, on = {};
    for (int c = 0; c < kCases; ++c) {
      l |= masks[c] & lin_bits[c];
      k |= masks[c] & slope_bits[c];
      on |= masks[c] & sloped_bits[c];
    }
    const VecI p = reinterpret_cast<VecI>(reinterpret_cast<VecF>(k) * load_f(s + j)) & on;
    const VecF out = reinterpret_cast<VecF>(l) + reinterpret_cast<VecF>(p);
    __builtin_memcpy(d + j, &out, sizeof out);
  }
#endif
  for (; j < end; ++j) {
    const int c = pair_case(cls[j], smp[j], a_cls, a_smp);
    d[j] = lin[c] + (sloped[c] ? slope[c] * s[j] : 0.0f);
  }
}

}  // namespace hycon_ext::cpu

// The arithmetic of the fused CUDA loss (csrc/cuda/fused_loss.cuh) that is not GPU-specific:
// tile and split ranges, the relation of two rows of loss_values, the per-row sums and stats,
// the per-anchor terms and the losses, and the dL/dS coefficients of the backward. Plain C++
// (no ATen), so csrc/test/test_fused_math.cpp runs exactly these formulas on the CPU against
// the CPU engine. Formulas and their rounding points follow csrc/pair_terms.cpp,
// csrc/loss_values.cpp and csrc/cpu/pair_engine.cpp (docs/design.md).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace hycon_ext {
namespace fused {

// ---- tiles: anchor rows x candidate rows, candidates split into contiguous tile ranges ----

HYCON_HOST_DEVICE inline int64_t tile_count(int64_t rows, int64_t tile) {
  return (rows + tile - 1) / tile;
}

// Candidate-tile splits for `anchor_tiles` blocks of anchors on `sms` multiprocessors: enough
// blocks for about two waves, at most one split per candidate tile and kMaxSplits in all. It
// depends on shapes only, so a step is deterministic and graph-capturable.
constexpr int64_t kMaxSplits = 16;
HYCON_HOST_DEVICE inline int64_t candidate_splits(int64_t anchor_tiles, int64_t candidate_tiles,
                                                  int64_t sms) {
  int64_t want = (2 * sms + anchor_tiles - 1) / (anchor_tiles > 0 ? anchor_tiles : 1);
  if (want > candidate_tiles) want = candidate_tiles;
  if (want > kMaxSplits) want = kMaxSplits;
  return want < 1 ? 1 : want;
}

// Candidate tiles [first, last) of split `split` of `splits` (contiguous, covering all tiles).
HYCON_HOST_DEVICE inline int64_t split_first(int64_t split, int64_t splits, int64_t tiles) {
  return tiles * split / splits;
}

// Thread (tx, ty) of a 16 x 16 thread block holds rows first + ty + 16 i and candidates
// first + tx + 16 j of a tile.
constexpr int kLanes = 16;
HYCON_HOST_DEVICE inline int64_t lane_row(int64_t first, int lane, int i) {
  return first + lane + kLanes * i;
}

// ---- rows of loss_values: row r = modality * K + sample, class = labels[sample] ----

HYCON_HOST_DEVICE inline int64_t row_modality(int64_t r, int64_t k) {
  return r / k;
}
HYCON_HOST_DEVICE inline int64_t row_sample(int64_t r, int64_t k) {
  return r - (r / k) * k;
}

// Relation of an (anchor, candidate) pair. Every pair of loss_values' rows belongs to exactly
// one, since equal samples have equal classes there: the modes of docs/design.md read
//   INTRA: kIntraPos / kIntraNeg;  INTER: kInterPos / kInterNeg;  SAME_SAMPLE: kSamePos.
enum Relation : int { kSelf = 0, kIntraPos, kIntraNeg, kInterPos, kInterNeg, kSamePos };
constexpr int kRelations = 6;

HYCON_HOST_DEVICE inline int pair_relation(bool same_modality, bool same_sample, bool same_class) {
  if (same_modality) return same_sample ? kSelf : (same_class ? kIntraPos : kIntraNeg);
  if (same_sample) return kSamePos;
  return same_class ? kInterPos : kInterNeg;
}

// ---- forward: per-anchor sums over its pairs ----

// Sums per anchor: the pair similarities of each relation and the refinement squares of the
// positives, (s - 1)^2 for INTRA and (s - alpha)^2 for INTER and SAME_SAMPLE.
enum SumIndex : int {
  kSumIntraPos = 0,
  kSumIntraNeg,
  kSumIntraRefine,
  kSumInterPos,
  kSumInterNeg,
  kSumInterRefine,
  kSumSamePos,
  kSumSameRefine
};
constexpr int kSums = 8;
constexpr int kCounts = 3;  // positives of INTRA, INTER, SAME_SAMPLE

// Adds one pair. Selects, not products with 0/1 masks: a NaN similarity enters only its own
// relation's sums, as on the CPU.
template <typename A, typename S>
HYCON_HOST_DEVICE inline void add_pair(int rel, S s_in, A alpha, A (&sum)[kSums],
                                       int (&count)[kCounts]) {
  const A s = static_cast<A>(s_in), zero = 0;
  const bool ip = rel == kIntraPos, ep = rel == kInterPos, sp = rel == kSamePos;
  const A d1 = s - A(1), da = s - alpha;
  sum[kSumIntraPos] += ip ? s : zero;
  sum[kSumIntraNeg] += rel == kIntraNeg ? s : zero;
  sum[kSumIntraRefine] += ip ? d1 * d1 : zero;
  sum[kSumInterPos] += ep ? s : zero;
  sum[kSumInterNeg] += rel == kInterNeg ? s : zero;
  sum[kSumInterRefine] += ep ? da * da : zero;
  sum[kSumSamePos] += sp ? s : zero;
  sum[kSumSameRefine] += sp ? da * da : zero;
  count[0] += ip;
  count[1] += ep;
  count[2] += sp;
}

// stats (3 modes x [pos_sum, neg_sum, pos_count, refine_sum]) of one anchor from its sums,
// rounded once to T. A NaN among a mode's pairs makes its three sums NaN (pos_count stays).
template <typename T>
HYCON_HOST_DEVICE inline void row_stats(const double (&sum)[kSums], const int64_t (&count)[kCounts],
                                        T* st) {
  const double pos[3] = {sum[kSumIntraPos], sum[kSumInterPos], sum[kSumSamePos]};
  const double neg[3] = {sum[kSumIntraNeg], sum[kSumInterNeg], 0.0};
  const double ref[3] = {sum[kSumIntraRefine], sum[kSumInterRefine], sum[kSumSameRefine]};
  for (int m = 0; m < 3; ++m) {
    const double probe = pos[m] + neg[m];
    const bool nan = probe != probe;
    T* out = st + 4 * m;
    out[0] = static_cast<T>(nan ? probe : pos[m]);
    out[1] = static_cast<T>(nan ? probe : neg[m]);
    out[2] = static_cast<T>(count[m]);
    out[3] = static_cast<T>(nan ? probe : ref[m]);
  }
}

// ---- terms and losses (pair_terms' terms_cpu, loss_values' losses_from_terms) ----

// The loss's scalars: lambdas ordered (IAMCL, IEMCL, SCL) like the modes (INTRA, INTER,
// SAME_SAMPLE); targets (1, alpha, alpha).
struct LossWeights {
  double lambda[3];
  double alpha;
  bool refinement;
};

// Per anchor and mode: c_ratio ratio + refine_sum (c_mean / max(pos_count, 1) + c_sum),
// (c_ratio, c_mean, c_sum) = (-1, refinement, 0) for INTRA / INTER and (0, 0, 1/2) for
// SAME_SAMPLE; ratio = pos / (pos + neg + [pos == 0]).
struct TermCoef {
  double ratio, mean, sum;
};
HYCON_HOST_DEVICE inline TermCoef term_coef(int mode, bool refinement) {
  const bool same = mode == 2;
  return {same ? 0.0 : -1.0, (!same && refinement) ? 1.0 : 0.0, same ? 0.5 : 0.0};
}

template <typename T>
HYCON_HOST_DEVICE inline double anchor_term(const T* st, int mode, bool refinement) {
  const TermCoef c = term_coef(mode, refinement);
  const double pos = st[0], cnt = st[2];
  const double ratio = pos / (pos + st[1] + (pos == 0));
  return c.ratio * ratio + st[3] * (c.mean / (cnt > 1.0 ? cnt : 1.0) + c.sum);
}

// (total, scl, iamcl, iemcl) from terms (2 x 3: sums, counts), as loss_values rounds them.
template <typename T>
HYCON_HOST_DEVICE inline void losses_from_terms(const T* terms, const LossWeights& w, T* total,
                                                T* scl, T* iamcl, T* iemcl) {
  double mean[3], sum = 0;
  for (int k = 0; k < 3; ++k) {
    const double n = terms[3 + k];
    mean[k] = static_cast<double>(terms[k]) / (n > 1.0 ? n : 1.0);
    sum += w.lambda[k] * mean[k];
  }
  *total = static_cast<T>(sum);
  *scl = static_cast<T>(mean[2]);
  *iamcl = static_cast<T>(mean[0]);
  *iemcl = static_cast<T>(mean[1]);
}

// ---- backward: d loss / d term, d term / d stats, and dL/dS per relation ----

// d loss / d term k from grad_losses (total, scl, iamcl, iemcl), rounded to T.
template <typename T>
HYCON_HOST_DEVICE inline T grad_term(const T* grad_losses, const T* terms, const LossWeights& w,
                                     int k) {
  const int own = k == 0 ? 2 : (k == 1 ? 3 : 1);  // where term k's own loss sits
  const double n = terms[3 + k];
  return static_cast<T>(
      (w.lambda[k] * static_cast<double>(grad_losses[0]) + static_cast<double>(grad_losses[own])) /
      (n > 1.0 ? n : 1.0));
}

// Per anchor: dL/dS of a pair of relation rel is lin[rel] + slope[rel] s (slope only for
// positives). Layout of the kCoefs values of one anchor row:
enum CoefIndex : int {
  kLinIntraPos = 0,
  kSlopeIntraPos,
  kLinIntraNeg,
  kLinInterPos,
  kSlopeInterPos,
  kLinInterNeg,
  kLinSamePos,
  kSlopeSamePos
};
constexpr int kCoefs = 8;

// The anchor's coefficients from its stats (3 x 4) and d loss / d terms, with the rounding of
// the CPU path: d stats rounded to T (pair_terms' grad_stats_cpu), lin / slope in double from
// them and rounded to T once.
template <typename T>
HYCON_HOST_DEVICE inline void row_coefficients(const T* st, const T (&g_term)[3],
                                               const LossWeights& w, T* coef) {
  double lin_pos[3], slope[3], lin_neg[3];
  const double target[3] = {1.0, w.alpha, w.alpha};
  for (int m = 0; m < 3; ++m) {
    const TermCoef c = term_coef(m, w.refinement);
    const T* a = st + 4 * m;
    const double pos = a[0], cnt = a[2], g_k = g_term[m], g_ratio = g_k * c.ratio;
    const double inv_den = 1.0 / (pos + a[1] + (pos == 0));
    const double d_neg = -(pos * inv_den * inv_den * g_ratio);
    const double g_pos = static_cast<T>(g_ratio * inv_den + d_neg);
    const double g_neg = static_cast<T>(d_neg);
    const double g_ref = static_cast<T>(g_k * (c.mean / (cnt > 1.0 ? cnt : 1.0) + c.sum));
    lin_pos[m] = g_pos - 2 * g_ref * target[m];
    slope[m] = 2 * g_ref;
    lin_neg[m] = g_neg;
  }
  coef[kLinIntraPos] = static_cast<T>(lin_pos[0]);
  coef[kSlopeIntraPos] = static_cast<T>(slope[0]);
  coef[kLinIntraNeg] = static_cast<T>(lin_neg[0]);
  coef[kLinInterPos] = static_cast<T>(lin_pos[1]);
  coef[kSlopeInterPos] = static_cast<T>(slope[1]);
  coef[kLinInterNeg] = static_cast<T>(lin_neg[1]);
  coef[kLinSamePos] = static_cast<T>(lin_pos[2]);
  coef[kSlopeSamePos] = static_cast<T>(slope[2]);
}

// One anchor's dL/dS of a pair. A zero slope skips the product, so a NaN similarity of a pair
// without a refinement gradient leaves it finite, as on the CPU.
template <typename T>
HYCON_HOST_DEVICE inline T relation_grad(int rel, T s, const T* coef) {
  const T zero = 0;
  const T lin = rel == kIntraPos   ? coef[kLinIntraPos]
                : rel == kIntraNeg ? coef[kLinIntraNeg]
                : rel == kInterPos ? coef[kLinInterPos]
                : rel == kInterNeg ? coef[kLinInterNeg]
                : rel == kSamePos  ? coef[kLinSamePos]
                                   : zero;
  const T slope = rel == kIntraPos   ? coef[kSlopeIntraPos]
                  : rel == kInterPos ? coef[kSlopeInterPos]
                  : rel == kSamePos  ? coef[kSlopeSamePos]
                                     : zero;
  return slope != zero ? lin + slope * s : lin;
}

// Anchors and candidates are the same rows and relations are symmetric, so
// dL/dZ_r = sum_j (dS[r, j] + dS[j, r]) Z_j: one pass over S with both rows' coefficients.
template <typename T>
HYCON_HOST_DEVICE inline T pair_grad(int rel, T s, const T* coef_row, const T* coef_other) {
  return relation_grad(rel, s, coef_row) + relation_grad(rel, s, coef_other);
}

}  // namespace fused
}  // namespace hycon_ext

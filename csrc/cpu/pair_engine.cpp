#include "pair_engine.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../pair_common.h"
#include "row_vectors.h"

namespace hycon_ext::cpu {
namespace {

// Similarity workspace bound: chunk * M <= kWorkspaceElems, with at least kMinChunk rows so
// the matmul stays efficient.
constexpr int64_t kWorkspaceElems = int64_t(1) << 22;
constexpr int64_t kMinChunk = 32;

int64_t chunk_rows(int64_t n, int64_t m) {
  const int64_t c = std::max(kMinChunk, kWorkspaceElems / std::max<int64_t>(m, 1));
  return std::max<int64_t>(1, std::min(c, n));
}

// Rows per parallel task: the smallest problems stay on one thread (waking a team costs more),
// but already a K = 32 loss (96 x 96 pairs) splits in two tasks, which pays on two threads
// (bench/README.md's log has the measurement).
constexpr int64_t kPairsPerTask = int64_t(1) << 12;
int64_t row_grain(int64_t m) {
  return std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(m, 1));
}

// One code path for the forward and the backward, so the backward recomputes bitwise the
// similarities the selection saw.
at::Tensor chunk_similarities(const at::Tensor& za, const at::Tensor& zc_t, int64_t begin,
                              int64_t rows, at::Tensor& workspace) {
  // Whole tensors where the chunk is all of them (the small-batch case): two narrows less.
  at::Tensor s = rows == workspace.size(0) ? workspace : workspace.narrow(0, 0, rows);
  at::mm_out(s, rows == za.size(0) ? za : za.narrow(0, begin, rows), zc_t);
  return s;
}

// How a candidate relates to its anchor (bit 0: same class, 1: same modality, 2: same
// sample). Every mode's pair kind depends only on it, so a row is classified once.
constexpr int kRelations = 8;

inline int relation(const int64_t* a, const int64_t* c) {
  return static_cast<int>(c[kDescClass] == a[kDescClass]) |
         static_cast<int>(c[kDescModality] == a[kDescModality]) << 1 |
         static_cast<int>(c[kDescSample] == a[kDescSample]) << 2;
}

// The modes of one call, tabulated by relation.
struct Plan {
  Plan(at::IntArrayRef modes, at::ArrayRef<double> targets,
       const std::optional<PairSelection>& pair_selection) {
    for (size_t k = 0; k < modes.size(); ++k) {
      const bool selectable = pair_selection && modes[k] != SAME_SAMPLE;
      ModeCfg mc{targets[k],
                 selectable && pair_selection->select_positives,
                 selectable && pair_selection->select_negatives,
                 {},
                 -1,
                 -1,
                 0u,
                 0u};
      for (int rel = 0; rel < kRelations; ++rel) {
        // Descriptors that realise `rel` against the anchor (0, 0, 0).
        mc.kind[rel] = classify_pair(modes[k], 0, 0, 0, (rel & 1) ? 0 : 1, (rel & 2) ? 0 : 1,
                                     (rel & 4) ? 0 : 1);
      }
      for (const bool positive : {true, false}) {
        if (!(positive ? mc.select_positives : mc.select_negatives)) continue;
        unsigned members = 0;
        for (int rel = 0; rel < kRelations; ++rel) {
          if (mc.kind[rel] == (positive ? kPositive : kNegative)) members |= 1u << rel;
        }
        (positive ? mc.pos_slot : mc.neg_slot) = static_cast<int>(sides.size());
        (positive ? mc.pos_members : mc.neg_members) = members;
        sides.push_back({static_cast<int>(k), positive});
      }
      cfg.push_back(mc);
    }
    // Sides without selection write to the last (discarded) slot, so the compaction loops
    // need no branch.
    for (auto& mc : cfg) {
      if (mc.pos_slot < 0) mc.pos_slot = discard_slot();
      if (mc.neg_slot < 0) mc.neg_slot = discard_slot();
    }
  }
  int discard_slot() const { return static_cast<int>(sides.size()); }
  struct ModeCfg {
    double target;
    bool select_positives;  // top-h selection + detached softmax(1/(s+gamma)) weights on positives
    bool select_negatives;  // top-h selection + softmax(s) weights on negatives
    int kind[kRelations];
    int pos_slot, neg_slot;             // index into sides; discard_slot() without selection
    unsigned pos_members, neg_members;  // bit rel: relation rel is on the selected side
  };
  // A side whose pairs go through selection. Sides are in mode order, so the backward adds a
  // pair's selected-side gradients in the order of its modes.
  struct SelectedSide {
    int mode;
    bool positive;
  };
  std::vector<ModeCfg> cfg;
  std::vector<SelectedSide> sides;
};

template <typename scalar_t>
struct Candidate {
  scalar_t s;
  int64_t j;
};

// design.md order: positives by (s ascending, j ascending), negatives by (s descending,
// j ascending); the first h are kept.
// (Function objects, not function pointers, so the selection inlines them.)
struct PosBefore {
  template <typename scalar_t>
  bool operator()(const Candidate<scalar_t>& a, const Candidate<scalar_t>& b) const {
    return a.s < b.s || (a.s == b.s && a.j < b.j);
  }
};
struct NegBefore {
  template <typename scalar_t>
  bool operator()(const Candidate<scalar_t>& a, const Candidate<scalar_t>& b) const {
    return a.s > b.s || (a.s == b.s && a.j < b.j);
  }
};

// Moves the first h of c[0, n) in `before` order to c[0, h), with the h-th at c[h - 1]
// (0 < h < n). nth_element's partitions mispredict about every other comparison; for small h a
// running top-h list rejects most candidates with one well-predicted comparison instead.
constexpr int64_t kInsertionMaxH = 16;
template <typename scalar_t, typename Before>
void select_first(Candidate<scalar_t>* c, int64_t n, int64_t h, Before before) {
  if (h > kInsertionMaxH) {
    std::nth_element(c, c + (h - 1), c + n, before);
    return;
  }
  std::sort(c, c + h, before);
  for (int64_t i = h; i < n; ++i) {
    if (!before(c[i], c[h - 1])) continue;
    const Candidate<scalar_t> x = c[i];
    c[i] = c[h - 1];
    int64_t at = h - 1;
    for (; at > 0 && before(x, c[at - 1]); --at) c[at] = c[at - 1];
    c[at] = x;
  }
}

// The row passes avoid data-dependent branches: which relation a pair has is as good as
// random, and mispredicted branches cost more than the arithmetic they would skip.
// Sums go to kLanes interleaved accumulators so consecutive pairs do not wait on each other.
constexpr int kLanes = 4;

// Per-thread scratch for one anchor row, reused across rows.
template <typename scalar_t>
struct RowScratch {
  // Buffers are sized for rows of m candidates; the selection ones only when a side selects.
  RowScratch(const Plan& plan, int64_t m, bool backward) : rel(m) {
    if (plan.sides.empty()) return;
    const size_t slots = plan.discard_slot() + 1;
    if (backward) {
      kept.assign(slots, std::vector<int64_t>(m));
      n_kept.resize(slots);
      sim.resize(m);
      grad.resize(m);
    } else {
      candidates.assign(slots, std::vector<Candidate<scalar_t>>(m));
      n_candidates.resize(slots);
    }
  }
  double sum[kRelations], sq[kRelations];  // sum of s and s^2 per relation
  int64_t count[kRelations];
  std::vector<uint8_t> rel;  // relation of each candidate
  // Forward with selection: per side slot, its non-NaN pairs.
  std::vector<std::vector<Candidate<scalar_t>>> candidates;
  std::vector<int64_t> n_candidates;
  // Backward with selection: the row's similarities, gradients summed in double, and the
  // candidate indices one side keeps.
  std::vector<scalar_t> sim;
  std::vector<double> grad;
  std::vector<std::vector<int64_t>> kept;  // per side: the indices of its kept pairs
  std::vector<int64_t> n_kept;
};

// Each candidate's relation to anchor a, into rel: from the int32 columns when there are some
// (a vectorisable compare per run), else from the descriptors (three strided int64 loads a pair).
inline void row_relations(const int64_t* a, const int64_t* c_ids, const CandidateColumns* cols,
                          int64_t m, uint8_t* rel) {
  if (cols == nullptr) {
    for (int64_t j = 0; j < m; ++j) {
      rel[j] = static_cast<uint8_t>(relation(a, c_ids + j * kDescCols));
    }
    return;
  }
  const auto a_cls = static_cast<int32_t>(a[kDescClass]);
  const auto a_smp = static_cast<int32_t>(a[kDescSample]);
  const int32_t* cls = cols->cls.data();
  const int32_t* smp = cols->smp.data();
  for (const auto& run : cols->runs) {
    const int same_modality = run.modality == a[kDescModality] ? 2 : 0;
    for (int64_t j = run.begin; j < run.end; ++j) {
      rel[j] = static_cast<uint8_t>(static_cast<int>(cls[j] == a_cls) | same_modality |
                                    static_cast<int>(smp[j] == a_smp) << 2);
    }
  }
}

// Calls f(begin, end) over the candidate ranges that can hold a relation in `members`, in
// order: with columns only the modality runs whose same-modality bit (relation bit 1) some
// member has (a mode's selected pairs are all within the anchor's modality, or all across:
// INTRA scans a third of the row, INTER two thirds), else all of [0, m).
template <typename F>
void for_member_ranges(const CandidateColumns* cols, const int64_t* a, unsigned members, int64_t m,
                       F&& f) {
  if (cols == nullptr) {
    f(int64_t(0), m);
    return;
  }
  constexpr unsigned kSameModality = 0xCC;   // relations 2, 3, 6, 7
  constexpr unsigned kOtherModality = 0x33;  // relations 0, 1, 4, 5
  for (const auto& run : cols->runs) {
    const bool same = run.modality == a[kDescModality];
    if (members & (same ? kSameModality : kOtherModality)) f(run.begin, run.end);
  }
}

// The row's sums of s and s^2 and counts per relation, into r (from case sums per modality run
// when the candidates have columns), and with need_rel each candidate's relation.
template <typename scalar_t>
void relation_sums(const scalar_t* s_row, int64_t m, const int64_t* a, const int64_t* c_ids,
                   const CandidateColumns* cols, bool need_rel, RowScratch<scalar_t>& r) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cols != nullptr) {
      std::fill(r.sum, r.sum + kRelations, 0.0);
      std::fill(r.sq, r.sq + kRelations, 0.0);
      std::fill(r.count, r.count + kRelations, 0);
      for (const auto& run : cols->runs) {
        double sum[kCases], sq[kCases];
        int64_t count[kCases];
        case_sums(s_row, cols->cls.data(), cols->smp.data(), run.begin, run.end,
                  static_cast<int32_t>(a[kDescClass]), static_cast<int32_t>(a[kDescSample]), sum,
                  sq, count);
        const bool same_modality = run.modality == a[kDescModality];
        for (int c = 0; c < kCases; ++c) {
          const int rel = case_relation(c, same_modality);
          r.sum[rel] += sum[c];
          r.sq[rel] += sq[c];
          r.count[rel] += count[c];
        }
      }
      if (need_rel) row_relations(a, c_ids, cols, m, r.rel.data());
      return;
    }
  }
  double sum[kLanes][kRelations] = {}, sq[kLanes][kRelations] = {};
  int64_t count[kLanes][kRelations] = {};
  for (int64_t j = 0; j < m; ++j) {
    const int rel = relation(a, c_ids + j * kDescCols);
    const int lane = static_cast<int>(j % kLanes);
    const double s = s_row[j];
    r.rel[j] = static_cast<uint8_t>(rel);
    sum[lane][rel] += s;
    sq[lane][rel] += s * s;
    ++count[lane][rel];
  }
  for (int rel = 0; rel < kRelations; ++rel) {
    r.sum[rel] = r.sq[rel] = 0;
    r.count[rel] = 0;
    for (int lane = 0; lane < kLanes; ++lane) {
      r.sum[rel] += sum[lane][rel];
      r.sq[rel] += sq[lane][rel];
      r.count[rel] += count[lane][rel];
    }
  }
}

// Forward, step 1: each selected side's candidates, compacted without branches: every pair is
// written to both of its mode's buffers and kept where it belongs (NaN has no order: it never
// enters a selection).
template <typename scalar_t>
void gather_candidates(const scalar_t* s_row, int64_t m, const int64_t* a,
                       const CandidateColumns* cols, const Plan& plan, RowScratch<scalar_t>& r) {
  for (const auto& mc : plan.cfg) {
    if (!mc.select_positives && !mc.select_negatives) continue;
    Candidate<scalar_t>* p = r.candidates[mc.pos_slot].data();
    Candidate<scalar_t>* q = r.candidates[mc.neg_slot].data();
    int64_t np = 0, nq = 0;
    for_member_ranges(cols, a, mc.pos_members | mc.neg_members, m, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const scalar_t s = s_row[j];
        const unsigned valid = !std::isnan(s);
        const unsigned rel = r.rel[j];
        p[np] = {s, j};
        q[nq] = {s, j};
        np += (mc.pos_members >> rel) & valid;
        nq += (mc.neg_members >> rel) & valid;
      }
    });
    r.n_candidates[mc.pos_slot] = np;
    r.n_candidates[mc.neg_slot] = nq;
  }
}

// One mode's stats of one anchor row, and its selection state (design.md's state columns; the
// defaults are those of a side that keeps all its pairs).
template <typename scalar_t>
struct ModeRow {
  double pos_sum = 0, neg_sum = 0, refine = 0;
  double nan_probe = 0;  // sum of every similarity the mode looks at: NaN iff one of them is
  int64_t n_pos = 0, pos_count = 0;
  scalar_t t_p = std::numeric_limits<scalar_t>::infinity(), j_p = 0;
  scalar_t t_n = -std::numeric_limits<scalar_t>::infinity(), j_n = 0;
  scalar_t m_p = 0, sum_p = 1, sum_n = 1;
};

// Forward, step 2: the sums of the sides without selection, from the row's relation sums.
template <typename scalar_t>
ModeRow<scalar_t> unselected_sums(const Plan::ModeCfg& mc, const RowScratch<scalar_t>& r,
                                  int64_t m) {
  ModeRow<scalar_t> row;
  row.j_p = row.j_n = static_cast<scalar_t>(m);
  const double t = mc.target;
  for (int rel = 0; rel < kRelations; ++rel) {
    if (mc.kind[rel] == kIgnored) continue;
    row.nan_probe += r.sum[rel];
    if (mc.kind[rel] == kPositive) {
      row.n_pos += r.count[rel];
      if (!mc.select_positives) {
        row.pos_sum += r.sum[rel];
        row.refine += r.sq[rel] - 2 * t * r.sum[rel] + t * t * r.count[rel];  // sum (s - t)^2
      }
    } else if (!mc.select_negatives) {
      row.neg_sum += r.sum[rel];
    }
  }
  row.pos_count = row.n_pos;
  return row;
}

// Forward, step 3: the h hardest positives (lowest s), weighted by the detached
// softmax(1/(s + gamma)); the refinement term stays unweighted.
template <typename scalar_t>
void add_selected_positives(const Plan::ModeCfg& mc, const PairSelection& pair_selection,
                            RowScratch<scalar_t>& r, ModeRow<scalar_t>& row) {
  Candidate<scalar_t>* p = r.candidates[mc.pos_slot].data();
  int64_t kept = r.n_candidates[mc.pos_slot];
  if (kept > pair_selection.h) {
    select_first(p, kept, pair_selection.h, PosBefore{});
    kept = pair_selection.h;
    row.t_p = p[kept - 1].s;
    row.j_p = static_cast<scalar_t>(p[kept - 1].j);
  }
  row.pos_count = std::min(pair_selection.h, row.n_pos);
  double z = 0, weighted = 0;
  if (kept > 0) {
    scalar_t s_min = p[0].s;
    for (int64_t i = 1; i < kept; ++i) s_min = std::min(s_min, p[i].s);
    // Rounded to the state dtype first: the backward sees the same shift.
    row.m_p = static_cast<scalar_t>(1.0 / (static_cast<double>(s_min) + pair_selection.gamma));
    for (int64_t i = 0; i < kept; ++i) {
      const double s = p[i].s;
      const double e = std::exp(1.0 / (s + pair_selection.gamma) - static_cast<double>(row.m_p));
      z += e;
      weighted += s * e;
      row.refine += (s - mc.target) * (s - mc.target);
    }
    row.pos_sum = weighted / z;
  }
  row.sum_p = static_cast<scalar_t>(z);
}

// Forward, step 4: the h hardest negatives (highest s), weighted by softmax(s).
template <typename scalar_t>
void add_selected_negatives(const Plan::ModeCfg& mc, const PairSelection& pair_selection,
                            RowScratch<scalar_t>& r, ModeRow<scalar_t>& row) {
  Candidate<scalar_t>* q = r.candidates[mc.neg_slot].data();
  int64_t kept = r.n_candidates[mc.neg_slot];
  if (kept > pair_selection.h) {
    select_first(q, kept, pair_selection.h, NegBefore{});
    kept = pair_selection.h;
    row.t_n = q[kept - 1].s;
    row.j_n = static_cast<scalar_t>(q[kept - 1].j);
  }
  double z = 0, weighted = 0;
  for (int64_t i = 0; i < kept; ++i) {
    const double s = q[i].s;
    const double e = std::exp(s);
    z += e;
    weighted += s * e;
  }
  if (kept > 0) row.neg_sum = weighted / z;
  row.sum_n = static_cast<scalar_t>(z);
}

// Forward, step 5: the mode's stats and state, with the NaN rule.
template <typename scalar_t>
void write_mode_row(const Plan::ModeCfg& mc, ModeRow<scalar_t> row, scalar_t* st, scalar_t* sv) {
  st[kPosSum] = static_cast<scalar_t>(row.pos_sum);
  st[kNegSum] = static_cast<scalar_t>(row.neg_sum);
  st[kPosCount] = static_cast<scalar_t>(row.pos_count);
  st[kRefineSum] = static_cast<scalar_t>(row.refine);
  if (std::isnan(row.nan_probe)) {
    // A NaN similarity among the row's pairs poisons its sums (pos_count stays a count,
    // so the loss keeps the anchor and propagates the NaN).
    const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
    st[kPosSum] = st[kNegSum] = st[kRefineSum] = nan;
    if (mc.select_positives) row.m_p = row.sum_p = nan;
    if (mc.select_negatives) row.sum_n = nan;
  }
  if (sv == nullptr) return;
  sv[kStateTp] = row.t_p;
  sv[kStateJp] = row.j_p;
  sv[kStateTn] = row.t_n;
  sv[kStateJn] = row.j_n;
  sv[kStateMp] = row.m_p;
  sv[kStateSumP] = row.sum_p;
  sv[kStateSumN] = row.sum_n;
}

// One anchor row's stats (n_modes, kStatCols) and, with selection, state (n_modes, kStateCols).
template <typename scalar_t>
void forward_row(const scalar_t* s_row, int64_t m, const int64_t* a, const int64_t* c_ids,
                 const CandidateColumns* cols, const Plan& plan,
                 const std::optional<PairSelection>& pair_selection, scalar_t* stats,
                 scalar_t* state, RowScratch<scalar_t>& r) {
  relation_sums(s_row, m, a, c_ids, cols, /*need_rel=*/!plan.sides.empty(), r);
  gather_candidates(s_row, m, a, cols, plan, r);
  for (size_t k = 0; k < plan.cfg.size(); ++k) {
    const auto& mc = plan.cfg[k];
    ModeRow<scalar_t> row = unselected_sums(mc, r, m);
    if (mc.select_positives) add_selected_positives(mc, *pair_selection, r, row);
    if (mc.select_negatives) add_selected_negatives(mc, *pair_selection, r, row);
    write_mode_row(mc, row, stats + k * kStatCols,
                   state != nullptr ? state + k * kStateCols : nullptr);
  }
}

// Backward, step 1: pairs outside every selection have dL/ds = lin[rel] + slope[rel] * s (from
// pos_sum, neg_sum and the refinement term), the same for every pair of a relation.
template <typename scalar_t>
void unselected_coefficients(const Plan& plan, const scalar_t* grad, double* lin, double* slope) {
  std::fill(lin, lin + kRelations, 0.0);
  std::fill(slope, slope + kRelations, 0.0);
  for (size_t k = 0; k < plan.cfg.size(); ++k) {
    const auto& mc = plan.cfg[k];
    const scalar_t* g = grad + k * kStatCols;
    const double g_pos = g[kPosSum], g_neg = g[kNegSum], g_ref = g[kRefineSum];
    for (int rel = 0; rel < kRelations; ++rel) {
      if (mc.kind[rel] == kPositive && !mc.select_positives) {
        lin[rel] += g_pos - 2 * g_ref * mc.target;
        slope[rel] += 2 * g_ref;
      } else if (mc.kind[rel] == kNegative && !mc.select_negatives) {
        lin[rel] += g_neg;
      }
    }
  }
}

// Backward, step 2 without selection: d_row[j] = lin + slope * s by relation. For float with
// columns, by the vectorised case loops of row_vectors.h, one modality run at a time.
template <typename scalar_t>
void linear_row(const scalar_t* s_row, scalar_t* d_row, int64_t m, const int64_t* a,
                const int64_t* c_ids, const CandidateColumns* cols, const double* lin,
                const double* slope, const bool* sloped) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cols != nullptr) {
      for (const auto& run : cols->runs) {
        const bool same_modality = run.modality == a[kDescModality];
        float lin_c[kCases], slope_c[kCases];
        bool sloped_c[kCases];
        for (int c = 0; c < kCases; ++c) {
          const int rel = case_relation(c, same_modality);
          lin_c[c] = static_cast<float>(lin[rel]);
          slope_c[c] = static_cast<float>(slope[rel]);
          sloped_c[c] = sloped[rel];
        }
        case_linear(s_row, d_row, cols->cls.data(), cols->smp.data(), run.begin, run.end,
                    static_cast<int32_t>(a[kDescClass]), static_cast<int32_t>(a[kDescSample]),
                    lin_c, slope_c, sloped_c);
      }
      return;
    }
  }
  for (int64_t j = 0; j < m; ++j) {
    const int rel = relation(a, c_ids + j * kDescCols);
    const double p = slope[rel] * static_cast<double>(s_row[j]);
    d_row[j] = static_cast<scalar_t>(lin[rel] + (sloped[rel] ? p : 0.0));
  }
}

// Backward with selection, step 2: each selected side's kept pairs (design.md thresholds, from
// the forward's state), compacted as in the forward.
template <typename scalar_t>
void gather_kept(int64_t m, const int64_t* a, const CandidateColumns* cols, const Plan& plan,
                 const scalar_t* state, RowScratch<scalar_t>& r) {
  for (size_t k = 0; k < plan.cfg.size(); ++k) {
    const auto& mc = plan.cfg[k];
    if (!mc.select_positives && !mc.select_negatives) continue;
    const scalar_t* sv = state + k * kStateCols;
    const scalar_t t_p = sv[kStateTp], t_n = sv[kStateTn];
    const double j_p = static_cast<double>(sv[kStateJp]);
    const double j_n = static_cast<double>(sv[kStateJn]);
    int64_t* p = r.kept[mc.pos_slot].data();
    int64_t* q = r.kept[mc.neg_slot].data();
    int64_t np = 0, nq = 0;
    for_member_ranges(cols, a, mc.pos_members | mc.neg_members, m, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const scalar_t s = r.sim[j];
        const unsigned rel = r.rel[j];
        const double jd = static_cast<double>(j);
        const unsigned pos_kept = (s < t_p) | ((s == t_p) & (jd <= j_p));
        const unsigned neg_kept = (s > t_n) | ((s == t_n) & (jd <= j_n));
        p[np] = j;
        q[nq] = j;
        np += (mc.pos_members >> rel) & pos_kept;
        nq += (mc.neg_members >> rel) & neg_kept;
      }
    });
    r.n_kept[mc.pos_slot] = np;
    r.n_kept[mc.neg_slot] = nq;
  }
}

// Backward with selection, step 3: the kept positives' gradients (w_p is detached; the
// refinement term is unweighted).
template <typename scalar_t>
void add_positive_side_grad(const int64_t* kept, int64_t n, double target, double gamma,
                            const scalar_t* sv, const scalar_t* g, RowScratch<scalar_t>& r) {
  const double m_p = sv[kStateMp], sum_p = sv[kStateSumP];
  const double g_pos = g[kPosSum], g_ref = g[kRefineSum];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = kept[i];
    const double s = r.sim[j];
    const double w = std::exp(1.0 / (s + gamma) - m_p) / sum_p;
    r.grad[j] += g_pos * w + 2.0 * g_ref * (s - target);
  }
}

// Backward with selection, step 4: the kept negatives' gradients,
// d/ds_j sum_n s_n softmax(s)_n = w_j (1 + s_j - neg_sum).
template <typename scalar_t>
void add_negative_side_grad(const int64_t* kept, int64_t n, const scalar_t* sv, const scalar_t* g,
                            RowScratch<scalar_t>& r) {
  const double sum_n = sv[kStateSumN], g_neg = g[kNegSum];
  double neg_mean = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double s = r.sim[kept[i]];
    neg_mean += s * std::exp(s);
  }
  neg_mean /= sum_n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = kept[i];
    const double s = r.sim[j];
    const double w = std::exp(s) / sum_n;
    r.grad[j] += g_neg * w * (1.0 + s - neg_mean);
  }
}

// Writes the row's dL/dS to d_row (which may be s_row itself).
template <typename scalar_t>
void backward_row(const scalar_t* s_row, scalar_t* d_row, int64_t m, const int64_t* a,
                  const int64_t* c_ids, const CandidateColumns* cols, const Plan& plan,
                  const std::optional<PairSelection>& pair_selection, const scalar_t* grad,
                  const scalar_t* state, RowScratch<scalar_t>& r) {
  double lin[kRelations], slope[kRelations];
  unselected_coefficients(plan, grad, lin, slope);
  // slope is 0 for negatives: their gradient stays finite at a NaN similarity.
  bool sloped[kRelations];
  for (int rel = 0; rel < kRelations; ++rel) sloped[rel] = slope[rel] != 0;
  if (plan.sides.empty()) {
    linear_row(s_row, d_row, m, a, c_ids, cols, lin, slope, sloped);
    return;
  }
  // With selection the kept pairs of each side add more: keep the similarities for the
  // kept-pair tests and sum each gradient in double before rounding it once.
  row_relations(a, c_ids, cols, m, r.rel.data());
  for (int64_t j = 0; j < m; ++j) {
    const int rel = r.rel[j];
    const double p = slope[rel] * static_cast<double>(s_row[j]);
    r.sim[j] = s_row[j];
    r.grad[j] = lin[rel] + (sloped[rel] ? p : 0.0);
  }
  gather_kept(m, a, cols, plan, state, r);
  for (size_t side_index = 0; side_index < plan.sides.size(); ++side_index) {
    const auto& side = plan.sides[side_index];
    const scalar_t* sv = state + side.mode * kStateCols;
    const scalar_t* g = grad + side.mode * kStatCols;
    const int64_t* kept = r.kept[side_index].data();
    const int64_t n = r.n_kept[side_index];
    if (side.positive) {
      add_positive_side_grad(kept, n, plan.cfg[side.mode].target, pair_selection->gamma, sv, g, r);
    } else {
      add_negative_side_grad(kept, n, sv, g, r);
    }
  }
  for (int64_t j = 0; j < m; ++j) d_row[j] = static_cast<scalar_t>(r.grad[j]);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_stats_forward(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets,
    const std::optional<PairSelection>& pair_selection, at::Tensor* sim) {
  const auto dtype = compute_dtype(za.scalar_type());
  const at::Tensor za_c = as_dtype(za, dtype).contiguous();
  const at::Tensor zc_c = as_dtype(zc, dtype).contiguous();
  const at::Tensor a_c = a_ids.contiguous();
  const at::Tensor c_c = c_ids.contiguous();
  const int64_t n = za.size(0), m = zc.size(0);
  const int64_t n_modes = static_cast<int64_t>(modes.size());
  const Plan plan(modes, targets, pair_selection);

  at::Tensor stats = at::empty({n, n_modes, kStatCols}, za_c.options());
  at::Tensor state =
      pair_selection ? at::empty({n, n_modes, kStateCols}, za_c.options()) : at::Tensor();
  if (n == 0 || n_modes == 0) return {stats, state};

  const int64_t chunk = chunk_rows(n, m);
  at::Tensor workspace = at::empty({chunk, m}, za_c.options());
  const at::Tensor zc_t = zc_c.t();
  AT_DISPATCH_FLOATING_TYPES(dtype, "hycon_ext_pair_stats_forward", [&] {
    const int64_t* a_ptr = a_c.data_ptr<int64_t>();
    const int64_t* c_ptr = c_c.data_ptr<int64_t>();
    // Any dtype: the relations and selection scans use them; the vector sums only for float.
    const auto cols = candidate_columns(a_ptr, n, c_ptr, m);
    scalar_t* stats_ptr = stats.data_ptr<scalar_t>();
    scalar_t* state_ptr = pair_selection ? state.data_ptr<scalar_t>() : nullptr;
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t rows = std::min(chunk, n - begin);
      const at::Tensor s = chunk_similarities(za_c, zc_t, begin, rows, workspace);
      const scalar_t* s_ptr = s.data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(m), [&](int64_t r0, int64_t r1) {
        RowScratch<scalar_t> scratch(plan, m, /*backward=*/false);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = begin + r;
          forward_row<scalar_t>(
              s_ptr + r * m, m, a_ptr + i * kDescCols, c_ptr, cols ? &*cols : nullptr, plan,
              pair_selection, stats_ptr + i * n_modes * kStatCols,
              state_ptr ? state_ptr + i * n_modes * kStateCols : nullptr, scratch);
        }
      });
    }
  });
  if (sim != nullptr && chunk >= n) *sim = workspace;  // one chunk: all of S, free to keep
  return {stats, state};
}

namespace {

// ds += ds^T over a square block, in tiles so both sides stay in cache.
template <typename scalar_t>
void symmetrize(scalar_t* ds, int64_t n) {
  constexpr int64_t kTile = 32;
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (kTile * n));  // ~32k elements
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
      for (int64_t j0 = i0; j0 < n; j0 += kTile) {
        const int64_t j1 = std::min(n, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = std::max(j0, i); j < j1; ++j) {
            const scalar_t v = ds[i * n + j] + ds[j * n + i];
            ds[i * n + j] = v;
            ds[j * n + i] = v;
          }
        }
      }
    }
  });
}

// Up to this many rows, making dL/dS symmetric in place (n^2 reads and writes) and multiplying
// once is cheaper than the second (n, n) x (n, d) GEMM it replaces; beyond it the n^2 pass
// costs more than that GEMM (the threshold was measured both ways: bench/README.md's log).
constexpr int64_t kSymmetrizeMaxRows = 512;

// The backward of both entry points. same_rows: za and zc are the same rows with the same
// descriptors, so dL/dz = dS zc + dS^T za is returned as grad_za alone (grad_zc undefined).
// Otherwise only zc's first m - constant_rows rows get dS^T za; the others' gradient is zero.
std::tuple<at::Tensor, at::Tensor> pair_stats_backward_impl(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, const std::optional<PairSelection>& pair_selection,
    const at::Tensor& state, const at::Tensor& sim, bool same_rows, int64_t constant_rows) {
  const auto dtype = compute_dtype(za.scalar_type());
  const at::Tensor za_c = as_dtype(za, dtype).contiguous();
  const at::Tensor zc_c = same_rows ? za_c : as_dtype(zc, dtype).contiguous();
  const at::Tensor a_c = a_ids.contiguous();
  const at::Tensor c_c = same_rows ? a_c : c_ids.contiguous();
  const at::Tensor grad_c = as_dtype(grad_stats, dtype).contiguous();
  const at::Tensor state_c = pair_selection ? state.contiguous() : at::Tensor();
  const int64_t n = za.size(0), m = zc.size(0), d = za.size(1);
  const int64_t n_modes = static_cast<int64_t>(modes.size());
  const Plan plan(modes, targets, pair_selection);

  if (n == 0 || n_modes == 0) {
    return {at::zeros({n, d}, za_c.options()),
            same_rows ? at::Tensor() : at::zeros({m, d}, za_c.options())};
  }
  // With the forward's S: one chunk, dL/dS into a buffer of its own (S stays intact for a
  // second backward). Without: S recomputed chunk by chunk and overwritten with dL/dS.
  const bool kept = sim.defined();
  const at::Tensor sim_c = kept ? sim.contiguous() : at::Tensor();
  const int64_t chunk = kept ? n : chunk_rows(n, m);
  const bool one_chunk = chunk >= n;
  // One chunk writes the gradients whole; several accumulate into them.
  const auto new_grad = [&](int64_t rows) {
    return one_chunk ? at::empty({rows, d}, za_c.options()) : at::zeros({rows, d}, za_c.options());
  };
  at::Tensor grad_za = new_grad(n);
  at::Tensor grad_zc = same_rows ? at::Tensor() : new_grad(m);
  const int64_t grad_rows = m - constant_rows;
  if (!same_rows && constant_rows > 0) grad_zc.narrow(0, grad_rows, constant_rows).zero_();
  // The rows of zc that get a gradient, and their columns of dS.
  at::Tensor grad_zc_rows = same_rows ? at::Tensor() : grad_zc.narrow(0, 0, grad_rows);
  at::Tensor workspace = at::empty({chunk, m}, za_c.options());
  const at::Tensor zc_t = zc_c.t();
  AT_DISPATCH_FLOATING_TYPES(dtype, "hycon_ext_pair_stats_backward", [&] {
    const int64_t* a_ptr = a_c.data_ptr<int64_t>();
    const int64_t* c_ptr = c_c.data_ptr<int64_t>();
    // Any dtype: the relations and selection scans use them; the vector sums only for float.
    const auto cols = candidate_columns(a_ptr, n, c_ptr, m);
    const scalar_t* grad_ptr = grad_c.data_ptr<scalar_t>();
    const scalar_t* state_ptr = pair_selection ? state_c.data_ptr<scalar_t>() : nullptr;
    for (int64_t begin = 0; begin < n; begin += chunk) {
      const int64_t rows = std::min(chunk, n - begin);
      at::Tensor ds = kept ? workspace : chunk_similarities(za_c, zc_t, begin, rows, workspace);
      const scalar_t* s_ptr = kept ? sim_c.data_ptr<scalar_t>() : ds.data_ptr<scalar_t>();
      scalar_t* ds_ptr = ds.data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(m), [&](int64_t r0, int64_t r1) {
        RowScratch<scalar_t> scratch(plan, m, /*backward=*/true);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = begin + r;
          backward_row<scalar_t>(
              s_ptr + r * m, ds_ptr + r * m, m, a_ptr + i * kDescCols, c_ptr,
              cols ? &*cols : nullptr, plan, pair_selection, grad_ptr + i * n_modes * kStatCols,
              state_ptr ? state_ptr + i * n_modes * kStateCols : nullptr, scratch);
        }
      });
      // S = za zc^T: dL/dza = dS zc, dL/dzc = dS^T za. Chunks run one after another, so
      // accumulating into the gradients is safe.
      at::Tensor grad_za_rows = grad_za.narrow(0, begin, rows);
      if (same_rows && one_chunk && n <= kSymmetrizeMaxRows) {
        symmetrize(ds_ptr, n);
        at::mm_out(grad_za, ds, za_c);
      } else if (same_rows) {
        if (one_chunk) {
          at::mm_out(grad_za_rows, ds, zc_c);
        } else {
          grad_za_rows.addmm_(ds, zc_c);
        }
        grad_za.addmm_(ds.t(), za_c.narrow(0, begin, rows));
      } else {
        const at::Tensor ds_t = ds.narrow(1, 0, grad_rows).t();
        if (one_chunk) {
          at::mm_out(grad_za_rows, ds, zc_c);
          at::mm_out(grad_zc_rows, ds_t, za_c);
        } else {
          grad_za_rows.addmm_(ds, zc_c);
          grad_zc_rows.addmm_(ds_t, za_c.narrow(0, begin, rows));
        }
      }
    }
  });
  return {grad_za, grad_zc};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pair_stats_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, const std::optional<PairSelection>& pair_selection,
    const at::Tensor& state, int64_t constant_rows) {
  auto [grad_za, grad_zc] =
      pair_stats_backward_impl(grad_stats, za, zc, a_ids, c_ids, modes, targets, pair_selection,
                               state, at::Tensor(), /*same_rows=*/false, constant_rows);
  return {as_dtype(grad_za, za.scalar_type()), as_dtype(grad_zc, zc.scalar_type())};
}

at::Tensor pair_stats_backward_same_rows(const at::Tensor& grad_stats, const at::Tensor& z,
                                         const at::Tensor& ids, at::IntArrayRef modes,
                                         at::ArrayRef<double> targets,
                                         const std::optional<PairSelection>& pair_selection,
                                         const at::Tensor& state, const at::Tensor& sim) {
  return std::get<0>(pair_stats_backward_impl(grad_stats, z, z, ids, ids, modes, targets,
                                              pair_selection, state, sim, /*same_rows=*/true,
                                              /*constant_rows=*/0));
}

}  // namespace hycon_ext::cpu

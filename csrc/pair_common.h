// Shared by the CPU and CUDA kernels: pair modes, row-descriptor / stats / state column
// indices (docs/design.md), the pair classifier and the input checks of every op.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "host_device.h"

namespace hycon_ext {

// Pair modes (same ints as hycon_ext.pairs).
constexpr int64_t INTRA = 0;        // IAMCL
constexpr int64_t INTER = 1;        // IEMCL
constexpr int64_t SAME_SAMPLE = 2;  // SCL

// Row descriptor columns: a_ids / c_ids are int64 (rows, 3).
constexpr int64_t kDescClass = 0;
constexpr int64_t kDescModality = 1;
constexpr int64_t kDescSample = 2;
constexpr int64_t kDescCols = 3;

// stats (N, n_modes, 4).
constexpr int64_t kPosSum = 0;
constexpr int64_t kNegSum = 1;
constexpr int64_t kPosCount = 2;
constexpr int64_t kRefineSum = 3;
constexpr int64_t kStatCols = 4;

// hard_pair_sums state (N, n_modes, 7), docs/design.md. Sides without selection (off, or a
// SAME_SAMPLE mode) hold t = +-inf, j = M, m_p = 0, sums = 1. A row whose pairs include a NaN
// similarity keeps its thresholds but gets NaN m_p / sum_p / sum_n on its selected sides, so
// its gradient is NaN too.
constexpr int64_t kStateTp = 0;    // positive threshold value
constexpr int64_t kStateJp = 1;    // positive threshold index
constexpr int64_t kStateTn = 2;    // negative threshold value
constexpr int64_t kStateJn = 3;    // negative threshold index
constexpr int64_t kStateMp = 4;    // softmax shift of 1/(s_p + gamma)
constexpr int64_t kStateSumP = 5;  // positive softmax normaliser
constexpr int64_t kStateSumN = 6;  // negative softmax normaliser
constexpr int64_t kStateCols = 7;

// Result of classifying one (anchor, candidate) pair for one mode.
constexpr int kIgnored = 0;
constexpr int kPositive = 1;
constexpr int kNegative = 2;

// Pair classification of docs/design.md ("Pair modes"). An anchor and a candidate with equal
// (modality, sample) are the same row and are ignored by every mode.
HYCON_HOST_DEVICE inline int classify_pair(int64_t mode, int64_t a_class, int64_t a_modality,
                                           int64_t a_sample, int64_t c_class, int64_t c_modality,
                                           int64_t c_sample) {
  const bool same_modality = a_modality == c_modality;
  const bool same_sample = a_sample == c_sample;
  const bool same_class = a_class == c_class;
  if (mode == INTRA) {
    if (!same_modality || same_sample) return kIgnored;
    return same_class ? kPositive : kNegative;
  }
  if (mode == INTER) {
    if (same_modality) return kIgnored;
    if (!same_class) return kNegative;
    return same_sample ? kIgnored : kPositive;
  }
  // SAME_SAMPLE
  return (same_sample && !same_modality) ? kPositive : kIgnored;
}

// Accumulation / stats dtype: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType compute_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// t in dtype. A `to` that has nothing to do still costs a dispatcher round trip, and a
// small-batch loss step would make a dozen of them.
inline at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// ---- input checks (shared by CPU and CUDA; messages name the argument) ----

inline void check_embeddings(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D tensor (rows, d), got ", t.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
              t.scalar_type());
}

inline void check_same_kind(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                            const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_similarity_inputs(const at::Tensor& x, const at::Tensor& y) {
  check_embeddings(x, "x");
  check_embeddings(y, "y");
  check_same_kind(x, "x", y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "x and y must have the same feature size, got ", x.size(1),
              " and ", y.size(1));
}

inline void check_descriptors(const at::Tensor& ids, const char* name, int64_t rows,
                              const char* rows_name, const at::Tensor& like) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be an int64 tensor, got ",
              ids.scalar_type());
  TORCH_CHECK(ids.dim() == 2 && ids.size(1) == kDescCols, name,
              " must have shape (rows, 3) [class, modality, sample], got ", ids.sizes());
  TORCH_CHECK(ids.size(0) == rows, name, " must have one row per row of ", rows_name, " (", rows,
              "), got ", ids.size(0));
  TORCH_CHECK(ids.device() == like.device(), name, " must be on the device of ", rows_name, " (",
              like.device(), "), got ", ids.device());
}

inline void check_pair_inputs(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                              const at::Tensor& c_ids, at::IntArrayRef modes,
                              at::ArrayRef<double> targets) {
  check_embeddings(za, "za");
  check_embeddings(zc, "zc");
  check_same_kind(za, "za", zc, "zc");
  TORCH_CHECK(za.size(1) == zc.size(1), "za and zc must have the same feature size, got ",
              za.size(1), " and ", zc.size(1));
  check_descriptors(a_ids, "a_ids", za.size(0), "za", za);
  check_descriptors(c_ids, "c_ids", zc.size(0), "zc", zc);
  for (const int64_t mode : modes) {
    TORCH_CHECK(mode == INTRA || mode == INTER || mode == SAME_SAMPLE,
                "modes must hold INTRA=0, INTER=1 or SAME_SAMPLE=2, got ", mode);
  }
  TORCH_CHECK(targets.size() == modes.size(), "targets must have one entry per mode (",
              modes.size(), "), got ", targets.size());
}

inline void check_selection_args(int64_t h, double gamma) {
  TORCH_CHECK(h >= 1, "h must be >= 1, got ", h);
  TORCH_CHECK(gamma > 0, "gamma must be > 0, got ", gamma);
}

// grad_stats / state: (N, n_modes, cols) in the compute dtype, on the inputs' device.
inline void check_row_table(const at::Tensor& t, const char* name, const at::Tensor& za,
                            int64_t n_modes, int64_t cols) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == za.size(0) && t.size(1) == n_modes && t.size(2) == cols,
              name, " must have shape (", za.size(0), ", ", n_modes, ", ", cols, "), got ",
              t.sizes());
  TORCH_CHECK(t.device() == za.device(), name, " must be on the device of za (", za.device(),
              "), got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
              t.scalar_type());
}

// A forward's selection state (docs/design.md), as its backward takes it back.
inline void check_selection_state(const at::Tensor& state, const at::Tensor& za, int64_t n_modes) {
  check_row_table(state, "state", za, n_modes, kStateCols);
  const auto dtype = compute_dtype(za.scalar_type());
  TORCH_CHECK(state.scalar_type() == dtype, "state must have dtype ", dtype,
              " (the forward's compute dtype), got ", state.scalar_type());
}

// The backward ops' arguments, checked alike by the CPU and CUDA kernels.
// constant_rows: how many of zc's last rows are constants (no gradient), 0 .. M.
inline void check_constant_rows(int64_t constant_rows, const at::Tensor& zc) {
  TORCH_CHECK(constant_rows >= 0 && constant_rows <= zc.size(0), "constant_rows must be in [0, ",
              zc.size(0), "] (the rows of zc), got ", constant_rows);
}

inline void check_pair_sums_backward_args(const at::Tensor& grad_stats, const at::Tensor& za,
                                          const at::Tensor& zc, const at::Tensor& a_ids,
                                          const at::Tensor& c_ids, at::IntArrayRef modes,
                                          at::ArrayRef<double> targets, int64_t constant_rows) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  check_row_table(grad_stats, "grad_stats", za, static_cast<int64_t>(modes.size()), kStatCols);
  check_constant_rows(constant_rows, zc);
}

inline void check_hard_pair_sums_backward_args(const at::Tensor& grad_stats, const at::Tensor& za,
                                               const at::Tensor& zc, const at::Tensor& a_ids,
                                               const at::Tensor& c_ids, at::IntArrayRef modes,
                                               at::ArrayRef<double> targets, double gamma,
                                               const at::Tensor& state, int64_t constant_rows) {
  check_pair_sums_backward_args(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
  check_selection_args(/*h=*/1, gamma);
  check_selection_state(state, za, static_cast<int64_t>(modes.size()));
}

}  // namespace hycon_ext

// Streaming CPU engine behind pair_sums and hard_pair_sums: walks anchor rows in chunks,
// computes a chunk's similarities with one matmul, reduces each row to its per-mode stats
// and drops the chunk (peak extra memory O((N + M) d + chunk * M)).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hycon_ext::cpu {

// HyCon-v2's selection parameters (docs/design.md). The engine takes a
// std::optional<PairSelection> pair_selection: std::nullopt is pair_sums (every pair kept,
// unweighted).
struct PairSelection {
  int64_t h = 0;  // pairs kept per anchor and side (the forward's; the backward reads the state)
  double gamma = 1.0;
  bool select_positives = false;
  bool select_negatives = false;
};

// The engine's argument from an op's (pair_selection, h, gamma, select_positives,
// select_negatives).
inline std::optional<PairSelection> make_pair_selection(bool pair_selection, int64_t h,
                                                        double gamma, bool select_positives,
                                                        bool select_negatives) {
  if (!pair_selection) return std::nullopt;
  return PairSelection{h, gamma, select_positives, select_negatives};
}

// (stats, state); state is (N, n_modes, 7) with pair_selection, else undefined. With `sim`, the
// (N, M) similarities (compute dtype) are handed back there when they fit one chunk (no extra
// memory: the chunk buffer is kept instead of freed), else *sim is left undefined.
std::tuple<at::Tensor, at::Tensor> pair_stats_forward(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets,
    const std::optional<PairSelection>& pair_selection, at::Tensor* sim = nullptr);

// (grad_za, grad_zc); state is the forward's with pair_selection, else ignored. The last
// constant_rows rows of zc are constants: their gradient is zero and is not computed.
std::tuple<at::Tensor, at::Tensor> pair_stats_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, const std::optional<PairSelection>& pair_selection,
    const at::Tensor& state, int64_t constant_rows);

// pair_stats_backward when the anchors and the candidates are the same rows (za = zc = z, same
// descriptors): dL/dz = dS z + dS^T z, in the compute dtype. With a small kept S that is one
// GEMM on a symmetrised dS instead of two GEMMs and a sum.
at::Tensor pair_stats_backward_same_rows(const at::Tensor& grad_stats, const at::Tensor& z,
                                         const at::Tensor& ids, at::IntArrayRef modes,
                                         at::ArrayRef<double> targets,
                                         const std::optional<PairSelection>& pair_selection,
                                         const at::Tensor& state,
                                         const at::Tensor& sim = at::Tensor());

}  // namespace hycon_ext::cpu

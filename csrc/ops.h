// C++ API of the hycon_ext ops: each call goes through the dispatcher (so autograd, CPU and
// CUDA kernels are picked as for torch.ops.hycon_ext.* in Python). Schemas: docs/design.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace hycon_ext {

// softmax(x) softmax(y)^T, (N, M).
at::Tensor similarity(const at::Tensor& x, const at::Tensor& y);
std::tuple<at::Tensor, at::Tensor> similarity_backward(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& y);

// Per-anchor stats (N, n_modes, 4): [pos_sum, neg_sum, pos_count, refine_sum]. constant_rows
// (the backwards, pair_terms): the last constant_rows rows of zc are constants (e.g. a
// cross-batch memory); their gradient is zero and is not computed.
at::Tensor pair_sums(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                     const at::Tensor& c_ids, at::IntArrayRef modes, at::ArrayRef<double> targets);
std::tuple<at::Tensor, at::Tensor> pair_sums_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, int64_t constant_rows = 0);

// Top-h hard-pair selection (HyCon-v2): returns (stats, state), state (N, n_modes, 7).
std::tuple<at::Tensor, at::Tensor> hard_pair_sums(const at::Tensor& za, const at::Tensor& zc,
                                                  const at::Tensor& a_ids, const at::Tensor& c_ids,
                                                  at::IntArrayRef modes,
                                                  at::ArrayRef<double> targets, int64_t h,
                                                  double gamma, bool select_positives,
                                                  bool select_negatives);
std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows = 0);

// The loss terms (pair_terms): returns (terms, stats, state); terms (2, n_modes) holds the
// per-mode sums over anchors and the number of anchors with a positive. state is the
// hard_pair_sums state with pair_selection, else empty. h, gamma, select_positives and
// select_negatives only matter with pair_selection.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_terms(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives, bool pair_selection, bool refinement,
    int64_t constant_rows = 0);
std::tuple<at::Tensor, at::Tensor> pair_terms_backward(
    const at::Tensor& grad_terms, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& stats, const at::Tensor& state,
    int64_t constant_rows = 0);

// The whole loss of hycon_ext.hycon_loss from the three (K, d) modality batches: returns
// (total, scl, iamcl, iemcl, z, terms, stats, state, sim); the first four are 0-dim losses, the
// rest (softmax rows, pair_terms' terms / stats / state, and on CPU the (3K, 3K) similarities
// when they fit one chunk, else empty) carry no gradient and feed the backward.
// Modes are (INTRA, INTER, SAME_SAMPLE) with targets (1, alpha, alpha).
using LossValuesOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
LossValuesOutputs loss_values(const at::Tensor& x_l, const at::Tensor& x_a, const at::Tensor& x_v,
                              const at::Tensor& labels, double alpha, at::ArrayRef<double> lambdas,
                              int64_t h, double gamma, bool select_positives, bool select_negatives,
                              bool pair_selection, bool refinement);
// grad_losses (4,): gradients of (total, scl, iamcl, iemcl); returns the gradients of
// (x_l, x_a, x_v) in `dtype`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype);

}  // namespace hycon_ext

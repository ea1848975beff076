// CUDA kernels of hard_pair_sums: top-h selection per anchor row by block-wide radix select,
// softmax weights, and the state the backward reuses (pair_stats.cuh, kSelect = true).
#include <torch/library.h>

#include "pair_stats.cuh"

namespace hycon_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_cuda(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  check_selection_args(h, gamma);
  return cuda::pair_stats_forward</*kSelect=*/true>(za, zc, a_ids, c_ids, modes, targets, h, gamma,
                                                    select_positives, select_negatives);
}

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward_cuda(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows) {
  check_hard_pair_sums_backward_args(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma, state,
                                     constant_rows);
  return cuda::pair_stats_backward</*kSelect=*/true>(grad_stats, za, zc, a_ids, c_ids, modes,
                                                     targets, gamma, select_positives,
                                                     select_negatives, state, constant_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("hard_pair_sums", &hard_pair_sums_cuda);
  m.impl("hard_pair_sums_backward", &hard_pair_sums_backward_cuda);
}

}  // namespace hycon_ext

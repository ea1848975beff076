// CUDA kernels of hard_pair_sums: top-h selection per anchor row by block-wide radix select,
// softmax weights, and the state the backward reuses (pair_stats.cuh, kSelect = true).
#include <torch/library.h>

#include "pair_stats.cuh"

namespace hycon_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_cuda(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
    const at::Tensor& c_ids, at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h,
    double gamma, bool select_pos, bool select_neg) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  check_selection_args(h, gamma);
  return cuda::pair_stats_forward</*kSelect=*/true>(za, zc, a_ids, c_ids, modes, targets, h,
                                                    gamma, select_pos, select_neg);
}

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward_cuda(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_pos, bool select_neg,
    const at::Tensor& state) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  check_selection_args(/*h=*/1, gamma);
  const int64_t n_modes = static_cast<int64_t>(modes.size());
  check_row_table(grad_stats, "grad_stats", za, n_modes, kStatCols);
  check_row_table(state, "state", za, n_modes, kStateCols);
  const auto dtype = compute_dtype(za.scalar_type());
  TORCH_CHECK(state.scalar_type() == dtype, "state must have dtype ", dtype,
              " (the forward's compute dtype), got ", state.scalar_type());
  return cuda::pair_stats_backward</*kSelect=*/true>(grad_stats, za, zc, a_ids, c_ids, modes,
                                                     targets, gamma, select_pos, select_neg,
                                                     state);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("hard_pair_sums", &hard_pair_sums_cuda);
  m.impl("hard_pair_sums_backward", &hard_pair_sums_backward_cuda);
}

}  // namespace hycon_ext

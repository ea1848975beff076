#include <torch/library.h>

#include "../pair_common.h"
#include "pair_engine.h"

namespace hycon_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_cpu(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  check_selection_args(h, gamma);
  return cpu::pair_stats_forward(za, zc, a_ids, c_ids, modes, targets,
                                 cpu::PairSelection{h, gamma, select_positives, select_negatives});
}

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward_cpu(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows) {
  check_hard_pair_sums_backward_args(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma, state,
                                     constant_rows);
  // h only matters to the forward: the state already records the selection.
  return cpu::pair_stats_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets,
                                  cpu::PairSelection{0, gamma, select_positives, select_negatives},
                                  state, constant_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("hard_pair_sums", &hard_pair_sums_cpu);
  m.impl("hard_pair_sums_backward", &hard_pair_sums_backward_cpu);
}

}  // namespace hycon_ext
